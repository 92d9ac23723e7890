"""The sections of ``params.yaml``: one frozen, strict pydantic model each.

Unknown keys, wrong types and out-of-range values are rejected; the whole file is
:class:`bridgenet.config.Params`, which holds one of each.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """Base of every section: unknown keys rejected, values immutable, no type coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


Probabilities = tuple[float, float, float]


def _check_probabilities(value: Probabilities) -> Probabilities:
    if any(p < 0 for p in value) or abs(sum(value) - 1.0) > 1e-6:
        raise ValueError(f"must be three non-negative probabilities summing to 1, got {list(value)}")
    return value


class DataConfig(Section):
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


class FeedbackConfig(Section):
    """The operator's confirmed parts (``bridgenet feedback``), in the MVTec 3D-AD layout."""

    # <root>/<cat>/train/good: confirmed goods, trained on by the next run; <root>/<cat>/test/<kind>:
    # confirmed defects, the promotion gate's second test set (docs/cli.md, "feedback")
    root: str = "data/feedback"


class SynthConfig(Section):
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


class MemoryConfig(Section):
    """Memory-bank head: greedy k-centre coreset of the clean training patches, per modality."""

    coreset_ratio: float = Field(0.1, gt=0, le=1)
    max_entries: int = Field(4096, ge=1, le=10_000_000)  # over all modalities, an equal share each (search cost)
    chunk_size: int = Field(16_384, ge=256, le=100_000_000)  # first greedy pass: candidates per chunk
    projection_dim: int = Field(128, ge=0, le=4096)  # random projection for the selection; 0 = none

    def bank_cap(self, modalities: int) -> int:
        """Entries one modality's bank may hold: its equal share of ``max_entries``. A patch is
        searched in every modality's bank, so the search cost follows the entries over all of
        them; a one-modality model may keep the share a second modality would have taken."""
        return max(1, self.max_entries // max(1, modalities))

    def share(self, candidates: int) -> int:
        """``coreset_ratio`` of ``candidates`` patches, at least one."""
        return max(1, round(self.coreset_ratio * candidates))

    def bank_size(self, candidates: int, modalities: int) -> int:
        """Entries a bank keeps of ``candidates`` patches: their share, at most the modality's cap."""
        return min(self.bank_cap(modalities), self.share(candidates))


class ModelConfig(Section):
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
    map_guide_radius: int = Field(16, ge=0, le=64)  # raise the map along the input image (bridgenet.model.maps); 0 = off
    image_score: Literal["map_max", "patch_max"] = "map_max"  # the smoothed map's peak, or the top patch's
    depth_input: Literal["relief", "height"] = "relief"  # what the backbone reads of the visible depth
    relief_sigma: float = Field(0.05, gt=0, le=1)  # relief: Gaussian removed from the height, x input side
    relief_gain: float = Field(0.5, gt=0, le=100)  # relief: grey levels per standard deviation of clean relief
    memory_fusion: Literal["sum", "max"] = "sum"  # how the modalities' standardised memory scores combine
    foreground_only: bool = True
    backbone_cpu_batch: int = Field(4, ge=0, le=1024)
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


class GaussianConfig(Section):
    enabled: bool = False
    sigma: float = Field(0.02, gt=0, le=1)
    scales: tuple[float, float, float] = (6.0, 2.0, 1.0)
    modality_probs: Probabilities = (1 / 3, 1 / 3, 1 / 3)

    _probs = field_validator("modality_probs")(classmethod(lambda cls, v: _check_probabilities(v)))


class TextureConfig(Section):
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
    soft_edge_prob: float = Field(1.0, ge=0, le=1)
    soft_edge_px: float = Field(6.0, ge=1, le=64)

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


class AnomaliesConfig(Section):
    gaussian: GaussianConfig = GaussianConfig()
    texture: TextureConfig = TextureConfig()


class TrainConfig(Section):
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


class PredictConfig(Section):
    """Inference policies (``bridgenet predict``, the pyfunc model and its REST server)."""

    # A model trained on samples with an object meeting an input without one (part
    # missing, sensor failure): "anomalous" flags it (score 1, status "no_object"),
    # "error" refuses it (non-zero exit, HTTP 400). Never scored as good.
    on_empty_foreground: Literal["error", "anomalous"] = "anomalous"
    # torch threads of the served model (pyfunc/REST): one per worker process, so that
    # several workers or a busy host do not oversubscribe the cores; 0 = torch's default
    serve_threads: int = Field(1, ge=0, le=256)
    # folder/list predict: processes reading and preparing samples ahead of the network and
    # drawing the pictures (0 = half of the cores, 1 to 4); torch gets the other cores
    workers: int = Field(0, ge=0, le=64)
    # torch threads of bridgenet predict, one sample or many (0 = the cores the default
    # workers leave); one value for both, so that a sample scores the same alone and in a folder
    threads: int = Field(0, ge=0, le=256)
    batch_size: int = Field(8, ge=1, le=256)  # folder/list predict: samples per network call
    # folder/list predict and the served model, on the CPU: torch.compile the backbone. Same
    # scores, about a tenth more samples per second once compiled, after ~30 s of compiling
    # per process and input shape: for a server or a large folder, not for a handful of parts
    compile_backbone: bool = False


class EvalConfig(Section):
    reports_dir: str = "reports"
    aupro_thresholds: int = Field(2000, ge=100, le=1_000_000)
    heatmap_samples: int = Field(3, ge=1, le=50)
    batch_size: int = Field(8, ge=1, le=512)


class TrackingConfig(Section):
    uri: str = "sqlite:///mlflow.db"
    experiment: str = "bridgenet"
    host: str = "127.0.0.1"
    ui_port: int = Field(5000, ge=1, le=65535)
    serve_port: int = Field(5001, ge=1, le=65535)
    retries: int = Field(3, ge=0, le=20)
    retry_delay_s: float = Field(2.0, ge=0, le=600)
    create: bool = False


class RegistryConfig(Section):
    prefix: str = Field("bridgenet", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"


class PromotionConfig(Section):
    tolerances: dict[str, float] = {"image_auroc": 0.005, "aupro_30": 0.01}
    # absolute floors on the test split: below one, a challenger never becomes champion,
    # not even the first model of a category (0 = no floor)
    min_image_auroc: float = Field(0.5, ge=0, le=1)
    min_aupro_30: float = Field(0.0, ge=0, le=1)
    # the deployed decision on the test split (the model's validation threshold): the share of
    # good parts it rejects (false rejects: scrap) and the share of defective parts it finds
    max_fpr_at_threshold: float = Field(0.2, ge=0, le=1)  # 1 = no cap
    min_recall_at_threshold: float = Field(0.5, ge=0, le=1)  # 0 = no floor
    # the line's own defects (feedback) with the test split's goods: "block" applies the tolerances
    # there too (challenger against champion), "report" only reports them
    line_defects: Literal["block", "report"] = "block"

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


class ScheduleConfig(Section):
    cron: str = "0 3 * * 0"
    timezone: str = "UTC"
    # the scheduled `dvc repro` and each task of `bridgenet pipeline` fail past these
    timeout_minutes: float = Field(720, gt=0)
    task_timeout_minutes: float = Field(240, gt=0)
    monitor_cron: str = "0 * * * *"  # the drift monitor's passes (flows/monitor.py)


class MonitorConfig(Section):
    """The prediction log (docs/cli.md) and the drift monitor's window and limits (docs/scheduling.md)."""

    # SQLite file every `bridgenet predict` and every served request appends a record to;
    # "" (or null) = no log. Relative: to the working directory of the process that predicts.
    log: str | None = "reports/monitor/predictions.sqlite"
    window: int = Field(200, ge=1)  # the last this many ok records of a category (of the model monitored)
    window_hours: float = Field(0.0, ge=0)  # and only records of the last this many hours (0 = no time limit)
    min_samples: int = Field(50, ge=2)  # fewer ok records in the window: "not enough data", never "ok"
    max_flag_rate_ratio: float = Field(5.0, gt=0)  # flagged share / (1 - the model's threshold quantile)
    psi_limit: float = Field(0.25, gt=0)  # population stability index of the scores vs validation goods
    psi_bins: int = Field(10, ge=2, le=100)  # reference quantile bins, fewer for a small reference:
    psi_min_per_bin: int = Field(10, ge=1)  # ... at least this many reference scores per bin
    ks_pvalue: float = Field(0.01, gt=0, lt=1)  # two-sample KS test: drift below this p-value
    max_no_object_rate: float = Field(0.05, ge=0, le=1)  # share of records with status no_object
    # the parts' median brightness against the validation goods': drift when it moved by more
    # than this share (0.08: 8 % darker or lighter)
    max_brightness_shift: float = Field(0.08, gt=0)
    # the median share of the part's pixels without a measured 3D point against the validation
    # goods': drift when it rose by more than this share of the part (0.03: 3 % of its pixels)
    max_missing_points_increase: float = Field(0.03, gt=0, le=1)

    @model_validator(mode="after")
    def _enough_in_a_window(self) -> MonitorConfig:
        if self.min_samples > self.window:
            raise ValueError(f"monitor.min_samples ({self.min_samples}) must not exceed monitor.window "
                             f"({self.window}): no window would ever hold enough data")
        return self


class DaskConfig(Section):
    address: str | None = None
    n_workers: int = Field(2, ge=1, le=256)
