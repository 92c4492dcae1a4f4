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

    name_prefix: str | None = Field(
        None,
        description='A prefix the student\'s published name must carry (e.g. "Llama" for Llama 3 derivatives).',
    )
    attribution_text: str | None = Field(
        None, description="A line of attribution the student's card and outputs must show."
    )
    license_passthrough: bool = Field(
        False, description="The student must ship under the teacher's license."
    )
    noncommercial: bool = Field(
        False, description="The student may be used for noncommercial purposes only."
    )
    mau_threshold: int | None = Field(
        None, gt=0, description="Monthly active users above which a separate license is needed."
    )
    notes: list[str] = Field(
        default_factory=list, description="Other conditions, one instruction per note."
    )

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
    decision: Verdict = Field(..., description="What the document says for this use.")
    clause: str = Field(
        ...,
        min_length=1,
        description="The section of the document this rule quotes (for the citation).",
    )
    reason: str = Field(
        ..., min_length=1, description="Why the clause leads to the decision, in one sentence."
    )
    obligations: Obligations | None = Field(
        None, description="Obligations of this use on top of the document's."
    )


class Policy(_Strict):
    """One document applied to one channel and the checkpoints it governs."""

    id: str = Field(
        ...,
        min_length=1,
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="A stable id (lower-case letters, digits, '.', '_', '-').",
    )
    provider: str = Field(
        ...,
        min_length=1,
        description="The provider the document governs (openai, anthropic, meta, ...).",
    )
    channel: Channel = Field(
        ..., description="How the model is reached: api, weights (self-hosted) or app."
    )
    models: list[str] = Field(
        default_factory=list, description="Model name globs this document governs."
    )
    licenses: list[str] = Field(
        default_factory=list,
        description="License ids (lower-case SPDX-like) a self-hosted teacher may declare instead of a model name.",
    )
    document: str = Field(
        ..., min_length=1, description="The document's title, as cited in decisions and cards."
    )
    effective_date: date | None = Field(None, description="The date the document took effect.")
    source_url: str | None = Field(None, description="Where the document can be read.")
    checked_on: date = Field(
        ..., description="When this policy file was last checked against the document."
    )
    obligations: Obligations = Field(
        default_factory=Obligations, description="Obligations of every allowed use."
    )
    rules: dict[Use, Rule] = Field(..., description="The rule for each intended use.")

    file: str | None = Field(
        None,
        exclude=True,
        description="The file this policy was read from (set by the loader, never read from the file).",
    )
    line: int | None = Field(
        None, exclude=True, description="Its line in that file (set by the loader)."
    )
    user: bool = Field(
        False,
        exclude=True,
        description="Whether it came from the user's policy_dirs rather than the built-in library (set by the loader).",
    )

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

    id: str = Field(
        "",
        description="Hash of everything that makes the decision (pd-...); changes with an override.",
    )
    decision: Verdict = Field(
        ..., description="What the document says for this teacher, model and use."
    )
    provider: str = Field(..., description="The teacher's provider.")
    model: str = Field(..., description="The teacher model.")
    use: Use = Field(..., description="The intended use that was checked.")
    channel: Channel | None = Field(
        None, description="How the teacher is reached: api, weights or app."
    )
    document: str | None = Field(
        None, description="The document that decided (unset: none matched)."
    )
    effective_date: date | None = Field(None, description="The document's effective date.")
    clause: str | None = Field(None, description="The clause cited.")
    reason: str = Field(..., description="Why the clause leads to the decision.")
    source_url: str | None = Field(None, description="Where the document can be read.")
    checked_on: date | None = Field(
        None, description="When the policy file was last checked against the document."
    )
    obligations: Obligations = Field(
        default_factory=Obligations,
        description="What the user must do for the use to stay allowed.",
    )
    policy_id: str | None = Field(None, description="The id of the policy that decided.")
    policy_file: str | None = Field(
        None, description="The policy file that decided (a built-in one by its package name)."
    )
    policy_line: int | None = Field(None, description="Its line in that file.")
    user_policy: bool = Field(
        False, description="Whether the policy came from the user's policy_dirs."
    )
    matched: str | None = Field(
        None, description="The model glob or license id that selected the policy."
    )
    overridden_by: str | None = Field(
        None,
        description="The authorization, acknowledgement or agreement the run went ahead under, when the terms alone did not allow it.",
    )
    overridden_at: datetime | None = Field(None, description="When that override was recorded.")

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
