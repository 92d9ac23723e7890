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
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from bridgenet.config import DataConfig
from bridgenet.model.contract import TrainedModel

if TYPE_CHECKING:
    from bridgenet.monitor.log import PredictionRecord
    from bridgenet.monitor.records import ModelOrigin

LOGGER = logging.getLogger(__name__)
EMPTY_FOREGROUND_POLICIES = ("error", "anomalous")
MAX_AUTO_WORKERS = 4


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
    brightness: float | None = None  # the part's, as the network saw it (the drift monitor's; None: no object)
    missing_points: float | None = None  # share of the part's pixels without a 3D point (the drift monitor's)


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
                                 outcome.score, bool(outcome.anomalous), brightness=outcome.brightness,
                                 missing_points=outcome.missing_points)
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


def default_workers(cores: int | None = None) -> int:
    """Folder predict's worker processes by default: one per core, at most :data:`MAX_AUTO_WORKERS`
    (they share the cores with torch's threads, which sleep while they wait: on 2 cores, 2 workers
    and 2 threads score 16.3 samples/s, 1 and 1 13.6; docs/serving.md)."""
    cores = cores or available_cores()
    return max(1, min(MAX_AUTO_WORKERS, cores))


def available_cores() -> int:
    """The cores this process may run on (``taskset``, a container's cpuset), else the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compile_backbone(model: TrainedModel, on: bool) -> None:
    """``predict.compile_backbone`` on a loaded model: its backbone runs through ``torch.compile``
    on the CPU (:class:`bridgenet.model.backbone.CompiledOrEager`). A TorchScript export has no
    backbone module to compile: it runs as it is, with a warning when compiling was asked for."""
    backbone = getattr(model.network, "backbone", None)
    if backbone is None or not hasattr(backbone, "compile_cpu"):
        if on:
            LOGGER.warning("predict.compile_backbone: %s is an exported graph; it runs without torch.compile",
                           model.category)
        return
    backbone.compile_cpu = on


def predict_threads(threads: int = 0) -> int:
    """Torch threads of ``bridgenet predict``, one sample or many: ``threads``, or (0) every core.
    One rule for both, whatever ``predict.workers`` says: a reduction split over another number of
    threads rounds differently (~1e-7), and a sample must score the same alone and in a folder.
    Folder predict's workers share the cores with them: ``bridgenet predict`` sets
    ``OMP_WAIT_POLICY=PASSIVE`` before torch starts, so that torch's idle threads sleep instead of
    spinning and leave the cores to the reading workers between batches (docs/serving.md)."""
    return threads or available_cores()


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Torch runs on ``threads`` threads inside the block, as before it after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def minimum_side(model: TrainedModel) -> int:
    """Smallest input side the model scores: its backbone's coarsest stride (one patch)."""
    return max(model.network.strides)


@dataclass(frozen=True)
class PreparedSample:
    """One sample made ready for the network (:func:`prepare_sample`): network-size arrays
    (rgb uint8 (S, S, 3), depth float32 (S, S), foreground bool (S, S)), the frame's box
    they show (top, left, height, width), the frame's size (H, W) and the share of the part's
    pixels without a measured point (:func:`bridgenet.data.depth.missing_share`)."""

    rgb: np.ndarray
    depth: np.ndarray
    foreground: np.ndarray
    box: tuple[int, int, int, int]
    frame: tuple[int, int]
    missing: float


def prepare_sample(rgb: np.ndarray, xyz: np.ndarray, data_cfg: DataConfig, side: int, rgb_name: str = "rgb",
                   xyz_name: str = "xyz") -> PreparedSample:
    """Check a pair (:func:`check_pair`; at least ``side`` pixels, :func:`minimum_side`) and prepare
    it as the cache prepares a sample (:func:`bridgenet.preprocess.network_inputs`, RANSAC seed 0).
    Needs no model, so that folder predict runs it in worker processes."""
    from bridgenet.preprocess import network_inputs

    check_pair(rgb, xyz, rgb_name, xyz_name)
    if min(rgb.shape[:2]) < side:
        raise ValueError(f"input is {rgb.shape[1]}x{rgb.shape[0]} pixels; the model needs at least "
                         f"{side}x{side} (its backbone's coarsest stride)")
    rgb_small, depth, foreground, box, missing = network_inputs(rgb, xyz, data_cfg, np.random.default_rng(0))
    return PreparedSample(rgb_small, depth, foreground, tuple(box), (int(rgb.shape[0]), int(rgb.shape[1])), missing)


