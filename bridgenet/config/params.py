"""All parameters as one :class:`Params`, built from a mapping with ``--set`` overrides applied.

Validation errors name the dotted key, the value found and what is allowed, and blame
an invalid value on the override that set it. :func:`upgrade_stored_params` reads the
params stored in an older model file as they read today.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import ValidationError, model_validator

from bridgenet.config.sections import (
    AnomaliesConfig,
    DaskConfig,
    DataConfig,
    EvalConfig,
    FeedbackConfig,
    ModelConfig,
    MonitorConfig,
    PredictConfig,
    PromotionConfig,
    RegistryConfig,
    ScheduleConfig,
    Section,
    SynthConfig,
    TrackingConfig,
    TrainConfig,
)


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the key."""


class Params(Section):
    """Every parameter; ``category_overrides`` holds per-category changes (see :meth:`for_category`)."""

    data: DataConfig = DataConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    synth: SynthConfig = SynthConfig()
    model: ModelConfig = ModelConfig()
    anomalies: AnomaliesConfig = AnomaliesConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    predict: PredictConfig = PredictConfig()
    monitor: MonitorConfig = MonitorConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionConfig = PromotionConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    dask: DaskConfig = DaskConfig()
    category_overrides: dict[str, dict[str, Any]] = {}  # noqa: RUF012 - a pydantic field (copied per instance)

    @model_validator(mode="after")
    def _overrides_are_valid(self) -> Params:
        for category, override in self.category_overrides.items():
            unknown = sorted(set(override) - OVERRIDABLE_SECTIONS)
            if unknown:
                raise ValueError(
                    f"category_overrides.{category}: sections {unknown} cannot be set per category; "
                    f"allowed: {sorted(OVERRIDABLE_SECTIONS)}"
                )
            self.for_category(category)
        return self

    def for_category(self, category: str) -> Params:
        """These params with ``category_overrides[category]`` merged in (validated)."""
        override = self.category_overrides.get(category)
        if not override:
            return self
        merged = _deep_merge(self.to_dict(), override)
        merged["category_overrides"] = {}
        try:
            return Params.model_validate(_lists_to_tuples(merged))
        except ValidationError as err:
            raise ValueError(_format_errors(err, f"category_overrides.{category}")) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict of every resolved parameter."""
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted-key view (``model.embed_dim``) for experiment trackers."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and prefix.split(".")[-1] not in ("tolerances", "category_overrides"):
                for key, sub in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, sub)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out


OVERRIDABLE_SECTIONS = {"model", "anomalies", "train", "eval"}


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


# keys users may still write, with what replaced them
RENAMED = {"model.memory.max_bank": "; replaced by model.memory.max_entries, the cap over all modalities "
                                    "(the old per-modality cap times the number of modalities)"}


def _format_errors(err: ValidationError, source: str, overrides: tuple[str, ...] = ()) -> str:
    """One line per invalid key; a key set by an override (``--set``) is blamed on that override."""
    by_key = {".".join(parse_override(text)[0]): text for text in overrides}
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"])
        value = item.get("input")
        kind = item["type"]
        culprit = next((text for k, text in by_key.items() if key == k or key.startswith(f"{k}.")), None)
        where = f" (from the override --set {culprit})" if culprit else ""
        if not key:  # a rule across several keys; its message names them
            lines.append(f"  {item['msg'].removeprefix('Value error, ')}")
        elif kind == "extra_forbidden":
            parent = ".".join(str(p) for p in item["loc"][:-1]) or "top level"
            hint = RENAMED.get(key, "")
            lines.append(f"  {key}: unknown key (value {value!r}); not a parameter of {parent}{where}{hint}")
        else:
            lines.append(f"  {key}: got {value!r}; {item['msg']}{where}")
    blamed = [line for line in lines if "(from the override --set" in line]
    head = (f"invalid override{'s' if len(blamed) > 1 else ''} (on {source}):" if len(blamed) == len(lines)
            else f"invalid parameters in {source}:")
    return "\n".join([head, *lines])


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``section.key=value`` (value as YAML) into a key path and a value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, _, raw_value = text.partition("=")
    path = [part for part in key.strip().split(".") if part]
    if len(path) < 2:
        raise ConfigError(f"override {text!r}: key {key!r} must be dotted, like data.image_size")
    try:
        value = yaml.safe_load(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``section.key=value`` override applied."""
    merged = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise ConfigError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return merged


def _lists_to_tuples(value: Any) -> Any:
    # YAML gives lists; the frozen models hold tuples, which strict mode
    # will not build from a list.
    if isinstance(value, list):
        return tuple(_lists_to_tuples(v) for v in value)
    if isinstance(value, dict):
        return {k: _lists_to_tuples(v) for k, v in value.items()}
    return value


def params_from_dict(raw: dict[str, Any], source: str = "<dict>", overrides: tuple[str, ...] = ()) -> Params:
    """Validate a raw mapping into :class:`Params`; errors name key and value (and the
    override among ``overrides`` that set the key, if one did)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(_lists_to_tuples(raw))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, tuple(overrides))) from None


# What a model's stored params meant before a key existed: (section path, key, old behaviour).
_STORED_DEFAULTS: tuple[tuple[tuple[str, ...], str, Any], ...] = (
    (("model",), "scorer", "discriminator"),  # before the memory-bank head
    (("data",), "crop", "none"),  # before object-centred crops
    (("model",), "depth_input", "height"),  # before the relief input
    (("model",), "image_score", "patch_max"),  # before the smoothed map's peak
    (("model",), "memory_fusion", "max"),  # before the modalities' sum
    (("model",), "map_guide_radius", 0),  # before the guided map
)
_STORED_DROPPED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("model", "memory"), "max_candidates"),  # a bank-building setting only: the bank is stored
)


def upgrade_stored_params(stored: dict[str, Any]) -> dict[str, Any]:
    """A model file's stored params as they read today: keys added since it was written get
    the behaviour the model was built with, keys since removed (building settings) are dropped,
    the memory bank's cap per modality (``max_bank``) becomes ``max_entries``, that cap times the
    model's modalities (the same banks)."""
    out = copy.deepcopy(stored)
    for path, key, value in _STORED_DEFAULTS:
        section = out
        for name in path:
            section = section.setdefault(name, {})
        section.setdefault(key, value)
    memory = out.get("model", {}).get("memory")
    if isinstance(memory, dict) and "max_bank" in memory:  # a cap per modality until 2026-12-05
        modalities = out["model"].get("modalities", ["rgb", "depth"])
        memory.setdefault("max_entries", int(memory.pop("max_bank")) * max(1, len(modalities)))
    for path, key in _STORED_DROPPED:
        section = out
        for name in path:
            section = section.get(name, {}) if isinstance(section, dict) else {}
        if isinstance(section, dict):
            section.pop(key, None)
    return out
