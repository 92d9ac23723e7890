"""The served model's interface: its tensor signature, an input example, what it needs installed.

Passed to :func:`bridgenet.tracking.pyfunc.log_pyfunc_model` as a
:class:`~bridgenet.tracking.pyfunc.PyfuncSpec` by :func:`pyfunc_spec`.
"""

from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import numpy as np
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec
from PIL import Image

from bridgenet.config import DataConfig
from bridgenet.tracking.pyfunc import PyfuncSpec

LOGGER = logging.getLogger(__name__)
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# the bridgenet package itself travels in the model (code/bridgenet): it is not on PyPI, so a
# fresh environment built from the model's requirements could not import it otherwise
PACKAGE = Path(__file__).resolve().parents[1]
# Distributions needed to load and run the model (bridgenet itself is not on PyPI).
RUNTIME_DISTRIBUTIONS = (
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "numpy",
    "scipy",
    "open3d",
    "Pillow",
    "scikit-image",
    "scikit-learn",
    "pydantic",
    "PyYAML",
    "tifffile",
    "tqdm",
)


def model_signature() -> ModelSignature:
    """Named tensors out (-1 = any size); no input schema, on purpose: MLflow would cast a
    request to it (a float image to uint8 zeros) before the model's own checks could
    refuse it. The inputs are in :mod:`bridgenet.serving.pyfunc_model`'s docstring."""
    outputs = Schema(
        [
            TensorSpec(np.dtype(np.float32), (-1,), "score"),
            TensorSpec(np.dtype(np.float32), (-1, -1, -1), "anomaly_map"),
            TensorSpec(np.dtype(bool), (-1,), "anomalous"),
            TensorSpec(np.dtype(str), (-1,), "status"),
        ]
    )
    return ModelSignature(inputs=None, outputs=outputs)


def example_from_arrays(rgb: np.ndarray, xyz: np.ndarray, size: int = 64) -> dict[str, np.ndarray]:
    """A batch of one (1, size, size, 3): rgb resized bilinearly, xyz by nearest pixel (points stay real)."""
    if size < 8:
        raise ValueError(f"input example size must be at least 8 pixels, got {size}")
    height, width = rgb.shape[:2]
    rows = (np.arange(size) * height / size).astype(np.int64)
    cols = (np.arange(size) * width / size).astype(np.int64)
    small_rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.BILINEAR))
    small_xyz = xyz[rows[:, None], cols[None, :]]
    return {"rgb": small_rgb.astype(np.uint8)[None], "xyz": small_xyz.astype(np.float32)[None]}


def example_from_data(data_cfg: DataConfig, category: str, size: int = 64) -> dict[str, np.ndarray]:
    """Input example from ``category``'s first good validation sample (else its first sample)."""
    from bridgenet.data.readers import load_sample, scan_category

    folder = Path(data_cfg.root) / category
    samples, _ = scan_category(data_cfg, category)
    if not samples:
        raise FileNotFoundError(f"{folder}: no sample to build the model's input example from")
    preferred = [s for s in samples if s.split == "validation" and s.label == 0]
    sample = min(preferred or samples, key=lambda s: (s.split, s.defect, s.stem))
    rgb, xyz, _ = load_sample(sample)
    return example_from_arrays(rgb, xyz, size)


def pip_requirements() -> list[str]:
    """Pinned versions of :data:`RUNTIME_DISTRIBUTIONS` that are installed (skips inference)."""
    pins = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            LOGGER.debug("%s not installed; left out of the model's requirements", name)
    return pins


def pyfunc_spec(data_cfg: DataConfig, category: str) -> PyfuncSpec:
    """The served model of ``category``: :mod:`bridgenet.serving.pyfunc_model` with its signature,
    pinned requirements and an input example from the category's data."""
    return PyfuncSpec(PYFUNC_CODE, model_signature(), pip_requirements(),
                      example_from_data(data_cfg, category), code_paths=(PACKAGE,))
