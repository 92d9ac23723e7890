"""Logging a pyfunc model (from code) and fetching ``model.pt`` back from MLflow.

The logged model holds ``artifacts/model.pt`` (the weights, format
``bridgenet-model/1``), the code file that serves it (a :class:`PyfuncSpec` names it:
:mod:`bridgenet.serving.pyfunc_model`), a tensor signature, a small input example, pinned
requirements and the ``bridgenet`` package itself (``code/``): ``mlflow models serve`` loads
it in a fresh virtualenv built from those requirements (tests/tracking/test_server.py).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo

LOGGER = logging.getLogger(__name__)
MODEL_NAME = "model"
MODEL_ARTIFACT = "model"  # key in the pyfunc's artifacts
MODEL_FILE_IN_MODEL = "artifacts/model.pt"
_LOGGED_MODEL_ID = re.compile(r"m-[0-9a-f]{32}")
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?")
@dataclass(frozen=True)
class PyfuncSpec:
    """What a logged model is made of besides its weights: the code that serves it and its interface.

    ``input_example`` is a batch of named arrays; MLflow stores it with the model and
    checks that the model serves it.
    """

    code: Path
    signature: ModelSignature
    pip_requirements: list[str]
    input_example: dict[str, np.ndarray] | None = None
    code_paths: tuple[Path, ...] = ()  # packages copied into the model (its code/ folder)


def log_pyfunc_model(model_path: Path | str, spec: PyfuncSpec, name: str = MODEL_NAME) -> ModelInfo:
    """Log ``model_path`` as a models-from-code pyfunc (``spec``) in the active run; returns its ModelInfo."""
    from bridgenet import __version__

    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {model_path} does not exist")
    if mlflow.active_run() is None:
        raise RuntimeError("log_pyfunc_model needs an active MLflow run (mlflow.start_run)")
    # MLflow scores the input example to check it: not a prediction of the line, so not logged
    with _prediction_log_off():
        return _log_model(model_path, spec, name, __version__)


@contextmanager
def _prediction_log_off() -> Iterator[None]:
    from bridgenet.paths import NO_LOG_ENV

    before = os.environ.get(NO_LOG_ENV)
    os.environ[NO_LOG_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(NO_LOG_ENV, None)
        else:
            os.environ[NO_LOG_ENV] = before


def _log_model(model_path: Path, spec: PyfuncSpec, name: str, version: str) -> ModelInfo:
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=str(spec.code),
        artifacts={MODEL_ARTIFACT: str(model_path)},
        signature=spec.signature,
        input_example=spec.input_example,
        pip_requirements=spec.pip_requirements,
        code_paths=[str(p) for p in spec.code_paths] or None,
        metadata={"bridgenet_version": version, "model_format": "bridgenet-model/1"},
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


def registered_version(uri: str, tracking_uri: str | None = None) -> tuple[str, str] | None:
    """(name, version) of the registered model version that ``models:/NAME@ALIAS`` (the alias
    resolved now) or ``models:/NAME/VERSION`` names; None for any other URI. Errors name the URI."""
    match = _MODELS_URI.fullmatch(uri.rstrip("/"))
    if match is None or not uri.startswith("models:/"):
        return None
    name, alias, version = match.group("name", "alias", "version")
    if version is not None:
        return name, version
    if alias is None:  # models:/m-ID: a logged model, not a registered version
        return None
    tracking_uri = tracking_uri or mlflow.get_tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        return name, str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        raise FileNotFoundError(f"{uri}: no version of {name} has the alias {alias} in {tracking_uri} ({exc})") from exc


def download_model_file(
    uri: str, tracking_uri: str | None = None, dst_dir: Path | str | None = None
) -> Path:
    """Local path of the ``model.pt`` inside a logged pyfunc model.

    ``uri`` is ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``models:/m-ID``, ``runs:/RUN_ID/NAME`` (the logged model's name) or an artifact URI of the model
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
