"""Writing files so that no reader ever sees half of one, and JSON that strict readers accept.

Every file the project writes for another stage (cache entries, manifests, model and
checkpoint files, training summaries, evaluations, journals) goes through
:func:`atomic_path`: the content goes to a temporary file beside the target
(``.<name>.<random>.tmp``), is flushed to disk and then moved in place with
``os.replace``. A process killed part-way leaves the old file and a temporary file
that the next run of the same writer removes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; moved onto ``path`` when the block succeeds.

    On any error (or a kill) ``path`` keeps its old content and the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` through :func:`atomic_path`."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def json_safe(value: Any) -> Any:
    """A copy of ``value`` that ``json.dumps(..., allow_nan=False)`` accepts.

    Mappings and sequences (numpy arrays included) are copied recursively, numpy
    scalars become Python numbers, nan and infinities become ``None`` (JSON ``null``),
    paths and other objects their text.
    """
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) or value is None:
        return value
    return str(value)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """Write ``json_safe(value)`` to ``path`` atomically (nan as null), newline-terminated."""
    return write_text_atomic(path, json.dumps(json_safe(value), indent=indent, allow_nan=False) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (a model file's fingerprint); errors name the file."""
    digest = hashlib.sha256()
    try:
        with Path(path).open("rb") as handle:
            while block := handle.read(chunk):
                digest.update(block)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    return digest.hexdigest()
