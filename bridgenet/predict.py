"""Inference on one RGB image + organised point cloud, from a model file or an MLflow model URI."""

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


@dataclass
class Prediction:
    """Image score, decision and anomaly map (H, W) at the input's original resolution."""

    score: float
    anomalous: bool
    threshold: float
    anomaly_map: np.ndarray


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


@torch.inference_mode()
def predict_arrays(model: TrainedModel, rgb: np.ndarray, xyz: np.ndarray) -> Prediction:
    """Score one sample: rgb uint8 (H, W, 3), xyz float32 (H, W, 3) in metres."""
    from bridgenet.preprocess import network_inputs

    check_pair(rgb, xyz)
    rgb_small, depth, _ = network_inputs(rgb, xyz, model.params.data, np.random.default_rng(0))
    network = model.network.eval()
    device = next(network.parameters()).device
    rgb_t = torch.from_numpy(rgb_small).permute(2, 0, 1).float().div(255.0).unsqueeze(0).to(device)
    depth_t = torch.from_numpy(depth).float().unsqueeze(0).unsqueeze(0).to(device)
    result = network(rgb_t, depth_t)
    full = F.interpolate(result.anomaly_map.unsqueeze(1), size=rgb.shape[:2], mode="bilinear",
                         align_corners=False)
    score = float(result.pred_score[0])
    return Prediction(score, score > model.threshold, model.threshold, full[0, 0].cpu().numpy())


def write_heatmap(rgb: np.ndarray, anomaly_map: np.ndarray, path: Path, alpha: float = 0.5) -> Path:
    """Overlay the anomaly map (0..1, jet) on the RGB image and save a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import colormaps
    from PIL import Image

    colored = colormaps["jet"](np.clip(anomaly_map, 0.0, 1.0))[..., :3]
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
) -> dict[str, Any]:
    """The ``bridgenet predict`` result as a JSON-able dict."""
    from bridgenet.data.readers import read_rgb, read_xyz

    for path in (rgb_path, xyz_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"input file {path} does not exist")
    rgb, xyz = read_rgb(Path(rgb_path)), read_xyz(Path(xyz_path))
    check_pair(rgb, xyz, str(rgb_path), str(xyz_path))
    model = resolve_model(model_ref, tracking_uri)
    prediction = predict_arrays(model, rgb, xyz)
    heatmap = str(write_heatmap(rgb, prediction.anomaly_map, Path(heatmap_path))) if heatmap_path else None
    return {
        "score": prediction.score,
        "anomalous": bool(prediction.anomalous),
        "threshold": prediction.threshold,
        "heatmap": heatmap,
        "category": model.category,
    }
