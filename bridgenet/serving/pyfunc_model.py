"""BridgeNet as an MLflow pyfunc model, logged from code (this file), never pickled.

:func:`bridgenet.tracking.pyfunc.log_pyfunc_model` logs this file (named by
:func:`bridgenet.serving.spec.pyfunc_spec`) as ``python_model`` with the artifact
``model`` = a ``model.pt``. MLflow runs the
file when the model is loaded; :func:`mlflow.models.set_model` names the
object it serves.

Input: the named tensors ``rgb`` uint8 (B, H, W, 3) and ``xyz`` float32
(B, H, W, 3) in metres, 0 where no point; or the files themselves, ``rgb_png``
and ``xyz_tiff``: one base64 string per sample (a request then costs about its
files' size). One unbatched sample (H, W, 3) is accepted as B = 1. The model
is logged without an input schema, so that MLflow passes the request's own
dtypes through (a schema would cast a float image to uint8 zeros before any
check); :func:`parse_inputs` validates dtype, range, shape and finiteness. Output: ``score`` float32 (B,),
``anomaly_map`` float32 (B, H, W), ``anomalous`` bool (B,) and ``status`` str
(B,): ``ok``, or ``no_object`` for a sample without an object that the model's
``predict.on_empty_foreground=anomalous`` flags (with ``error`` such a sample
is refused). Malformed or refused input raises ``MlflowException`` with
``INVALID_PARAMETER_VALUE`` (HTTP 400 from the scoring server).

Each served sample gets a record in the prediction log, the model's ``monitor.log`` (one
transaction per request; a refused request or sample gets one record saying why), with the
sha256 of its files (``rgb_png``, ``xyz_tiff``) or of its arrays' bytes (uint8 rgb, float32
xyz); a log that cannot be written costs a warning, never a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

INPUT_NAMES = ("rgb", "xyz")
ENCODED_NAMES = ("rgb_png", "xyz_tiff")


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def _decoded(values: Any, name: str) -> tuple[np.ndarray, list[str]]:
    """Base64 files (one string per sample) -> stacked arrays (B, H, W, 3), as the readers give them,
    and each file's sha256 (for the prediction log: the bytes are decoded once)."""
    import base64
    import binascii
    import io
    import struct

    from bridgenet.monitor.records import bytes_digest

    texts = [values] if isinstance(values, str | bytes) else list(np.asarray(values, dtype=object).ravel())
    arrays, digests = [], []
    for i, text in enumerate(texts):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise _invalid(f"{name}[{i}]: not base64 ({exc})") from None
        digests.append(bytes_digest(raw))
        try:
            if name == "rgb_png":
                from PIL import Image

                with Image.open(io.BytesIO(raw)) as image:
                    if image.format != "PNG":
                        raise ValueError(f"a {image.format} image, expected PNG")
                    array = np.asarray(image.convert("RGB") if image.mode != "RGB" else image)
            else:
                import tifffile

                array = tifffile.imread(io.BytesIO(raw))
        except MlflowException:
            raise
        except (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, struct.error) as exc:
            # what PIL and tifffile raise on foreign or truncated bytes
            raise _invalid(f"{name}[{i}]: cannot be decoded ({type(exc).__name__}: {exc})") from None
        arrays.append(array)
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise _invalid(f"{name}: samples of one request must share their size, got {sorted(shapes)}")
    return np.stack(arrays), digests


def _named_inputs(model_input: Mapping) -> tuple[np.ndarray, np.ndarray, tuple[str, str], list[tuple[str, str]] | None]:
    """The request's rgb and xyz, from tensors (``rgb``, ``xyz``) or files (``rgb_png``, ``xyz_tiff``);
    the files' sha256 per sample (None for tensors)."""
    tensors = [n for n in INPUT_NAMES if n in model_input]
    encoded = [n for n in ENCODED_NAMES if n in model_input]
    if len(tensors) == 2 and not encoded:
        return np.asarray(model_input["rgb"]), np.asarray(model_input["xyz"]), INPUT_NAMES, None
    if len(encoded) == 2 and not tensors:
        rgb, rgb_sums = _decoded(model_input["rgb_png"], "rgb_png")
        xyz, xyz_sums = _decoded(model_input["xyz_tiff"], "xyz_tiff")
        return rgb, xyz, ENCODED_NAMES, list(zip(rgb_sums, xyz_sums))
    raise _invalid(
        f"expected either the tensors {list(INPUT_NAMES)} or the base64 files {list(ENCODED_NAMES)}, "
        f"got {sorted(map(str, model_input))}"
    )


