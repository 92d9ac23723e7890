"""BridgeNet as an MLflow pyfunc model, logged from code (this file), never pickled.

:func:`bridgenet.tracking.pyfunc.log_pyfunc_model` logs this file (named by
:func:`bridgenet.serving.spec.pyfunc_spec`) as ``python_model`` with the artifact
``model`` = a ``model.pt``. MLflow runs the
file when the model is loaded; :func:`mlflow.models.set_model` names the
object it serves.

Input (named tensors): ``rgb`` uint8 (B, H, W, 3) and ``xyz`` float32
(B, H, W, 3) in metres, 0 where no point; called directly, one unbatched
sample (H, W, 3) is accepted as B = 1. Output: ``score`` float32 (B,),
``anomaly_map`` float32 (B, H, W), ``anomalous`` bool (B,) and ``status`` str
(B,): ``ok``, or ``no_object`` for a sample without an object that the model's
``predict.on_empty_foreground=anomalous`` flags (with ``error`` such a sample
is refused). Malformed or refused input raises ``MlflowException`` with
``INVALID_PARAMETER_VALUE`` (HTTP 400 from the scoring server).
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


def _invalid(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def parse_inputs(model_input: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate the request: returns rgb uint8 (B, H, W, 3) and xyz float32 (B, H, W, 3).

    Raises ``MlflowException(INVALID_PARAMETER_VALUE)`` naming the input and
    the expected vs found dtype/shape.
    """
    if not isinstance(model_input, Mapping):
        raise _invalid(
            f"expected named tensors {list(INPUT_NAMES)} (a dict of arrays), "
            f"got {type(model_input).__name__}"
        )
    missing = [name for name in INPUT_NAMES if name not in model_input]
    if missing:
        raise _invalid(
            f"missing input(s) {missing}; expected {list(INPUT_NAMES)}, "
            f"got {sorted(map(str, model_input))}"
        )
    rgb, xyz = np.asarray(model_input["rgb"]), np.asarray(model_input["xyz"])
    if rgb.ndim == 3 and xyz.ndim == 3:
        rgb, xyz = rgb[None], xyz[None]
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise _invalid(f"rgb: expected uint8 (B, H, W, 3), got {rgb.dtype} {rgb.shape}")
    if xyz.ndim != 4 or xyz.shape[-1] != 3 or not np.issubdtype(xyz.dtype, np.floating):
        raise _invalid(f"xyz: expected float32 (B, H, W, 3), got {xyz.dtype} {xyz.shape}")
    if rgb.shape != xyz.shape:
        raise _invalid(
            f"rgb {rgb.shape} and xyz {xyz.shape} must have the same (B, H, W, 3) shape: "
            "the point cloud is aligned with the image pixel for pixel"
        )
    if rgb.shape[0] == 0 or rgb.shape[1] == 0 or rgb.shape[2] == 0:
        raise _invalid(f"empty input: rgb shape {rgb.shape}")
    xyz = xyz.astype(np.float32, copy=False)
    if not np.isfinite(xyz).all():
        raise _invalid("xyz: holds NaN or Inf values")
    empty = np.flatnonzero(~(xyz[..., 2] != 0).reshape(len(xyz), -1).any(axis=1))
    if len(empty):
        raise _invalid(
            f"xyz: empty point cloud (no point with z != 0) in sample(s) {empty.tolist()}"
        )
    return rgb, xyz


class BridgeNetPyfunc(PythonModel):
    """Scores RGB + point-cloud samples with the ``model.pt`` artifact."""

    # The tensor signature given at logging time is the schema; MLflow's type-hint
    # based validation (which wraps predict and warns without hints) is not used.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from bridgenet.model.io import load_model

        self.model = load_model(Path(context.artifacts["model"]))

    # No type hints on predict: MLflow would read them as a (list-based) signature.
    def predict(self, context, model_input, params=None):
        """Score each sample of ``model_input`` (see the module docstring)."""
        from bridgenet.predict import predict_arrays

        rgb, xyz = parse_inputs(model_input)
        predictions = []
        for i in range(len(rgb)):
            try:
                predictions.append(predict_arrays(self.model, rgb[i], xyz[i]))
            except ValueError as exc:  # the sample itself is unusable (e.g. no object found)
                raise _invalid(f"sample {i}: {exc}") from exc
        return {
            "score": np.array([p.score for p in predictions], dtype=np.float32),
            "anomaly_map": np.stack([p.anomaly_map for p in predictions]).astype(np.float32),
            "anomalous": np.array([p.anomalous for p in predictions], dtype=bool),
            "status": np.array([p.status for p in predictions], dtype=str),
        }


set_model(BridgeNetPyfunc())
