"""Logging BridgeNet as a pyfunc model (from code) and fetching ``model.pt`` back from MLflow.

The logged model holds ``artifacts/model.pt`` (the weights, format
``bridgenet-model/1``), the code file :mod:`bridgenet.tracking.pyfunc_model`,
a tensor signature and a small input example. Loading it needs the
``bridgenet`` package installed (``--env-manager local`` or the project image).
"""

from __future__ import annotations

import logging
import re
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import Schema, TensorSpec
from PIL import Image

from bridgenet.config import DataConfig

LOGGER = logging.getLogger(__name__)
MODEL_NAME = "model"
MODEL_ARTIFACT = "model"  # key in the pyfunc's artifacts
MODEL_FILE_IN_MODEL = "artifacts/model.pt"
_LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?")
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
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
)


def model_signature() -> ModelSignature:
    """Named tensors in and out (-1 = any size): see :mod:`bridgenet.tracking.pyfunc_model`."""
    inputs = Schema(
        [
            TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3), "rgb"),
            TensorSpec(np.dtype(np.float32), (-1, -1, -1, 3), "xyz"),
        ]
    )
    outputs = Schema(
        [
            TensorSpec(np.dtype(np.float32), (-1,), "score"),
            TensorSpec(np.dtype(np.float32), (-1, -1, -1), "anomaly_map"),
            TensorSpec(np.dtype(bool), (-1,), "anomalous"),
            TensorSpec(np.dtype(str), (-1,), "status"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


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
    from bridgenet.data.readers import load_sample, scan_mvtec_category

    folder = Path(data_cfg.root) / category
    if data_cfg.format == "eyecandies":
        from bridgenet.data.eyecandies import scan_eyecandies_category

        samples, _ = scan_eyecandies_category(folder, category, data_cfg.eyecandies_rgb)
    else:
        samples, _ = scan_mvtec_category(folder, category)
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


def log_pyfunc_model(
    model_path: Path | str,
    input_example: dict[str, np.ndarray] | None = None,
    name: str = MODEL_NAME,
) -> ModelInfo:
    """Log ``model_path`` as a models-from-code pyfunc in the active run; returns its ModelInfo.

    ``input_example`` is a batch such as :func:`example_from_arrays` returns;
    MLflow stores it with the model and checks that the model serves it.
    """
    from bridgenet import __version__

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {model_path} does not exist")
    if mlflow.active_run() is None:
        raise RuntimeError("log_pyfunc_model needs an active MLflow run (mlflow.start_run)")
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(PYFUNC_CODE),
        artifacts={MODEL_ARTIFACT: str(model_path)},
        signature=model_signature(),
        input_example=input_example,
        pip_requirements=pip_requirements(),
        metadata={"bridgenet_version": __version__, "model_format": "bridgenet-model/1"},
    )


def model_location(uri: str, tracking_uri: str) -> str:
    """Artifact location of the model a ``models:/`` URI names, looked up in ``tracking_uri``.

    The registry is always ``tracking_uri`` (MLflow's global registry URI may
    point elsewhere). Accepts ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``
    and ``models:/m-ID``; other URIs are returned unchanged.
    """
    match = _MODELS_URI.fullmatch(uri.rstrip("/"))
    if not uri.startswith("models:/"):
        return uri.rstrip("/")
    if match is None:
        raise ValueError(
            f"model URI {uri!r}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-ID"
        )
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    name, alias, version = match.group("name", "alias", "version")
    if alias is None and version is None:
        if not _LOGGED_MODEL_ID.fullmatch(name):
            raise ValueError(
                f"model URI {uri!r}: name a version (NAME/VERSION) or an alias (NAME@ALIAS)"
            )
        return client.get_logged_model(name).artifact_location.rstrip("/")
    if alias is not None:
        version = client.get_model_version_by_alias(name, alias).version
    return client.get_model_version_download_uri(name, str(version)).rstrip("/")


def download_model_file(
    uri: str, tracking_uri: str | None = None, dst_dir: Path | str | None = None
) -> Path:
    """Local path of the ``model.pt`` inside a logged pyfunc model.

    ``uri`` is ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``models:/m-ID``, ``runs:/RUN_ID/model`` or an artifact URI of the model
    folder; ``tracking_uri`` (default: MLflow's current one) serves as the
    registry too. Local stores give the stored file itself, remote ones a
    download under ``dst_dir`` (default: a temporary folder). Errors name the URI.
    """
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        location = model_location(uri, tracking_uri)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/{MODEL_FILE_IN_MODEL}",
            tracking_uri=tracking_uri,
            dst_path=None if dst_dir is None else str(dst_dir),
        )
    except (MlflowException, OSError) as exc:
        raise FileNotFoundError(
            f"could not fetch the model file of {uri} from tracking URI {tracking_uri}: {exc}"
        ) from exc
    path = Path(local)
    if not path.is_file():
        raise FileNotFoundError(f"{uri}: {MODEL_FILE_IN_MODEL} is not a file in the logged model")
    return path
