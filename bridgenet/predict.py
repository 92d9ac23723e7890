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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bridgenet.model.io import TrainedModel, load_model

LOGGER = logging.getLogger(__name__)
MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")
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


def resolve_model(ref: str | Path, tracking_uri: str | None = None) -> TrainedModel:
    """A model file path, or an MLflow URI (``models:/NAME@ALIAS``, ``runs:/ID/model``)."""
    text = str(ref)
    if text.startswith(MLFLOW_SCHEMES):
        from bridgenet.tracking.pyfunc import download_model_file

        return load_model(download_model_file(text, tracking_uri))
    return load_model(Path(text))


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
    return max(model.network.backbone.strides)


@torch.inference_mode()
def predict_arrays(
    model: TrainedModel, rgb: np.ndarray, xyz: np.ndarray, on_empty_foreground: str | None = None
) -> Prediction:
    """Score one sample: rgb uint8 (H, W, 3), xyz float32 (H, W, 3) in metres.

    ``on_empty_foreground`` (default: the model's ``predict.on_empty_foreground``)
    decides for an input without an object (module docstring).
    """
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
    rgb_small, depth, foreground = network_inputs(rgb, xyz, model.params.data,
                                                  np.random.default_rng(0))
    if not foreground.any() and model.foreground_fraction > 0:
        message = ("no object found above the support plane (part missing or sensor failure?), "
                   f"but {model.category} was trained on samples with one")
        if policy == "error":
            raise NoObjectError(f"{message} (predict.on_empty_foreground=error)")
        LOGGER.warning("%s: flagged as anomalous (predict.on_empty_foreground=anomalous)", message)
        # Scored at the top of the model's colour range (1 for the discriminator): above the threshold.
        top = model.display_range()[1]
        return Prediction(top, True, model.threshold, np.full(rgb.shape[:2], top, np.float32), "no_object")
    network = model.network.eval()
    device = next(network.parameters()).device
    rgb_t = torch.from_numpy(rgb_small).permute(2, 0, 1).float().div(255.0).unsqueeze(0).to(device)
    depth_t = torch.from_numpy(depth).float().unsqueeze(0).unsqueeze(0).to(device)
    result = network(rgb_t, depth_t)
    full = F.interpolate(result.anomaly_map.unsqueeze(1), size=rgb.shape[:2], mode="bilinear",
                         align_corners=False)
    score = float(result.pred_score[0])
    return Prediction(score, score > model.threshold, model.threshold, full[0, 0].cpu().numpy(), "ok")


def write_heatmap(rgb: np.ndarray, anomaly_map: np.ndarray, path: Path, alpha: float = 0.5,
                  value_range: tuple[float, float] = (0.0, 1.0)) -> Path:
    """Overlay the anomaly map (jet over ``value_range``) on the RGB image and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image

    low, high = value_range
    colored = colormaps["jet"](np.clip((anomaly_map - low) / (high - low), 0.0, 1.0))[..., :3]
    blended = (1 - alpha) * rgb.astype(np.float32) / 255.0 + alpha * colored
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((blended * 255).round().astype(np.uint8)).save(path)
    return path


def predict_files(
    model_ref: str | Path,
    rgb_path: Path,
    xyz_path: Path,
    heatmap_path: Path | None = None,
    tracking_uri: str | None = None,
    on_empty_foreground: str | None = None,
) -> dict[str, Any]:
    """The ``bridgenet predict`` result as a JSON-able dict (``status``: ``ok`` or ``no_object``)."""
    from bridgenet.data.samples import read_rgb, read_xyz

    for path in (rgb_path, xyz_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"input file {path} does not exist")
    rgb, xyz = read_rgb(Path(rgb_path)), read_xyz(Path(xyz_path))
    check_pair(rgb, xyz, str(rgb_path), str(xyz_path))
    model = resolve_model(model_ref, tracking_uri)
    prediction = predict_arrays(model, rgb, xyz, on_empty_foreground)
    heatmap = (str(write_heatmap(rgb, prediction.anomaly_map, Path(heatmap_path),
                                 value_range=model.display_range())) if heatmap_path else None)
    return {
        "status": prediction.status,
        "score": prediction.score,
        "anomalous": bool(prediction.anomalous),
        "threshold": prediction.threshold,
        "heatmap": heatmap,
        "category": model.category,
        "scorer": model.network.scorer,
    }
