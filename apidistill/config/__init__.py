"""The YAML run file: one pydantic model per stage, validated at the boundary.

``apidistill run config.yaml`` reads one :class:`RunConfig`. Every section forbids unknown
keys, and :func:`load_config` turns pydantic's errors into a :class:`ConfigError` that names
the file, the line, the key path and the allowed values, so a typo never becomes a silently
ignored setting.

The models live in modules by concern (``teacher``, ``harvest`` with policy and budget,
``data`` with prompts, imports, dataset and synth, ``train``, ``outputs`` with eval, serve and
export, and ``run`` with the root :class:`RunConfig`); every name is re-exported here, so
``from apidistill.config import X`` is the one import to use.
"""

from __future__ import annotations

from apidistill.config._base import DEFAULT_MODEL
from apidistill.config.data import (
    BalanceConfig,
    DatasetConfig,
    FilterConfig,
    ImportConfig,
    ImportKind,
    PromptsConfig,
    SplitConfig,
    SynthConfig,
)
from apidistill.config.harvest import BudgetConfig, HarvestConfig, PolicyConfig
from apidistill.config.outputs import EvalConfig, EvalThresholds, ExportConfig, ServeConfig
from apidistill.config.run import RunConfig
from apidistill.config.teacher import PriceConfig, TeacherConfig, TeacherLaunchConfig
from apidistill.config.train import KDConfig, LoraConfig, StudentConfig, TrainingConfig

__all__ = [
    "DEFAULT_MODEL",
    "BalanceConfig",
    "BudgetConfig",
    "DatasetConfig",
    "EvalConfig",
    "EvalThresholds",
    "ExportConfig",
    "FilterConfig",
    "HarvestConfig",
    "ImportConfig",
    "ImportKind",
    "KDConfig",
    "LoraConfig",
    "PolicyConfig",
    "PriceConfig",
    "PromptsConfig",
    "RunConfig",
    "ServeConfig",
    "SplitConfig",
    "StudentConfig",
    "SynthConfig",
    "TeacherConfig",
    "TeacherLaunchConfig",
    "TrainingConfig",
    "load_config",
    "parse_config",
]

# Reading a run file (YAML → RunConfig, errors with file, line and key) lives in its own
# module; imported last because it needs RunConfig.
from apidistill.config_file import load_config, parse_config
