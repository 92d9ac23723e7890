"""Inference on one RGB image + organised point cloud, from a model file or an MLflow model URI.

An input without an object (no foreground above the support plane: part missing,
sensor failure) is never scored as good by a model trained on samples with
one: ``predict.on_empty_foreground`` either flags it (``anomalous``: score at the top of the colour range,
``anomalous`` true, ``status`` ``"no_object"``) or refuses it (``error``:
:class:`NoObjectError`). An input smaller than the backbone's coarsest stride
holds no patch of its own and is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bridgenet.model.contract import TrainedModel

if TYPE_CHECKING:
    from bridgenet.monitor.log import PredictionRecord
    from bridgenet.monitor.records import ModelOrigin

LOGGER = logging.getLogger(__name__)
EMPTY_FOREGROUND_POLICIES = ("error", "anomalous")


class NoObjectError(ValueError):
    """The input holds no object while the model was trained on samples with one."""


@dataclass
class Prediction:
    """Image score, decision and anomaly map (H, W) at the input's original resolution.

    ``status`` is ``"ok"``, or ``"no_object"`` for an input without a foreground
    flagged by the ``anomalous`` policy (score and map at the top of the colour range: nothing was scored).
    """

    score: float
    anomalous: bool
    threshold: float
    anomaly_map: np.ndarray
    status: str = "ok"
    mask: np.ndarray | None = None  # anomaly_map > the model's pixel threshold (None: model without one)


def resolve_model(ref: str | Path, tracking_uri: str | None = None, graph: bool = False) -> TrainedModel:
    """A model file path, or an MLflow URI (``models:/NAME@ALIAS``, ``runs:/ID/<prefix>-<category>``);
    ``graph``: as the traced graph that the file carries, where it does (:func:`bridgenet.model.io.load_model`)."""
    from bridgenet.monitor.records import load_with_origin

    return load_with_origin(ref, tracking_uri, graph, digest=False)[0]


def log_record(model: TrainedModel, origin: ModelOrigin, digests: tuple[str | None, str | None], source: str,
               outcome: Prediction | Exception) -> PredictionRecord:
    """The prediction log's record of one sample: its prediction, or why it was refused (an input
    without an object that ``predict.on_empty_foreground=error`` refuses: status ``no_object``)."""
    from bridgenet.monitor.records import prediction_record

    if isinstance(outcome, Prediction):
        return prediction_record(model.category, model.threshold, origin, digests, source, outcome.status,
                                 outcome.score, bool(outcome.anomalous))
    status = "no_object" if isinstance(outcome, NoObjectError) else "error"
    return prediction_record(model.category, model.threshold, origin, digests, source, status, message=str(outcome))


def check_pair(rgb: np.ndarray, xyz: np.ndarray, rgb_name: str = "rgb", xyz_name: str = "xyz") -> None:
    """rgb (H, W, 3) uint8 and xyz (H, W, 3) float must share H x W and hold valid points."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"{rgb_name}: expected uint8 H x W x 3, got {rgb.dtype} {rgb.shape}")
    if xyz.ndim != 3 or xyz.shape[2] != 3 or not np.issubdtype(xyz.dtype, np.floating):
        raise ValueError(f"{xyz_name}: expected float H x W x 3, got {xyz.dtype} {xyz.shape}")
    if rgb.shape[:2] != xyz.shape[:2]:
        raise ValueError(f"{rgb_name} is {rgb.shape[1]}x{rgb.shape[0]} but {xyz_name} is "
                         f"{xyz.shape[1]}x{xyz.shape[0]}: they must be aligned pixel for pixel")
    if not np.isfinite(xyz).all():
        raise ValueError(f"{xyz_name}: holds NaN or Inf values")
    if not (xyz[..., 2] != 0).any():
        raise ValueError(f"{xyz_name}: empty point cloud (no valid point)")


def minimum_side(model: TrainedModel) -> int:
    """Smallest input side the model scores: its backbone's coarsest stride (one patch)."""
    return max(model.network.strides)


