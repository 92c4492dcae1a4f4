"""The root of a run file: :class:`RunConfig` holds every section and the checks that
span sections (logprob KD needs logprobs harvested and kept)."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from apidistill.config._base import _Section
from apidistill.config.data import DatasetConfig, PromptsConfig, SynthConfig
from apidistill.config.harvest import BudgetConfig, HarvestConfig, PolicyConfig
from apidistill.config.outputs import EvalConfig, ExportConfig, ServeConfig
from apidistill.config.teacher import TeacherConfig
from apidistill.config.train import StudentConfig, TrainingConfig
from apidistill.errors import ConfigError


class RunConfig(_Section):
    """One migration run: teacher → policy → budget → harvest → dataset → train → eval → serve."""

    name: str = Field("run", description="The run's name: a plain word, used in run_dir.")
    run_dir: str = Field(
        "runs/{name}",
        description="Where the run keeps its journal, dataset, model and report; only {name} is filled in.",
    )
    teacher: TeacherConfig = Field(..., description="The API model to distill.")
    prompts: PromptsConfig = Field(..., description="Where the task inputs come from.")
    policy: PolicyConfig = Field(
        ..., description="The intended use, checked against the teacher's terms."
    )
    budget: BudgetConfig = Field(..., description="The hard spending cap.")
    harvest: HarvestConfig = Field(
        default_factory=HarvestConfig, description="How teacher answers are requested."
    )
    dataset: DatasetConfig = Field(
        default_factory=DatasetConfig, description="How answers become a dataset."
    )
    student: StudentConfig = Field(
        default_factory=StudentConfig, description="The model that is trained."
    )
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="How the student is trained."
    )
    eval: EvalConfig = Field(
        default_factory=EvalConfig, description="How the student is judged against the teacher."
    )
    serve: ServeConfig = Field(
        default_factory=ServeConfig, description="How the student is served."
    )
    export: ExportConfig = Field(
        default_factory=ExportConfig,
        description="Which export formats the pipeline's export stage writes.",
    )
    synth: SynthConfig | None = Field(
        None, description="Synthetic prompts written by a teacher (apidistill synth only)."
    )

    source: str | None = Field(
        None,
        exclude=True,
        description="Where the file was loaded from; relative paths in the file resolve against its folder (set by the loader, never read from the file).",
    )

    @field_validator("student", mode="before")
    @classmethod
    def _student_list(cls, v: Any) -> Any:
        """``student: [small, large]`` is shorthand for ``student: {candidates: [...]}``."""
        return {"candidates": v} if isinstance(v, list) else v

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or "/" in v or "\\" in v or v.startswith(".") or not v.isprintable():
            raise ValueError("name must be a plain word (no slashes, not starting with '.')")
        return v

    @field_validator("run_dir")
    @classmethod
    def _run_dir_template(cls, v: str) -> str:
        """Only ``{name}`` may be filled in: ``str.format`` would otherwise raise, read
        attributes (``{name.__class__}``) or pad to any width (``{name:>999999999}``)."""
        try:
            parts = list(string.Formatter().parse(v))
        except ValueError as exc:
            raise ValueError(f"run_dir is not a valid template ({exc})") from None
        if any(f is not None and (f != "name" or spec or conv) for _, f, spec, conv in parts):
            raise ValueError("run_dir may contain only the placeholder {name}")
        return v

    @model_validator(mode="after")
    def _kd_needs_logprobs(self) -> RunConfig:
        if self.training.method == "logprob_kd" and not self.harvest.logprobs:
            raise ValueError(
                "training.method logprob_kd needs harvest.logprobs: true "
                "(or use training.method: sequence_kd)"
            )
        if (
            self.training.method == "logprob_kd"
            and self.training.kd.top_k > self.dataset.top_k_store
        ):
            raise ValueError(
                f"training.kd.top_k ({self.training.kd.top_k}) is more than the dataset keeps "
                f"(dataset.top_k_store: {self.dataset.top_k_store}); raise top_k_store or "
                "lower kd.top_k"
            )
        return self

    def resolve_path(self, p: str) -> Path:
        """Resolve a path from the file relative to the file's folder."""
        if "\x00" in p:
            raise ConfigError(f"path {p!r} contains a NUL character", file=self.source)
        path = Path(p).expanduser()
        if path.is_absolute() or self.source is None:
            return path
        return (Path(self.source).parent / path).resolve()

    @property
    def run_path(self) -> Path:
        return self.resolve_path(self.run_dir.format(name=self.name))
