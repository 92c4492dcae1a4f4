"""apidistill: turn calls to a large API teacher into a small self-hosted student.

**Only the names in** ``__all__`` **are public API**: the SDK (:class:`Distiller` and its
typed results), the async front door (:func:`harvest` / :func:`harvest_sync` with the run
file's own models :class:`TeacherConfig`, :class:`HarvestConfig`, :class:`PolicyConfig`,
plus :class:`Budget` and :class:`HarvestOptions`), the request/answer schema, the results,
and the error classes. Everything else (``apidistill.harvest.engine``,
``apidistill.teachers.openai``, ...) is internal: importable, but it may change in any
release without notice. A script should need nothing but ``from apidistill import ...``.

``apidistill.harvest`` is both a subpackage and the function exported here; the function
wins (it is bound after the subpackage is imported), so ``from apidistill import harvest``
is always the function. Internal code imports ``from apidistill.harvest import ...``.
The teacher clients, the policy engine, training and eval types load on first use (PEP 562
``__getattr__``), so ``import apidistill`` loads no SDK client, torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from apidistill.config import (
    BudgetConfig,
    HarvestConfig,
    PolicyConfig,
    PriceConfig,
    RunConfig,
    TeacherConfig,
    load_config,
)
from apidistill.errors import (
    ApidistillError,
    BudgetExceeded,
    CapabilityError,
    ConfigError,
    DataError,
    EvalError,
    ModelLoadError,
    PolicyDenied,
    RateLimited,
    TeacherError,
    TeacherRejected,
    TeacherTimeout,
    TeacherUnavailable,
    TrainingError,
)
from apidistill.harvest import (
    HarvestInterrupted,
    HarvestOptions,
    HarvestResult,
    HarvestStream,
    HarvestSummary,
    RetryPolicy,
    harvest,
    harvest_sync,
)
from apidistill.records import (
    Completion,
    GenerationParams,
    Message,
    Record,
    TeacherRequest,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from apidistill.sdk import DatasetResult, Distiller

if TYPE_CHECKING:
    from apidistill.costs.budget import Budget
    from apidistill.costs.estimate import Estimate
    from apidistill.costs.prices import ModelPrice
    from apidistill.data.prompts import load_prompt_rows
    from apidistill.eval.types import EvalResult
    from apidistill.pipeline.stages import HarvestOutcome
    from apidistill.policy import Decision, decide_for_teacher
    from apidistill.teachers import make_teacher
    from apidistill.train.api import TrainResult

__version__ = "0.1.0"

# Public names that load their module on first use: name -> module.
_LAZY: dict[str, str] = {
    "Budget": "apidistill.costs.budget",
    "Decision": "apidistill.policy",
    "Estimate": "apidistill.costs.estimate",
    "EvalResult": "apidistill.eval.types",
    "HarvestOutcome": "apidistill.pipeline.stages",
    "ModelPrice": "apidistill.costs.prices",
    "TrainResult": "apidistill.train.api",
    "decide_for_teacher": "apidistill.policy",
    "load_prompt_rows": "apidistill.data.prompts",
    "make_teacher": "apidistill.teachers",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'apidistill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "ApidistillError",
    "Budget",
    "BudgetConfig",
    "BudgetExceeded",
    "CapabilityError",
    "Completion",
    "ConfigError",
    "DataError",
    "DatasetResult",
    "Decision",
    "Distiller",
    "Estimate",
    "EvalError",
    "EvalResult",
    "GenerationParams",
    "HarvestConfig",
    "HarvestInterrupted",
    "HarvestOptions",
    "HarvestOutcome",
    "HarvestResult",
    "HarvestStream",
    "HarvestSummary",
    "Message",
    "ModelLoadError",
    "ModelPrice",
    "PolicyConfig",
    "PolicyDenied",
    "PriceConfig",
    "RateLimited",
    "Record",
    "RetryPolicy",
    "RunConfig",
    "TeacherConfig",
    "TeacherError",
    "TeacherRejected",
    "TeacherRequest",
    "TeacherTimeout",
    "TeacherUnavailable",
    "TokenLogprob",
    "TopLogprob",
    "TrainResult",
    "TrainingError",
    "Usage",
    "__version__",
    "decide_for_teacher",
    "harvest",
    "harvest_sync",
    "load_config",
    "load_prompt_rows",
    "make_teacher",
]
