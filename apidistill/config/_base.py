"""What every run-file section shares: unknown keys are errors, defaults are validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

DEFAULT_MODEL = "smollm2-135m-instruct"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)