@torch.inference_mode()
def predict_arrays(
    model: TrainedModel, rgb: np.ndarray, xyz: np.ndarray, on_empty_foreground: str | None = None
) -> Prediction:
    """Score one sample: rgb uint8 (H, W, 3), xyz float32 (H, W, 3) in metres.

    ``on_empty_foreground`` (default: the model's ``predict.on_empty_foreground``)
    decides for an input without an object (module docstring).
    """
    from bridgenet import inference
    from bridgenet.data.batch import Batch
    from bridgenet.preprocess import network_inputs

    policy = on_empty_foreground or model.params.predict.on_empty_foreground
    if policy not in EMPTY_FOREGROUND_POLICIES:
        raise ValueError(f"predict.on_empty_foreground must be one of {EMPTY_FOREGROUND_POLICIES}, "
                         f"got {policy!r}")
    check_pair(rgb, xyz)
    side = minimum_side(model)
    if min(rgb.shape[:2]) < side:
        raise ValueError(f"input is {rgb.shape[1]}x{rgb.shape[0]} pixels; the model needs at least "
                         f"{side}x{side} (its backbone's coarsest stride)")
    rgb_small, depth, foreground, box = network_inputs(rgb, xyz, model.params.data,
                                                       np.random.default_rng(0))
    if not foreground.any() and model.foreground_fraction > 0:
        message = ("no object found above the support plane (part missing or sensor failure?), "
                   f"but {model.category} was trained on samples with one")
        if policy == "error":
            raise NoObjectError(f"{message} (predict.on_empty_foreground=error)")
        LOGGER.warning("%s: flagged as anomalous (predict.on_empty_foreground=anomalous)", message)
        # Scored at the top of the model's colour range (1 for the discriminator): above the threshold.
        top = model.display_range()[1]
        full = np.full(rgb.shape[:2], top, np.float32)
        mask = None if model.pixel_threshold is None else np.ones(rgb.shape[:2], bool)
        return Prediction(top, True, model.threshold, full, "no_object", mask)
    device = next(model.network.parameters()).device
    scored = inference.score(model.network, Batch.from_arrays(rgb_small[None], depth[None], foreground[None]),
                             device, 1, boxes=np.array([box]), frame=rgb.shape[:2])
    score = float(scored.scores[0])
    anomaly_map = scored.frames[0]
    return Prediction(score, score > model.threshold, model.threshold, anomaly_map, "ok",
                      predicted_mask(model, anomaly_map))


def predicted_mask(model: TrainedModel, anomaly_map: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: the map above the model's pixel threshold (None for a model without one)."""
    if model.pixel_threshold is None:
        return None
    return anomaly_map > model.pixel_threshold


def write_mask(mask: np.ndarray, path: Path) -> Path:
    """The predicted mask as a black-and-white PNG (255 where anomalous), the input's size."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)
    return path


def write_heatmap(rgb: np.ndarray, anomaly_map: np.ndarray, path: Path, value_range: tuple[float, float] = (0.0, 1.0),
                  pixel_threshold: float | None = None, title: str | None = None, alpha: float = 0.5) -> Path:
    """The anomaly map over the RGB image, with a colour bar over ``value_range``, the
    ``pixel_threshold`` as a contour (and a mark on the bar) and ``title``; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    low, high = value_range
    height, width = anomaly_map.shape
    fig, ax = plt.subplots(figsize=(6.4, 6.4 * height / width + 0.6), dpi=100, layout="constrained")
    ax.imshow(rgb)
    shown = ax.imshow(anomaly_map, cmap="inferno", vmin=low, vmax=high, alpha=alpha, interpolation="bilinear")
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.02, label="anomaly score")
    if pixel_threshold is not None:
        if anomaly_map.max() > pixel_threshold > anomaly_map.min():
            ax.contour(anomaly_map, levels=[pixel_threshold], colors="cyan", linewidths=1.5)
        bar.ax.axhline(pixel_threshold, color="cyan", linewidth=2)
    if title:
        ax.set_title(title, fontsize=10)
    ax.set_axis_off()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def heatmap_title(model: TrainedModel, prediction: Prediction) -> str:
    if prediction.status == "no_object":
        verdict = "no object: anomalous"
    else:
        relation = ">" if prediction.anomalous else "<="
        verdict = (f"{'anomalous' if prediction.anomalous else 'good'} "
                   f"(score {prediction.score:.3g} {relation} threshold {prediction.threshold:.3g})")
    contour = "" if model.pixel_threshold is None else f"\ncyan: map above the pixel threshold {model.pixel_threshold:.3g}"
    return f"{model.category}: {verdict}{contour}"


