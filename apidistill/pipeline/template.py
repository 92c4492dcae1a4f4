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
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from apidistill.data.schema import Message
from apidistill.errors import ConfigError

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
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot parse: {exc}", file=str(p)) from None
    try:
        return PromptTemplate.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(x) for x in err["loc"])
        raise ConfigError(
            err["msg"], file=str(p), key=key, hint="expected keys: system, shots, template"
        ) from None
