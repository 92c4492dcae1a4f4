"""The prototype prompt: what the teacher sees around each task input.

A prototype on a commercial API is usually a long system instruction plus few-shot turns.
The teacher keeps seeing it during harvest; the student never does (that is the migration's
saving). The file is YAML or JSON::

    system: "Extract the order number and product ..."
    shots:
      - user: "Hi, order #123456 ..."
        assistant: "order_id: 123456\\nproduct: Harbor Steel Water Bottle"
    template: "{input}"          # the final user turn; {input} is the row's text
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from apidistill.errors import ConfigError
from apidistill.records import Message
from apidistill.yamlfile import load_yaml

__all__ = ["PromptTemplate", "Shot", "load_template"]


class Shot(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str
    assistant: str


class PromptTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str | None = None
    shots: list[Shot] = Field(default_factory=list)
    template: str = "{input}"

    @field_validator("template")
    @classmethod
    def _has_input(cls, v: str) -> str:
        if "{input}" not in v:
            raise ValueError("template must contain '{input}' where the row's text goes")
        return v

    def prefix(self) -> list[Message]:
        """System + few-shot turns: identical for every request (the cacheable prefix)."""
        out: list[Message] = []
        if self.system:
            out.append(Message(role="system", content=self.system))
        for shot in self.shots:
            out.append(Message(role="user", content=shot.user))
            out.append(Message(role="assistant", content=shot.assistant))
        return out

    def render(self, task_input: str | list[Message]) -> list[Message]:
        """The teacher's full message list for one task input."""
        if isinstance(task_input, str):
            return [
                *self.prefix(),
                Message(role="user", content=self.template.replace("{input}", task_input)),
            ]
        return [*self.prefix(), *task_input]


def load_template(path: str | Path | None) -> PromptTemplate:
    """Load a prototype prompt file; ``None`` means no prompt (the input alone)."""
    if path is None:
        return PromptTemplate()
    p = Path(path)
    if not p.is_file():
        raise ConfigError("prompt template file not found", file=str(p), key="prompts.template")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"cannot parse: {exc}", file=str(p)) from None
    else:
        data = load_yaml(text, str(p))  # a key given twice is an error
    try:
        tpl = PromptTemplate.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise ConfigError(
            err["msg"], file=str(p), key=key, hint="expected keys: system, shots, template"
        ) from None
    _refuse_undefined_placeholders(tpl, text, str(p))
    return tpl


# ``{question}``, ``{context}``: a name in braces, as str.format and most prompt tools write
# one. JSON in a prompt (``{"order_id": 1}``) has quotes or spaces inside, so it never matches.
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_.\-]*)\}")


def _refuse_undefined_placeholders(tpl: PromptTemplate, text: str, file: str) -> None:
    """A placeholder the template does not fill would reach the teacher as literal braces in
    every request (paid for, and useless): refuse it before anything is sent. Only
    ``{input}`` is filled in, and only in ``template``."""
    fields = {"system": tpl.system or "", "template": tpl.template}
    for i, shot in enumerate(tpl.shots):
        fields[f"shots.{i}.user"] = shot.user
    for key, value in fields.items():
        for m in _PLACEHOLDER.finditer(value):
            if key == "template" and m.group(1) == "input":
                continue
            found = text.find(m.group(0))
            line = text.count("\n", 0, found) + 1 if found >= 0 else None
            where = "the template" if key == "template" else f"'{key}'"
            raise ConfigError(
                f"placeholder {m.group(0)} in {where} is never filled in: only {{input}} in "
                "'template' is replaced (by each row's text), so the teacher would receive "
                f"{m.group(0)} literally in every request",
                file=file,
                key=key,
                line=line,
                hint="remove the placeholder or write out the text it stands for; put the "
                "row's text where {input} is",
            )
