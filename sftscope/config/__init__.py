"""Every knob, declared once: the pydantic configs of the stages (:mod:`.stages`), of the
composite commands (:mod:`.runs`), of the engines (:mod:`.engine`) and executors
(:mod:`.executors`), and how they load (:mod:`.base`). A YAML file, ``key=value`` overrides and
the generated command-line options all fill the same models. Foundation: imports nothing of
sftscope's but :mod:`sftscope.io` and :mod:`sftscope.errors`."""

from sftscope.config.base import (
    SPLITS,
    BatchSize,
    PromptStyle,
    Split,
    StageConfig,
    added,
    dump_config,
    load_config,
    parse_overrides,
    result_fields,
    runtime,
)
from sftscope.config.engine import EngineFields, EngineName, VLLMSettings
from sftscope.config.executors import ExecutorConfig, RaySettings, SlurmSettings
from sftscope.config.runs import (
    AuditConfig,
    AuditEval,
    AuditKL,
    AuditParams,
    AuditProbe,
    GridConfig,
    GridEval,
    GridKL,
    GridParams,
    ParamsSettings,
)
from sftscope.config.stages import (
    PAPER_K,
    PAPER_THRESHOLDS,
    DataConfig,
    DiffConfig,
    EvalConfig,
    EvalSettings,
    KLConfig,
    KLSettings,
    ProbeConfig,
    ProbeSettings,
    RestoreConfig,
    RestoreEval,
    RestoreSettings,
    SelectConfig,
    SelectProbe,
    TrainConfig,
    TrainRecipe,
)

__all__ = [
    "PAPER_K", "PAPER_THRESHOLDS", "SPLITS", "AuditConfig", "AuditEval", "AuditKL",
    "AuditParams", "AuditProbe", "BatchSize", "DataConfig", "DiffConfig", "EngineFields",
    "EngineName", "EvalConfig", "EvalSettings", "ExecutorConfig", "GridConfig", "GridEval",
    "GridKL", "GridParams", "KLConfig", "KLSettings", "ParamsSettings", "ProbeConfig",
    "ProbeSettings", "PromptStyle", "RaySettings", "RestoreConfig", "RestoreEval",
    "RestoreSettings", "SelectConfig", "SelectProbe", "SlurmSettings", "Split", "StageConfig",
    "TrainConfig", "TrainRecipe", "VLLMSettings", "added", "dump_config", "load_config",
    "parse_overrides", "result_fields", "runtime",
]
