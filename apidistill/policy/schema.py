"""Types of the terms-of-service policy library and of the decisions made from it.

A :class:`Policy` is one document (an API's terms, a weights license, a signed agreement)
applied to one channel and a set of exact checkpoints; its :class:`Rule` per intended use says
what the document allows. A :class:`Decision` is what the engine concluded for one teacher,
model and use, with the citation needed to defend it later: it is stored with every record,
the dataset card and the student's model card, so its fields are the audit trail.
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ALLOWED_VERDICTS",
    "CHANNELS",
    "USES",
    "VERDICTS",
    "Channel",
    "Decision",
    "Obligations",
    "Policy",
    "Rule",
    "Use",
    "Verdict",
]

Use = Literal["internal", "commercial", "competing", "redistribute", "research_noncommercial"]
Verdict = Literal["allow", "allow_with_obligations", "requires_authorization", "deny", "unknown"]
Channel = Literal["api", "weights", "app"]

USES: tuple[str, ...] = get_args(Use)
VERDICTS: tuple[str, ...] = get_args(Verdict)
CHANNELS: tuple[str, ...] = get_args(Channel)
ALLOWED_VERDICTS = frozenset({"allow", "allow_with_obligations"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Obligations(_Strict):
    """What a user must do to stay within a document when the use is allowed.

    These travel into the dataset card and the student's model card, so each is a concrete
    instruction (a name prefix, a line of attribution) rather than prose to interpret.
    """

    name_prefix: str | None = None
    attribution_text: str | None = None
    license_passthrough: bool = False
    noncommercial: bool = False
    mau_threshold: int | None = Field(None, gt=0)
    notes: list[str] = Field(default_factory=list)

    @field_validator("notes", mode="before")
    @classmethod
    def _one_note_is_a_list(cls, v: object) -> object:
        return [v] if isinstance(v, str) else v

    def merged(self, other: Obligations | None) -> Obligations:
        """``other`` (a rule's own obligations) on top of these (the document's)."""
        if other is None:
            return self
        data = self.model_dump()
        for key, value in other.model_dump(exclude_unset=True).items():
            data[key] = [*data["notes"], *value] if key == "notes" else value
        return Obligations.model_validate(data)

    def is_empty(self) -> bool:
        return self == Obligations()


class Rule(_Strict):
    decision: Verdict
    clause: str = Field(..., min_length=1)
    reason: str = Field(..., min_length=1)
    obligations: Obligations | None = None


class Policy(_Strict):
    """One document applied to one channel and the checkpoints it governs."""

    id: str = Field(..., min_length=1, pattern=r"^[a-z0-9][a-z0-9._-]*$")
    provider: str = Field(..., min_length=1)
    channel: Channel
    models: list[str] = Field(default_factory=list)
    # License ids (lower-case SPDX-like) a self-hosted teacher may declare instead of a name.
    licenses: list[str] = Field(default_factory=list)
    document: str = Field(..., min_length=1)
    effective_date: date | None = None
    source_url: str | None = None
    checked_on: date
    obligations: Obligations = Field(default_factory=Obligations)
    rules: dict[Use, Rule]

    # Where it was read from (not part of the YAML).
    file: str | None = Field(None, exclude=True)
    line: int | None = Field(None, exclude=True)
    user: bool = Field(False, exclude=True)

    @field_validator("provider")
    @classmethod
    def _lower_provider(cls, v: str) -> str:
        return v.strip().lower()

    @field_validator("models", "licenses")
    @classmethod
    def _lower_patterns(cls, v: list[str]) -> list[str]:
        return [p.strip().lower() for p in v]

    @field_validator("source_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("https://", "http://")):
            raise ValueError("source_url must start with https:// or http://")
        return v

    @model_validator(mode="after")
    def _names_something(self) -> Policy:
        if not self.models and not self.licenses:
            raise ValueError("a policy needs 'models' (glob patterns) or 'licenses' (license ids)")
        if not self.rules:
            raise ValueError("a policy needs at least one rule under 'rules'")
        return self


class Decision(BaseModel):
    """What the terms say about one teacher/model/use, with its citation.

    ``decision`` is always what the document says; an authorization, acknowledgement or
    override never rewrites it but is recorded in ``overridden_by`` (and changes ``id``), so a
    card shows both what the terms said and why the run went ahead anyway.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = ""
    decision: Verdict
    provider: str
    model: str
    use: Use
    channel: Channel | None = None
    document: str | None = None
    effective_date: date | None = None
    clause: str | None = None
    reason: str
    source_url: str | None = None
    checked_on: date | None = None
    obligations: Obligations = Field(default_factory=Obligations)
    policy_id: str | None = None
    policy_file: str | None = None
    policy_line: int | None = None
    user_policy: bool = False
    matched: str | None = None  # the model glob or license id that selected the policy
    overridden_by: str | None = None
    overridden_at: datetime | None = None

    @model_validator(mode="after")
    def _stable_id(self) -> Decision:
        if not self.id:
            self.id = self.compute_id()
        return self

    def compute_id(self) -> str:
        """Hash of everything that makes the decision (not the time it was made)."""
        body = self.model_dump(mode="json", exclude={"id", "overridden_at", "policy_line"})
        blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return "pd-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    @property
    def permits(self) -> bool:
        """True when the run may go ahead: the terms allow it, or the user recorded why."""
        return self.decision in ALLOWED_VERDICTS or self.overridden_by is not None

    def citation(self) -> str:
        """``document (effective date), clause`` for messages and cards."""
        if not self.document:
            return "no policy document matched"
        when = f", effective {self.effective_date.isoformat()}" if self.effective_date else ""
        clause = f", {self.clause}" if self.clause else ""
        return f"{self.document}{when}{clause}"