def empty_foreground_policy(model: TrainedModel, on_empty_foreground: str | None) -> str:
    """The caller's ``on_empty_foreground``, else the model's ``predict.on_empty_foreground``; checked."""
    policy = on_empty_foreground or model.params.predict.on_empty_foreground
    if policy not in EMPTY_FOREGROUND_POLICIES:
        raise ValueError(f"predict.on_empty_foreground must be one of {EMPTY_FOREGROUND_POLICIES}, "
                         f"got {policy!r}")
    return policy


@torch.inference_mode()
def predict_arrays(
    model: TrainedModel, rgb: np.ndarray, xyz: np.ndarray, on_empty_foreground: str | None = None
) -> Prediction:
    """Score one sample: rgb uint8 (H, W, 3), xyz float32 (H, W, 3) in metres.

    ``on_empty_foreground`` (default: the model's ``predict.on_empty_foreground``)
    decides for an input without an object (module docstring).
    """
    policy = empty_foreground_policy(model, on_empty_foreground)
    outcome = predict_prepared(model, [prepare_sample(rgb, xyz, model.params.data, minimum_side(model))], policy)[0]
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


@torch.inference_mode()
def predict_prepared(model: TrainedModel, samples: list[PreparedSample], policy: str) -> list[Prediction | NoObjectError]:
    """Score prepared samples in one network batch per frame size (per-sample scores do not
    depend on the batch: tests/test_predict_batch.py); a sample without an object is flagged or
    refused (its :class:`NoObjectError`) by ``policy``, the others keep their order."""
    from bridgenet import inference
    from bridgenet.data.batch import Batch
    from bridgenet.monitor.drift import part_brightness

    outcomes: list[Prediction | NoObjectError | None] = [None] * len(samples)
    by_frame: dict[tuple[int, int], list[int]] = {}
    for i, sample in enumerate(samples):
        if not sample.foreground.any() and model.foreground_fraction > 0:
            outcomes[i] = no_object(model, sample.frame, policy)
        else:
            by_frame.setdefault(sample.frame, []).append(i)
    device = next(model.network.parameters()).device
    for frame, indices in by_frame.items():
        chosen = [samples[i] for i in indices]
        rgb, foreground = np.stack([s.rgb for s in chosen]), np.stack([s.foreground for s in chosen])
        batch = Batch.from_arrays(rgb, np.stack([s.depth for s in chosen]), foreground)
        scored = inference.score(model.network, batch, device, len(chosen),
                                 boxes=np.array([s.box for s in chosen]), frame=frame)
        lights = part_brightness(rgb, foreground)
        for i, score, anomaly_map, light in zip(indices, scored.scores, scored.frames, lights):
            score = float(score)
            outcomes[i] = Prediction(score, score > model.threshold, model.threshold, anomaly_map, "ok",
                                     predicted_mask(model, anomaly_map), float(light), float(samples[i].missing))
    return outcomes  # type: ignore[return-value]  # every slot filled above


def no_object(model: TrainedModel, frame: tuple[int, int], policy: str) -> Prediction | NoObjectError:
    """An input without an object, for a model trained on samples with one: refused (``error``) or
    flagged at the top of the model's colour range (``anomalous``: above the threshold)."""
    message = ("no object found above the support plane (part missing or sensor failure?), "
               f"but {model.category} was trained on samples with one")
    if policy == "error":
        return NoObjectError(f"{message} (predict.on_empty_foreground=error)")
    LOGGER.warning("%s: flagged as anomalous (predict.on_empty_foreground=anomalous)", message)
    top = model.display_range()[1]  # 1 for the discriminator
    full = np.full(frame, top, np.float32)
    mask = None if model.pixel_threshold is None else np.ones(frame, bool)
    return Prediction(top, True, model.threshold, full, "no_object", mask)


def predicted_mask(model: TrainedModel, anomaly_map: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: the map above the model's pixel threshold (None for a model without one)."""
    if model.pixel_threshold is None:
        return None
    return anomaly_map > model.pixel_threshold


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
    from bridgenet.pictures import write_pictures as draw

    return draw(rgb, prediction.anomaly_map, prediction.mask, heatmap_path, mask_path, model.display_range(),
                model.pixel_threshold, heatmap_title(model, prediction))


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


def predict_files(
    model_ref: str | Path,
    rgb_path: Path,
    xyz_path: Path,
    heatmap_path: Path | None = None,
    tracking_uri: str | None = None,
    on_empty_foreground: str | None = None,
    mask_path: Path | None = None,
    log: Path | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """The ``bridgenet predict`` result as a JSON-able dict (``status``: ``ok`` or ``no_object``).

    ``log``: the prediction log (:mod:`bridgenet.monitor.log`) gets the sample's record, a
    refused one's too (the model is then loaded to say which model refused it). ``threads``:
    torch's, :func:`predict_threads`.
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
            with torch_threads(predict_threads(threads)):
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
