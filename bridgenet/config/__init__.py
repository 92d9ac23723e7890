"""Typed, frozen configuration loaded once from ``params.yaml``.

Every tunable of the project lives in ``params.yaml``; this package turns it into
frozen pydantic models that reject unknown keys, wrong types and out-of-range
values with a message naming the dotted key, the value found and what is allowed.

:mod:`~bridgenet.config.sections` defines one model per section,
:mod:`~bridgenet.config.params` the whole :class:`Params` (per-category overrides,
``--set`` overrides, validation messages) and :mod:`~bridgenet.config.loading` reads
the file (:func:`load_params`). Import from here.
"""

from bridgenet.config.loading import DEFAULT_PARAMS, load_params, read_yaml
from bridgenet.config.params import (
    OVERRIDABLE_SECTIONS,
    ConfigError,
    Params,
    apply_overrides,
    params_from_dict,
    parse_override,
    upgrade_stored_params,
)
from bridgenet.config.sections import (
    AnomaliesConfig,
    DaskConfig,
    DataConfig,
    EvalConfig,
    FeedbackConfig,
    GaussianConfig,
    MemoryConfig,
    ModelConfig,
    MonitorConfig,
    PredictConfig,
    PromotionConfig,
    RegistryConfig,
    ScheduleConfig,
    SynthConfig,
    TextureConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "DEFAULT_PARAMS",
    "OVERRIDABLE_SECTIONS",
    "AnomaliesConfig",
    "ConfigError",
    "DaskConfig",
    "DataConfig",
    "EvalConfig",
    "FeedbackConfig",
    "GaussianConfig",
    "MemoryConfig",
    "ModelConfig",
    "MonitorConfig",
    "Params",
    "PredictConfig",
    "PromotionConfig",
    "RegistryConfig",
    "ScheduleConfig",
    "SynthConfig",
    "TextureConfig",
    "TrackingConfig",
    "TrainConfig",
    "apply_overrides",
    "load_params",
    "params_from_dict",
    "parse_override",
    "read_yaml",
    "upgrade_stored_params",
]
