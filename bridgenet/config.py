"""Typed, frozen configuration loaded once from ``params.yaml``.

Every tunable of the project lives in ``params.yaml``; this module turns it into
frozen pydantic models that reject unknown keys, wrong types and out-of-range
values with a message naming the dotted key, the value found and what is allowed.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_PARAMS = Path("params.yaml")
LOGGER = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Probabilities = tuple[float, float, float]


def _check_probabilities(value: Probabilities) -> Probabilities:
    if any(p < 0 for p in value) or abs(sum(value) - 1.0) > 1e-6:
        raise ValueError(f"must be three non-negative probabilities summing to 1, got {list(value)}")
    return value


class DataConfig(_Section):
    root: str = "data/mvtec3d_synth"
    format: Literal["mvtec3d", "eyecandies"] = "mvtec3d"
    categories: tuple[str, ...] = ()
    image_size: int = Field(256, ge=32, le=1024, multiple_of=16)
    cache_dir: str = "data/cache"
    eyecandies_rgb: str = "image_4"
    plane_distance: float = Field(0.004, gt=0, le=0.1)
    ransac_iterations: int = Field(200, ge=10, le=100_000)
    ransac_sample_points: int = Field(20_000, ge=100)
    morph_kernel: int = Field(5, ge=1, le=31)
    min_component_pixels: int = Field(64, ge=0)
    crop: Literal["object", "none"] = "object"  # network input: a square around the part, or the frame
    crop_margin: float = Field(1.15, ge=1.0, le=3.0)  # the square's side / the part's extent


class SynthConfig(_Section):
    out: str = "data/mvtec3d_synth"
    categories: tuple[str, ...] = ("bagel", "dowel", "cookie", "cable")
    seed: int = Field(0, ge=0)
    image_size: int = Field(400, ge=64, le=2048)
    n_train: int = Field(40, ge=1)
    n_validation: int = Field(10, ge=1)
    n_test_good: int = Field(10, ge=1)
    n_test_per_defect: int = Field(6, ge=1)
    noise_std_m: float = Field(0.0002, ge=0, le=0.01)
    preview: bool = True
    preset: Literal["default", "hard"] = "default"


class MemoryConfig(_Section):
    """Memory-bank head: greedy k-centre coreset of the clean training patches, per modality."""

    coreset_ratio: float = Field(0.1, gt=0, le=1)
    max_bank: int = Field(4096, ge=1, le=10_000_000)
    chunk_size: int = Field(16_384, ge=256, le=100_000_000)  # first greedy pass: candidates per chunk
    projection_dim: int = Field(128, ge=0, le=4096)  # random projection for the selection; 0 = none


class ModelConfig(_Section):
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "package"
    layers: tuple[int, ...] = (2, 3)
    patch_size: int = Field(3, ge=1, le=7)
    embed_dim: int = Field(256, ge=8, le=4096)
    pre_proj_layers: int = Field(1, ge=0, le=4)
    dsc_layers: int = Field(3, ge=2, le=6)
    dsc_hidden: int = Field(512, ge=8, le=8192)
    modalities: tuple[Literal["rgb", "depth"], ...] = ("rgb", "depth")
    map_smoothing_sigma: float = Field(4.0, ge=0, le=32)
    image_score: Literal["map_max", "patch_max"] = "map_max"  # the smoothed map's peak, or the top patch's
    depth_input: Literal["relief", "height"] = "relief"  # what the backbone reads of the visible depth
    relief_sigma: float = Field(0.05, gt=0, le=1)  # relief: Gaussian removed from the height, x input side
    relief_gain: float = Field(1.0, gt=0, le=100)  # relief: grey levels per standard deviation of clean relief
    memory_fusion: Literal["sum", "max"] = "sum"  # how the modalities' standardised memory scores combine
    foreground_only: bool = True
    backbone_cpu_batch: int = Field(2, ge=0, le=1024)
    scorer: Literal["discriminator", "memory", "fused"] = "fused"
    fusion_weight: float = Field(0.5, ge=0, le=1)  # weight of the discriminator in the fused score
    memory: MemoryConfig = MemoryConfig()

    @field_validator("weights")
    @classmethod
    def _weights_source(cls, value: str) -> str:
        if value in ("package", "hub", "none") or (value.startswith("file:") and len(value) > 5):
            return value
        raise ValueError(f"must be 'package', 'hub', 'none' or 'file:PATH', got {value!r}")

    @field_validator("layers", "modalities")
    @classmethod
    def _non_empty_unique(cls, value: tuple) -> tuple:
        if not value or len(set(value)) != len(value):
            raise ValueError(f"must be a non-empty list without repeats, got {list(value)}")
        return value


class GaussianConfig(_Section):
    enabled: bool = False
    sigma: float = Field(0.02, gt=0, le=1)
    scales: tuple[float, float, float] = (6.0, 2.0, 1.0)
    modality_probs: Probabilities = (1 / 3, 1 / 3, 1 / 3)

    _probs = field_validator("modality_probs")(classmethod(lambda cls, v: _check_probabilities(v)))


class TextureConfig(_Section):
    enabled: bool = True
    source: str = "bundled"
    perlin_min_scale: int = Field(0, ge=0, le=8)
    perlin_max_scale: int = Field(6, ge=1, le=10)
    threshold: float = Field(0.5, ge=-1, le=1)
    beta_mean: float = Field(0.5, ge=0, le=1)
    beta_std: float = Field(0.3, ge=0, le=2)
    beta_min: float = Field(0.2, ge=0, le=1)
    beta_max: float = Field(0.8, ge=0, le=1)
    modality_probs: Probabilities = (1 / 3, 1 / 3, 1 / 3)
    focal_gamma: float = Field(0.0, ge=0, le=10)

    _probs = field_validator("modality_probs")(classmethod(lambda cls, v: _check_probabilities(v)))

    @model_validator(mode="after")
    def _ranges(self) -> TextureConfig:
        if self.perlin_min_scale >= self.perlin_max_scale:
            raise ValueError(
                f"perlin_min_scale ({self.perlin_min_scale}) must be below "
                f"perlin_max_scale ({self.perlin_max_scale})"
            )
        if self.beta_min > self.beta_max:
            raise ValueError(f"beta_min ({self.beta_min}) must not exceed beta_max ({self.beta_max})")
        return self


class AnomaliesConfig(_Section):
    gaussian: GaussianConfig = GaussianConfig()
    texture: TextureConfig = TextureConfig()


class TrainConfig(_Section):
    epochs: int = Field(20, le=10_000)
    batch_size: int = Field(8, le=512)
    max_samples_per_epoch: int = Field(392)
    seed: int = Field(42, ge=0)
    lr_discriminator: float = Field(5e-4, gt=0, le=1)
    lr_projection: float = Field(2e-4, gt=0, le=1)
    weight_decay_projection: float = Field(1e-5, ge=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True
    threads: int = Field(0, ge=0, le=1024)
    validation_anomalies_per_good: int = Field(2, ge=0, le=100)
    validation_seed: int = Field(1234, ge=0)
    threshold_quantile: float = Field(0.99, gt=0, le=1)
    models_dir: str = "models"

    # Each of these at its minimum still gives an optimisation step; below it, none.
    @field_validator("epochs")
    @classmethod
    def _some_epoch(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be >= 1, got {value}: with no epoch nothing is trained")
        return value

    @field_validator("batch_size", "max_samples_per_epoch")
    @classmethod
    def _two_per_step(cls, value: int) -> int:
        if value < 2:
            raise ValueError(
                f"must be >= 2, got {value}: the discriminator's BatchNorm needs two samples "
                "per step, so batches of one are skipped and no step is taken"
            )
        return value


class PredictConfig(_Section):
    """Inference policies (``bridgenet predict``, the pyfunc model and its REST server)."""

    # A model trained on samples with an object meeting an input without one (part
    # missing, sensor failure): "anomalous" flags it (score 1, status "no_object"),
    # "error" refuses it (non-zero exit, HTTP 400). Never scored as good.
    on_empty_foreground: Literal["error", "anomalous"] = "anomalous"
    # torch threads of the served model (pyfunc/REST): one per worker process, so that
    # several workers or a busy host do not oversubscribe the cores; 0 = torch's default
    serve_threads: int = Field(1, ge=0, le=256)


class EvalConfig(_Section):
    reports_dir: str = "reports"
    aupro_thresholds: int = Field(2000, ge=100, le=1_000_000)
    heatmap_samples: int = Field(3, ge=1, le=50)
    batch_size: int = Field(8, ge=1, le=512)


class TrackingConfig(_Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "bridgenet"
    host: str = "127.0.0.1"
    ui_port: int = Field(5000, ge=1, le=65535)
    serve_port: int = Field(5001, ge=1, le=65535)
    retries: int = Field(3, ge=0, le=20)
    retry_delay_s: float = Field(2.0, ge=0, le=600)
    create: bool = False


class RegistryConfig(_Section):
    prefix: str = Field("bridgenet", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"


class PromotionConfig(_Section):
    tolerances: dict[str, float] = {"image_auroc": 0.005, "aupro_30": 0.01}
    # absolute floors on the test split: below one, a challenger never becomes champion,
    # not even the first model of a category (0 = no floor)
    min_image_auroc: float = Field(0.5, ge=0, le=1)
    min_aupro_30: float = Field(0.0, ge=0, le=1)
    # the deployed decision on the test split (the model's validation threshold): the share of
    # good parts it rejects (false rejects: scrap) and the share of defective parts it finds
    max_fpr_at_threshold: float = Field(0.2, ge=0, le=1)  # 1 = no cap
    min_recall_at_threshold: float = Field(0.5, ge=0, le=1)  # 0 = no floor

    def floors(self) -> dict[str, float]:
        """Minima a challenger must reach (those set above 0)."""
        floors = {"image_auroc": self.min_image_auroc, "aupro_30": self.min_aupro_30,
                  "recall_at_threshold": self.min_recall_at_threshold}
        return {k: v for k, v in floors.items() if v > 0}

    def caps(self) -> dict[str, float]:
        """Maxima a challenger must stay under (those set below 1)."""
        return {k: v for k, v in {"fpr_at_threshold": self.max_fpr_at_threshold}.items() if v < 1}

    @field_validator("tolerances")
    @classmethod
    def _known_metrics(cls, value: dict[str, float]) -> dict[str, float]:
        known = {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro_30", "aupro_1",
                 "fpr_at_threshold", "recall_at_threshold", "precision_at_threshold"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; allowed: {sorted(known)}")
        if "image_auroc" not in value or "aupro_30" not in value:
            raise ValueError("must at least hold image_auroc and aupro_30")
        if any(t < 0 for t in value.values()):
            raise ValueError("tolerances must be >= 0")
        return value


class ScheduleConfig(_Section):
    cron: str = "0 3 * * 0"
    timezone: str = "UTC"
    # the scheduled `dvc repro` and each task of `bridgenet pipeline` fail past these
    timeout_minutes: float = Field(720, gt=0)
    task_timeout_minutes: float = Field(240, gt=0)


class DaskConfig(_Section):
    address: str | None = None
    n_workers: int = Field(2, ge=1, le=256)


class Params(_Section):
    """Every parameter; ``category_overrides`` holds per-category changes (see :meth:`for_category`)."""

    data: DataConfig = DataConfig()
    synth: SynthConfig = SynthConfig()
    model: ModelConfig = ModelConfig()
    anomalies: AnomaliesConfig = AnomaliesConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    predict: PredictConfig = PredictConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    promotion: PromotionConfig = PromotionConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    dask: DaskConfig = DaskConfig()
    category_overrides: dict[str, dict[str, Any]] = {}

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
            lines.append(f"  {key}: unknown key (value {value!r}); not a parameter of {parent}{where}")
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
)
_STORED_DROPPED: tuple[tuple[tuple[str, ...], str], ...] = (
    (("model", "memory"), "max_candidates"),  # a bank-building setting only: the bank is stored
)


def upgrade_stored_params(stored: dict[str, Any]) -> dict[str, Any]:
    """A model file's stored params as they read today: keys added since it was written get
    the behaviour the model was built with, keys since removed (building settings) are dropped."""
    out = copy.deepcopy(stored)
    for path, key, value in _STORED_DEFAULTS:
        section = out
        for name in path:
            section = section.setdefault(name, {})
        section.setdefault(key, value)
    for path, key in _STORED_DROPPED:
        section = out
        for name in path:
            section = section.get(name, {}) if isinstance(section, dict) else {}
        if isinstance(section, dict):
            section.pop(key, None)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a mapping holding the same key twice (PyYAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"duplicate key {key!r} (line {line}; first on line {seen[key]}): "
                    "only one value may be given",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file safely; a duplicate key is an error naming it."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc


def load_params(path: str | Path = DEFAULT_PARAMS, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    """Load ``params.yaml`` and apply overrides.

    A missing ``params.yaml`` in the working directory (the default path) means
    the embedded defaults, announced with a warning that names the paths they
    use; any other missing file is an error.
    """
    path = Path(path)
    if path.exists():
        raw = read_yaml(path) or {}
    elif path == DEFAULT_PARAMS:
        raw = {}
    else:
        raise ConfigError(f"parameter file {path} does not exist")
    params = params_from_dict(apply_overrides(raw, overrides), source=str(path), overrides=tuple(overrides))
    if not path.exists():
        LOGGER.warning(
            "no %s in %s: running on the built-in defaults (data.root=%s, data.cache_dir=%s, "
            "train.models_dir=%s, tracking.uri=%s; `bridgenet params` prints them all)",
            path, Path.cwd(), params.data.root, params.data.cache_dir,
            params.train.models_dir, params.tracking.uri,
        )
    return params
