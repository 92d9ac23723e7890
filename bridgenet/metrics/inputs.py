"""Input checks shared by the metrics: real finite scores, binary labels, valid options.

A non-finite score is a ``ValueError`` naming the sample index; an undefined metric is
``nan`` with a warning (:func:`undefined`), never a placeholder 0.
"""

from __future__ import annotations

import logging

import numpy as np

LOGGER = logging.getLogger(__name__)


def as_scores(scores: np.ndarray, name: str, ndim: int) -> np.ndarray:
    """Return ``scores`` as a real array of ``ndim`` dims; ValueError naming a non-finite sample."""
    arr = np.asarray(scores)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name}: expected real-valued scores, found dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, found shape {arr.shape}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~np.isfinite(arr)
        if bad.any():
            per_sample = bad.reshape(len(arr), -1).any(axis=1) if arr.ndim > 1 else bad
            i = int(np.flatnonzero(per_sample)[0])
            where = "" if arr.ndim == 1 else f" ({int(bad[i].sum())} pixels)"
            raise ValueError(
                f"{name}[{i}] contains a non-finite score (nan or inf){where}; "
                "expected finite anomaly scores"
            )
    return arr


def as_binary(values: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``values`` as a bool array of ``shape``; ValueError if not 0/1."""
    arr = np.asarray(values)
    if arr.shape != shape:
        raise ValueError(f"{name}: expected shape {shape}, found {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if not ((arr == 0) | (arr == 1)).all():
        found = np.unique(arr[(arr != 0) & (arr != 1)])[:5].tolist()
        raise ValueError(f"{name}: expected binary values 0/1, found also {found}")
    return arr.astype(bool)


def check_num_thresholds(num_thresholds: int | None) -> None:
    if num_thresholds is None:
        return
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)):
        raise TypeError(f"num_thresholds: expected an int >= 2 or None, found {num_thresholds!r}")
    if num_thresholds < 2:  # rank n_good - 1 (FPR 0) must be among the thresholds
        raise ValueError(f"num_thresholds: expected >= 2 or None, found {num_thresholds}")


def check_limit(limit: float) -> None:
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"limit: expected an FPR in (0, 1], found {limit}")


def undefined(metric: str, why: str) -> float:
    LOGGER.warning("%s is undefined (%s); returning nan", metric, why)
    return float("nan")
