"""apidistill: turn calls to a large API teacher into a small self-hosted student.

The public API is re-exported here; internals stay importable but unadvertised.
"""

from apidistill.config import RunConfig, load_config
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
from apidistill.sdk import Distiller

__version__ = "0.1.0"

__all__ = [
    "ApidistillError",
    "BudgetExceeded",
    "CapabilityError",
    "Completion",
    "ConfigError",
    "DataError",
    "Distiller",
    "EvalError",
    "GenerationParams",
    "Message",
    "ModelLoadError",
    "PolicyDenied",
    "RateLimited",
    "Record",
    "RunConfig",
    "TeacherError",
    "TeacherRejected",
    "TeacherRequest",
    "TeacherTimeout",
    "TeacherUnavailable",
    "TokenLogprob",
    "TopLogprob",
    "TrainingError",
    "Usage",
    "__version__",
    "load_config",
]
