"""Checks a run makes before it spends anything: money on a harvest, hours on training.

- :func:`check_student_model`: the student model named in the run file exists and looks
  loadable (locally, no network, no weights read), so a typo in ``student.model`` is found
  before the harvest is paid for rather than after it.
- :func:`recheck_training_terms`: the terms the dataset was harvested under are re-checked
  for the run's intended use before training starts (docs/policies.md): data bought for
  ``internal`` use does not become a ``competing`` student because the run file changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from apidistill.config import RunConfig
from apidistill.errors import ConfigError, ModelLoadError

__all__ = ["check_student_model", "recheck_training_terms"]


def check_student_model(cfg: RunConfig) -> None:
    """:class:`ConfigError` naming the run file and ``student.model`` (or the candidate) when
    a student model cannot be found or its config is not a model's."""
    from apidistill.model_loading import check_model_offline

    specs = list(cfg.student.candidates) or [cfg.student.model]  # as training will load them
    for i, spec in enumerate(specs):
        try:
            check_model_offline(spec)
        except ModelLoadError as exc:
            raise ConfigError(
                f"the student model cannot be loaded: {exc.message}",
                file=cfg.source,
                key=f"student.candidates.{i}" if cfg.student.candidates else "student.model",
                hint=(exc.hint + "; " if exc.hint else "")
                + "fix it before harvesting: nothing was sent",
            ) from None


def recheck_training_terms(cfg: RunConfig, dataset: Path) -> list[Any]:
    """The decisions that govern a student trained on ``dataset`` for ``cfg.policy.use``;
    :class:`~apidistill.errors.PolicyDenied` when the terms do not allow that use (and the
    run file records no authorization or override for it)."""
    from apidistill.data.store import iter_provenance
    from apidistill.policy.engine import check_student_use
    from apidistill.policy.provenance import dataset_terms

    terms = dataset_terms(dataset, iter_provenance(dataset))
    return check_student_use(list(terms.decisions), cfg.policy.use, policy_cfg=cfg.policy)