def write_pictures(model: TrainedModel, rgb: np.ndarray, prediction: Prediction, heatmap_path: Path | None,
                   mask_path: Path | None) -> tuple[str | None, str | None]:
    """Heatmap and mask PNGs where paths are given (no mask for a model without a pixel threshold)."""
    heatmap = mask = None
    if heatmap_path is not None:
        heatmap = str(write_heatmap(rgb, prediction.anomaly_map, Path(heatmap_path), model.display_range(),
                                    model.pixel_threshold, heatmap_title(model, prediction)))
    if mask_path is not None and prediction.mask is not None:
        mask = str(write_mask(prediction.mask, Path(mask_path)))
    return heatmap, mask


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """Every ``rgb/<stem>.png`` under ``folder`` with its ``xyz/<stem>.tiff`` beside it (MVTec
    3D-AD's sample folders, at any depth), sorted; a PNG without its point cloud is an error."""
    from bridgenet.data.samples import RGB_EXTENSIONS, XYZ_EXTENSIONS

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    pairs, unpaired = [], []
    for rgb_dir in sorted(p for p in folder.rglob("rgb") if p.is_dir()):
        for rgb in sorted(p for p in rgb_dir.iterdir() if p.suffix.lower() in RGB_EXTENSIONS):
            xyz = next((rgb_dir.parent / "xyz" / f"{rgb.stem}{ext}" for ext in XYZ_EXTENSIONS
                        if (rgb_dir.parent / "xyz" / f"{rgb.stem}{ext}").is_file()), None)
            (pairs.append((rgb, xyz)) if xyz else unpaired.append(rgb))
    if unpaired:
        raise FileNotFoundError(f"{len(unpaired)} RGB images without a point cloud beside them, first "
                                f"{unpaired[0]} (expected ../xyz/{unpaired[0].stem}.tiff)")
    if not pairs:
        raise FileNotFoundError(f"{folder}: no rgb/<stem>.png with xyz/<stem>.tiff found under it")
    return pairs