def parse_inputs(model_input: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate the request before any conversion: returns rgb uint8 (B, H, W, 3) and xyz float32
    (B, H, W, 3) (:func:`parse_request`, without the files' digests)."""
    return parse_request(model_input)[:2]


def parse_request(model_input: Any) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]] | None]:
    """Validate the request before any conversion: returns rgb uint8 (B, H, W, 3), xyz float32
    (B, H, W, 3), and the sha256 of each sample's files where it sent files (None for tensors).

    ``rgb`` must hold integers in 0..255 (JSON gives them as int64: accepted and
    converted only when every value fits); a float image (say in [0, 1]) is refused,
    never cast. ``xyz`` must be finite real numbers. Raises
    ``MlflowException(INVALID_PARAMETER_VALUE)`` naming the field and the expected
    vs found dtype, shape or values.
    """
    if not isinstance(model_input, Mapping):
        raise _invalid(
            f"expected named inputs {list(INPUT_NAMES)} or {list(ENCODED_NAMES)} (a dict), "
            f"got {type(model_input).__name__}"
        )
    rgb, xyz, (rgb_name, xyz_name), files = _named_inputs(model_input)
    if rgb.ndim == 3 and xyz.ndim == 3:
        rgb, xyz = rgb[None], xyz[None]
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise _invalid(f"{rgb_name}: expected shape (B, H, W, 3), got {rgb.shape}")
    if rgb.dtype != np.uint8:
        if not np.issubdtype(rgb.dtype, np.integer):
            raise _invalid(f"{rgb_name}: expected uint8 values 0..255, got dtype {rgb.dtype} (an image "
                           "scaled to [0, 1] or a float image is not cast: send its 8-bit values)")
        if rgb.size and (rgb.min() < 0 or rgb.max() > 255):
            raise _invalid(f"{rgb_name}: expected uint8 values 0..255, got values from {rgb.min()} to {rgb.max()}")
        rgb = rgb.astype(np.uint8)
    if xyz.ndim != 4 or xyz.shape[-1] != 3:
        raise _invalid(f"{xyz_name}: expected shape (B, H, W, 3), got {xyz.shape}")
    if not (np.issubdtype(xyz.dtype, np.floating) or np.issubdtype(xyz.dtype, np.integer)):
        raise _invalid(f"{xyz_name}: expected float32 coordinates in metres, got dtype {xyz.dtype}")
    if rgb.shape != xyz.shape:
        raise _invalid(
            f"{rgb_name} {rgb.shape} and {xyz_name} {xyz.shape} must have the same (B, H, W, 3) shape: "
            "the point cloud is aligned with the image pixel for pixel"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0 or rgb.shape[2] == 0:
        raise _invalid(f"empty input: {rgb_name} shape {rgb.shape}")
    if not np.isfinite(xyz).all():
        raise _invalid(f"{xyz_name}: holds NaN or Inf values")
    xyz = xyz.astype(np.float32, copy=False)
    empty = np.flatnonzero(~(xyz[..., 2] != 0).reshape(len(xyz), -1).any(axis=1))
    if len(empty):
        raise _invalid(
            f"{xyz_name}: empty point cloud (no point with z != 0) in sample(s) {empty.tolist()}"
        )
    return rgb, xyz, files


class BridgeNetPyfunc(PythonModel):
    """Scores RGB + point-cloud samples with the ``model.pt`` artifact."""

    # The tensor signature given at logging time is the schema; MLflow's type-hint
    # based validation (which wraps predict and warns without hints) is not used.
    _skip_type_hint_validation = True
    log: Path | None = None  # the prediction log (monitor.log); None: off
    origin: Any = None  # the ModelOrigin of the served file

    def load_context(self, context: Any) -> None:
        import torch

        from bridgenet import paths
        from bridgenet.model.io import load_model
        from bridgenet.monitor.records import ModelOrigin, file_digest
        from bridgenet.predict import compile_backbone

        self.model = load_model(Path(context.artifacts["model"]))
        # the registered name and version are not known to the served files: the digest says which
        self.origin = ModelOrigin(None, None, file_digest(context.artifacts["model"]))
        self.log = paths.prediction_log(self.model.params)
        threads = self.model.params.predict.serve_threads
        compile_backbone(self.model, self.model.params.predict.compile_backbone)  # a server runs long: it pays
        if threads:  # one process per worker: its own cap (predict.serve_threads)
            torch.set_num_threads(threads)

    # No type hints on predict: MLflow would read them as a (list-based) signature.
    def predict(self, context, model_input, params=None):
        """Score each sample of ``model_input`` (see the module docstring)."""
        from bridgenet.predict import predict_arrays

        try:
            rgb, xyz, files = parse_request(model_input)
        except MlflowException as exc:
            self._write([((None, None), exc)])
            raise
        digests = sample_digests(rgb, xyz, files) if self.log is not None else [(None, None)] * len(rgb)
        predictions = []
        for i in range(len(rgb)):
            try:
                predictions.append(predict_arrays(self.model, rgb[i], xyz[i]))
            except ValueError as exc:  # the sample itself is unusable (e.g. no object found)
                self._write([(digests[i], exc)])
                raise _invalid(f"sample {i}: {exc}") from exc
        self._write(list(zip(digests, predictions)))
        return {
            "score": np.array([p.score for p in predictions], dtype=np.float32),
            "anomaly_map": np.stack([p.anomaly_map for p in predictions]).astype(np.float32),
            "anomalous": np.array([p.anomalous for p in predictions], dtype=bool),
            "status": np.array([p.status for p in predictions], dtype=str),
        }

    def _write(self, outcomes: list[tuple[tuple[str | None, str | None], Any]]) -> None:
        """Log each (digests, prediction or refusal) in one transaction, where the log is on."""
        if self.log is None:
            return
        from bridgenet.monitor.records import ModelOrigin, write_records
        from bridgenet.predict import log_record

        origin = self.origin or ModelOrigin(None, None, None)
        write_records(self.log, [log_record(self.model, origin, d, "serve", o) for d, o in outcomes])


def sample_digests(rgb: np.ndarray, xyz: np.ndarray, files: list[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """sha256 of each sample's files (``files``, as :func:`parse_request` hashed the decoded base64
    bytes), or of its arrays' bytes (as :func:`parse_request` returns them) for tensor requests."""
    from bridgenet.monitor.records import array_digest

    return files if files is not None else [(array_digest(r), array_digest(x)) for r, x in zip(rgb, xyz)]


set_model(BridgeNetPyfunc())
