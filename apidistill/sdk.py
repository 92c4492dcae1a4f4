"""The Python SDK's front door: one object per run, one method per stage.

``Distiller`` is a thin, typed wrapper over :mod:`apidistill.pipeline` so that a notebook or a
script can run the stages one at a time, look at what each produced, and change course —
with exactly the same files, cache and guarantees as ``apidistill run``::

    d = Distiller.from_yaml("my_run.yaml")   # e.g. apidistill/demo_data/migrate.yaml
    d.check_policy()
    d.harvest()                      # cached: a re-run sends nothing already answered
    d.build_dataset()
    d.train()
    print(d.evaluate().numbers)

Every method returns a typed result, the same objects the pipeline writes into the run folder:
:class:`~apidistill.policy.Decision` (``check_policy``), :class:`~apidistill.costs.estimate.Estimate`
(``estimate``), :class:`~apidistill.pipeline.stages.HarvestOutcome` (``harvest``),
:class:`DatasetResult` (``build_dataset``), :class:`~apidistill.train.api.TrainResult`
(``train``) and :class:`~apidistill.eval.types.EvalResult` (``evaluate``); all are exported by
:mod:`apidistill`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apidistill.config import RunConfig, load_config
from apidistill.pipeline.stages import HarvestOutcome, RunContext
from apidistill.pipeline.teacher_requests import PromptBatch, load_prompts

if TYPE_CHECKING:
    from apidistill.costs.estimate import Estimate
    from apidistill.eval.types import EvalResult
    from apidistill.policy.schema import Decision
    from apidistill.train.api import TrainResult

__all__ = ["DatasetResult", "Distiller"]


@dataclass(frozen=True)
class DatasetResult:
    """What :meth:`Distiller.build_dataset` made: records in, records kept, split sizes, and
    the folder holding the splits and the data card (``README.md``, ``card.json``)."""

    harvested: int
    kept: int
    splits: dict[str, int] = field(default_factory=dict)
    folder: Path | None = None


class Distiller:
    """Runs the stages of one :class:`RunConfig`; state lives in the run folder, not here."""

    def __init__(self, config: RunConfig, *, progress: bool = True) -> None:
        self.config = config
        self.ctx = RunContext.from_config(config, progress=progress)
        self._batch: PromptBatch | None = None
        self._decision: Decision | None = None
        self._train_result: TrainResult | None = None
        self._rescore: list[Any] | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, **kw: Any) -> Distiller:
        return cls(load_config(path), **kw)

    @property
    def run_dir(self) -> Path:
        return self.ctx.layout.root

    @property
    def prompts(self) -> PromptBatch:
        """The prompt file's requests, plus (once ``prompts.imports`` are read, after the
        policy check) the re-score requests of imported answers (docs/import.md)."""
        if self._batch is None:
            self._batch = load_prompts(self.config)
        return self._batch

    def import_data(self) -> list[Any]:
        """Read ``prompts.imports`` into the run (terms enforced); returns the re-score
        requests added to :attr:`prompts` (``harvest.rescore``). Runs once per object."""
        from apidistill.pipeline.imports import import_into_batch

        if self._rescore is None:
            if not self.config.prompts.imports:
                self._rescore = []
                return self._rescore
            if self._decision is None:
                self.check_policy()
            self._rescore = import_into_batch(self.ctx, self.prompts)
        return self._rescore

    def check_policy(self) -> Decision:
        """Decide and enforce the teacher's terms (raises PolicyDenied); returns the Decision."""
        from apidistill.pipeline.stages import policy_stage

        self._decision = policy_stage(self.ctx)
        return self._decision

    def estimate(self) -> Estimate:
        """The pre-flight cost estimate (also written to ``estimate.json``); sends nothing."""
        from apidistill.pipeline.stages import estimate_stage

        rescore = self.import_data()
        return estimate_stage(self.ctx, self.prompts, rescore=rescore)

    def harvest(
        self, *, budget: Decimal | float | None = None, max_requests: int | None = None
    ) -> HarvestOutcome:
        """Pull every teacher answer not yet in the journal (policy is checked first), through
        the same stage function as ``apidistill run`` and ``apidistill harvest``."""
        from apidistill.pipeline.teacher_stages import run_teacher_stages

        self.import_data()  # once per object; checks the terms first when there are imports
        if budget is not None:
            self.ctx.budget_override = Decimal(str(budget))
        self.ctx.max_requests = max_requests
        stages = run_teacher_stages(
            self.ctx,
            self.prompts,
            estimate=False,
            decision=self._decision,
            rescore=self._rescore,
        )
        self._decision = stages.decision
        return stages.harvest

    def build_dataset(self) -> DatasetResult:
        """Filter, dedupe, balance and split the harvested records; write the data card."""
        from apidistill.pipeline.stages import dataset_stage, load_decision

        made = dataset_stage(self.ctx, self._decision or load_decision(self.ctx))
        return DatasetResult(
            harvested=made.harvested,
            kept=made.kept,
            splits=dict(made.splits),
            folder=self.ctx.layout.dataset,
        )

    def train(self, *, resume: bool = True) -> TrainResult:
        """Train the student on the train split (resumes from its last checkpoint)."""
        from apidistill.pipeline.stages import train_stage

        self._train_result = train_stage(self.ctx, resume=resume)
        return self._train_result

    def evaluate(self) -> EvalResult:
        """Serve base and student (a LoRA adapter, or the whole model after a full
        fine-tune), evaluate against the teacher, write the HTML report."""
        from apidistill.pipeline.run import eval_stage, student_dir_of, trained_student_dir

        tr = self._train_result
        student = student_dir_of(tr) if tr is not None else str(trained_student_dir(self.ctx))
        result, _ = eval_stage(self.ctx, student)
        return result