def read_pair_list(path: Path) -> list[tuple[Path, Path]]:
    """(rgb, xyz) pairs from a CSV with columns ``rgb`` and ``xyz`` (relative paths: to the CSV)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample list {path} does not exist")
    table = pd.read_csv(path, dtype=str)
    missing = {"rgb", "xyz"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: needs the columns rgb and xyz, lacks {sorted(missing)}")
    if table[["rgb", "xyz"]].isna().any().any() or table.empty:
        raise ValueError(f"{path}: every row needs an rgb and an xyz path (and there must be one)")
    return [(path.parent / r, path.parent / x) for r, x in zip(table["rgb"], table["xyz"])]


PREDICTION_COLUMNS = ("rgb", "xyz", "status", "score", "anomalous", "threshold", "heatmap", "mask", "error")


def predict_folder(
    model_ref: str | Path,
    pairs: list[tuple[Path, Path]],
    out_dir: Path,
    tracking_uri: str | None = None,
    on_empty_foreground: str | None = None,
    heatmaps: bool = True,
    progress: bool = True,
    log: Path | None = None,
) -> tuple[Path, int]:
    """Score every (rgb, xyz) pair with one loaded model; ``out_dir/predictions.csv`` holds a row each
    (and ``heatmaps/`` and ``masks/`` a picture each, in the layout of the input folders). A sample that cannot be scored gets ``status`` ``error``
    and its message; the others are still scored. Returns the CSV's path and the error count.
    ``log``: the prediction log (:mod:`bridgenet.monitor.log`) gets a record per sample, in one transaction.
    """
    import pandas as pd
    from tqdm import tqdm

    from bridgenet.data.samples import read_rgb, read_xyz

    out_dir = Path(out_dir)
    from bridgenet.monitor.records import file_digest, load_with_origin, write_records

    model, origin = load_with_origin(model_ref, tracking_uri, graph=True)
    root = Path(*_common_parts([rgb for rgb, _ in pairs]))
    pairs = [(Path(r).resolve(), Path(x).resolve()) for r, x in pairs]
    rows, records = [], []
    for rgb_path, xyz_path in tqdm(pairs, desc="predict", unit="sample", disable=not progress):
        row = {"rgb": str(rgb_path), "xyz": str(xyz_path), "status": "error", "score": np.nan,
               "anomalous": True, "threshold": model.threshold, "heatmap": "", "mask": "", "error": ""}
        try:
            rgb, xyz = read_rgb(Path(rgb_path)), read_xyz(Path(xyz_path))
            check_pair(rgb, xyz, str(rgb_path), str(xyz_path))
            prediction = predict_arrays(model, rgb, xyz, on_empty_foreground)
        except (ValueError, OSError) as err:  # NoObjectError (policy "error") included
            LOGGER.error("%s: %s", rgb_path, err)
            row["error"] = str(err)
            outcome: Prediction | Exception = err
        else:
            outcome = prediction
            row.update(status=prediction.status, score=prediction.score, anomalous=bool(prediction.anomalous))
            if heatmaps:
                name = Path(rgb_path).relative_to(root).with_suffix(".png")
                heatmap, mask = write_pictures(model, rgb, prediction, out_dir / "heatmaps" / name,
                                               out_dir / "masks" / name)
                row.update(heatmap=heatmap or "", mask=mask or "")
        rows.append(row)
        if log is not None:
            records.append(log_record(model, origin, (file_digest(rgb_path), file_digest(xyz_path)), "predict",
                                      outcome))
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    path = out_dir / "predictions.csv"
    partial = path.with_name(f".{path.name}.partial")
    table.to_csv(partial, index=False)
    partial.replace(path)
    write_records(log, records)
    return path, int((table["status"] == "error").sum())


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    """The longest folder prefix that ``paths`` share (heatmaps keep the layout below it)."""
    parents = [Path(p).resolve().parent.parts for p in paths]
    common: list[str] = []
    for parts in zip(*parents):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return tuple(common) or ("/",)


def predict_files(
    model_ref: str | Path,
    rgb_path: Path,
    xyz_path: Path,
    heatmap_path: Path | None = None,
    tracking_uri: str | None = None,
    on_empty_foreground: str | None = None,
    mask_path: Path | None = None,
    log: Path | None = None,
) -> dict[str, Any]:
    """The ``bridgenet predict`` result as a JSON-able dict (``status``: ``ok`` or ``no_object``).

    ``log``: the prediction log (:mod:`bridgenet.monitor.log`) gets the sample's record, a
    refused one's too (the model is then loaded to say which model refused it).
    """
    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.monitor.records import file_digest, load_with_origin, write_records

    refused: Exception | None = None
    try:
        for path in (rgb_path, xyz_path):
            if not Path(path).is_file():
                raise FileNotFoundError(f"input file {path} does not exist")
        rgb, xyz = read_rgb(Path(rgb_path)), read_xyz(Path(xyz_path))
        check_pair(rgb, xyz, str(rgb_path), str(xyz_path))
    except (ValueError, OSError) as err:
        refused = err
    if refused is not None and log is None:
        raise refused
    model, origin = load_with_origin(model_ref, tracking_uri, graph=True)
    if refused is None:
        try:
            prediction = predict_arrays(model, rgb, xyz, on_empty_foreground)
        except ValueError as err:  # NoObjectError (policy "error") included
            refused = err
    if log is not None:
        write_records(log, [log_record(model, origin, (file_digest(rgb_path), file_digest(xyz_path)), "predict",
                                       refused or prediction)])
    if refused is not None:
        raise refused
    heatmap, mask = write_pictures(model, rgb, prediction, heatmap_path, mask_path)
    return {
        "status": prediction.status,
        "score": prediction.score,
        "anomalous": bool(prediction.anomalous),
        "threshold": prediction.threshold,
        "pixel_threshold": model.pixel_threshold,
        "anomalous_pixels": None if prediction.mask is None else int(prediction.mask.sum()),
        "heatmap": heatmap,
        "mask": mask,
        "category": model.category,
        "scorer": model.scorer.name,
    }
