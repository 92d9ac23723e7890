"""What a prediction's log record is made of, and writing records without ever failing a prediction.

:func:`write_records` is what ``bridgenet predict`` and the served model call: a log that
cannot be written (unwritable folder, a file that is not a database, a lock held past the
busy timeout) costs a warning naming the path and the error, once per log and process
(later failures at debug level), and the prediction goes on.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bridgenet.monitor.log import PredictionRecord, append, utc_now
from bridgenet.paths import MLFLOW_SCHEMES

if TYPE_CHECKING:
    from bridgenet.model.contract import TrainedModel

LOGGER = logging.getLogger(__name__)
_WARNED: set[str] = set()  # logs this process has warned about


@dataclass(frozen=True)
class ModelOrigin:
    """Which model scored: its registered ``name`` and ``version`` (None for a model file) and
    the sha256 of its file."""

    name: str | None
    version: str | None
    digest: str | None


def load_with_origin(ref: str | Path, tracking_uri: str | None = None, graph: bool = False,
                     digest: bool = True) -> tuple[TrainedModel, ModelOrigin]:
    """A model file path or an MLflow URI (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/ID/<prefix>-<category>``) loaded (``graph``: :func:`bridgenet.model.io.load_model`), and
    which model it is: ``models:/NAME@ALIAS`` is pinned to the version the alias names now, so that
    the records name the version that scored; ``digest``: the file's sha256 (else None)."""
    from bridgenet.model.io import load_model

    text, name, version = str(ref), None, None
    if text.startswith(MLFLOW_SCHEMES):
        from bridgenet.tracking.pyfunc import download_model_file, registered_version

        registered = registered_version(text, tracking_uri)
        if registered is not None:
            name, version = registered
            text = f"models:/{name}/{version}"
        path = download_model_file(text, tracking_uri)
    else:
        path = Path(text)
    return load_model(path, graph=graph), ModelOrigin(name, version, file_digest(path) if digest else None)


def local_model_file(ref: str | Path, tracking_uri: str | None = None) -> Path:
    """The local ``model.pt`` that ``ref`` names: a model file as it is (it must exist), or an MLflow
    URI's file (:func:`bridgenet.tracking.pyfunc.download_model_file`; MLflow is imported only then)."""
    if str(ref).startswith(MLFLOW_SCHEMES):
        from bridgenet.tracking.pyfunc import download_model_file

        return download_model_file(str(ref), tracking_uri)
    path = Path(ref)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    return path


def file_digest(path: str | Path) -> str | None:
    """sha256 of a file's bytes; None for a file that cannot be read (the record says why)."""
    try:
        with Path(path).open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def array_digest(array: np.ndarray) -> str:
    """sha256 of an array's bytes in C order (a served tensor: after its dtype check, uint8 or float32)."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def prediction_record(category: str, threshold: float, origin: ModelOrigin, digests: tuple[str | None, str | None],
                      source: str, status: str, score: float | None = None, anomalous: bool | None = None,
                      message: str | None = None, brightness: float | None = None,
                      missing_points: float | None = None) -> PredictionRecord:
    """One log record, stamped now; ``anomalous`` None (nothing decided) leaves the verdict empty."""
    verdict = None if anomalous is None else ("defect" if anomalous else "good")
    return PredictionRecord(
        time=utc_now(), category=category, model=origin.name, version=origin.version,
        model_digest=origin.digest, rgb_digest=digests[0], xyz_digest=digests[1],
        score=None if score is None else float(score), verdict=verdict, status=status, message=message,
        threshold=float(threshold), source=source, brightness=None if brightness is None else float(brightness),
        missing_points=None if missing_points is None else float(missing_points),
    )


def write_records(path: str | Path | None, records: Sequence[PredictionRecord]) -> bool:
    """Append ``records`` to the log at ``path`` (None: logging is off); False, with a warning
    the first time for this log, if it could not be written."""
    if path is None or not records:
        return True
    try:
        append(path, records)
    except (sqlite3.Error, OSError) as exc:
        key = str(Path(path).resolve())
        level = logging.DEBUG if key in _WARNED else logging.WARNING
        _WARNED.add(key)
        LOGGER.log(level, "prediction log %s cannot be written (%s: %s); %d record(s) not logged, predictions "
                   "go on (monitor.log; further failures of this log at debug level)",
                   path, type(exc).__name__, exc, len(records))
        return False
    return True
