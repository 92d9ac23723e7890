"""Drift statistics: a window of production records against the model's validation goods.

Pure functions, arrays in, numbers out (no I/O). Five checks, each against a limit of
``monitor.*`` (:class:`bridgenet.config.MonitorConfig`):

- **flagged rate**: the share of the window's ok records with verdict ``defect``, against
  what the model's threshold promises on good parts, ``1 - train.threshold_quantile`` (the
  threshold is that quantile of the validation goods' scores). Crossed when the rate is
  above ``max_flag_rate_ratio`` times the promise. The line's own defect rate counts in
  the flagged rate: the ratio must leave room for it.
- **score distribution**: the window's scores against the validation goods' scores (the
  reference), by a two-sample Kolmogorov-Smirnov test (crossed below ``ks_pvalue``) and by
  the population stability index (crossed above ``psi_limit``, :func:`psi`).
- **no_object rate**: the share of the window's records without an object (part missing,
  sensor failure), crossed above ``max_no_object_rate``.
- **brightness**: the parts' median brightness (:func:`part_brightness`, logged with each ok
  record) against the validation goods', crossed when it moved by more than
  ``max_brightness_shift`` of the reference's (lighting, exposure, a dirty lens). It reads the
  input, not the model: a change the scores barely show (the model is meant to be robust to
  it) is still seen.
- **missing points**: the median share of the part's pixels without a measured 3D point
  (:func:`bridgenet.data.depth.missing_share`, logged with each ok record) against the
  validation goods', crossed when it rose by more than ``max_missing_points_increase`` (a
  share of the part: 0.03 is 3 % of its pixels). The network never sees the dropouts (the
  depth's holes are filled from their neighbours), so a dusty lens, stray light or a failing
  projector would otherwise go unnoticed until the depth half of the model is blind.

Fewer than ``min_samples`` ok records is "not enough data", never "ok"; only the no_object
rate may still be judged then (a line where every part is missing is not quiet).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bridgenet.config import MonitorConfig

OK, DRIFT, NOT_ENOUGH_DATA = "ok", "drift", "not_enough_data"
PSI_FLOOR = 1e-4  # a bin's share below this counts as this (an empty bin would make PSI infinite)


@dataclass(frozen=True)
class Window:
    """The records a monitoring pass reads: ok records' ``scores`` (N,) and ``flagged`` (N,) bool,
    the counts of no_object and error records in the same stretch of the log, and the
    ``brightness`` (M,) and ``missing`` points (K,) of the ok records that carry them (M, K <= N;
    logs written before they were recorded carry none)."""

    scores: np.ndarray
    flagged: np.ndarray
    no_object: int = 0
    errors: int = 0
    brightness: np.ndarray = field(default_factory=lambda: np.zeros(0))
    missing: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        scores, flagged = np.asarray(self.scores, dtype=np.float64), np.asarray(self.flagged, dtype=bool)
        if scores.shape != flagged.shape or scores.ndim != 1:
            raise ValueError(f"Window: scores {scores.shape} and flagged {flagged.shape} must be two (N,) arrays")
        if not np.isfinite(scores).all():
            raise ValueError("Window: scores hold NaN or Inf")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "flagged", flagged)
        for name in ("brightness", "missing"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if values.ndim != 1 or values.size > scores.size or not np.isfinite(values).all():
                raise ValueError(f"Window: {name} {values.shape} must be finite, (M,) with M <= {scores.size}")
            object.__setattr__(self, name, values)


def part_brightness(rgb: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Mean brightness in [0, 1] of each sample's part: network-size rgb uint8 (N, S, S, 3) and
    foreground bool (N, S, S) -> (N,); a sample without foreground is averaged over its whole input."""
    rgb, foreground = np.asarray(rgb), np.asarray(foreground, dtype=bool)
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8 or foreground.shape != rgb.shape[:3]:
        raise ValueError(f"part_brightness: rgb uint8 (N, S, S, 3) and foreground (N, S, S) expected, "
                         f"got {rgb.dtype} {rgb.shape} and {foreground.shape}")
    grey = rgb.mean(axis=-1, dtype=np.float64) / 255.0
    weights = np.where(foreground.any(axis=(1, 2), keepdims=True), foreground, True)
    return (grey * weights).sum(axis=(1, 2)) / weights.sum(axis=(1, 2))


@dataclass(frozen=True)
class Assessment:
    """A pass's verdict (``status``: ok, drift or not_enough_data), the limits crossed and the numbers."""

    status: str
    crossed: tuple[str, ...]
    numbers: dict[str, Any] = field(default_factory=dict)


def quantile_edges(reference: np.ndarray, bins: int, min_per_bin: int) -> np.ndarray:
    """Inner bin edges (B - 1,): quantiles of ``reference`` splitting it into B equal shares.

    B is ``bins``, fewer for a small reference (at least ``min_per_bin`` scores per bin),
    at least 2; tied quantiles merge. The outer bins reach to -inf and +inf.
    """
    reference = np.asarray(reference, dtype=np.float64)
    if reference.ndim != 1 or reference.size < 2:
        raise ValueError(f"quantile_edges: need at least 2 reference scores, got shape {reference.shape}")
    count = max(2, min(bins, reference.size // max(1, min_per_bin)))
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, count + 1)[1:-1]))


def bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each of the ``len(edges) + 1`` bins (a value on an edge goes above it)."""
    index = np.searchsorted(edges, np.asarray(values, dtype=np.float64), side="right")
    return np.bincount(index, minlength=edges.size + 1) / max(1, index.size)


def psi(reference: np.ndarray, observed: np.ndarray, edges: np.ndarray) -> float:
    """Population stability index of ``observed`` against ``reference`` over the bins of ``edges``:

        PSI = sum_i (o_i - r_i) * ln(o_i / r_i)

    with ``r_i`` and ``o_i`` the shares of the reference's and of the observed values in
    bin i, each floored at :data:`PSI_FLOOR`. 0 for equal shares; by convention below 0.1
    is stable, 0.1-0.25 a moderate and above 0.25 a major shift.
    """
    r = np.maximum(bin_shares(reference, edges), PSI_FLOOR)
    o = np.maximum(bin_shares(observed, edges), PSI_FLOOR)
    return float(np.sum((o - r) * np.log(o / r)))


def flag_rate_ratio(flag_rate: float, expected: float) -> float:
    """``flag_rate / expected``; with nothing expected (quantile 1), inf for any flag and 0 for none."""
    if expected > 0:
        return flag_rate / expected
    return math.inf if flag_rate > 0 else 0.0


def brightness_shift(observed: np.ndarray, reference: np.ndarray) -> float:
    """Relative change of the median brightness: ``median(observed) / median(reference) - 1``
    (-0.15: the parts look 15 % darker than the validation goods)."""
    base = float(np.median(reference))
    if base <= 0:
        return math.inf if float(np.median(observed)) > 0 else 0.0
    return float(np.median(observed)) / base - 1.0


def assess(window: Window, reference: np.ndarray, threshold_quantile: float, cfg: MonitorConfig,
           reference_brightness: np.ndarray | None = None, reference_missing: np.ndarray | None = None) -> Assessment:
    """Judge ``window`` against ``reference`` (the model's validation goods' scores, (R,)) and the limits
    of ``cfg``; ``threshold_quantile`` is the model's own (its promise on good parts is ``1 - it``).
    ``reference_brightness``: the validation goods' :func:`part_brightness`, ``reference_missing``
    their missing points (:func:`bridgenet.data.depth.missing_share`); None: that check is not judged."""
    from scipy.stats import ks_2samp  # here: predict imports this module for part_brightness alone

    reference = np.asarray(reference, dtype=np.float64)
    ref_light = np.zeros(0) if reference_brightness is None else np.asarray(reference_brightness, np.float64)
    ref_missing = np.zeros(0) if reference_missing is None else np.asarray(reference_missing, np.float64)
    n_ok = int(window.scores.size)
    n_records = n_ok + window.no_object
    expected = 1.0 - threshold_quantile
    numbers: dict[str, Any] = {
        "n_ok": n_ok, "n_no_object": window.no_object, "n_error": window.errors,
        "n_reference": int(reference.size), "expected_flag_rate": expected,
        "flag_rate_limit": cfg.max_flag_rate_ratio * expected,
        "no_object_rate": window.no_object / n_records if n_records else None,
        "flag_rate": None, "flag_rate_ratio": None, "psi": None, "psi_bins": None,
        "ks_statistic": None, "ks_pvalue": None, "score_median": None,
        "reference_median": float(np.median(reference)) if reference.size else None,
        "n_brightness": int(window.brightness.size), "brightness_median": None, "brightness_shift": None,
        "brightness_ks_pvalue": None,
        "reference_brightness_median": float(np.median(ref_light)) if ref_light.size else None,
        "n_missing_points": int(window.missing.size), "missing_points_median": None,
        "missing_points_increase": None, "missing_points_ks_pvalue": None,
        "reference_missing_points_median": float(np.median(ref_missing)) if ref_missing.size else None,
    }
    crossed: list[str] = []
    if n_records >= cfg.min_samples and numbers["no_object_rate"] > cfg.max_no_object_rate:
        crossed.append("no_object_rate")
    if n_ok:
        flag_rate = float(window.flagged.mean())
        edges = quantile_edges(reference, cfg.psi_bins, cfg.psi_min_per_bin)
        ks = ks_2samp(window.scores, reference)
        numbers.update(flag_rate=flag_rate, flag_rate_ratio=flag_rate_ratio(flag_rate, expected),
                       psi=psi(reference, window.scores, edges), psi_bins=int(edges.size + 1),
                       ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue),
                       score_median=float(np.median(window.scores)))
    if window.brightness.size and ref_light.size:
        numbers.update(brightness_median=float(np.median(window.brightness)),
                       brightness_shift=brightness_shift(window.brightness, ref_light),
                       brightness_ks_pvalue=float(ks_2samp(window.brightness, ref_light).pvalue))
    if window.missing.size and ref_missing.size:
        median = float(np.median(window.missing))
        numbers.update(missing_points_median=median,
                       missing_points_increase=median - numbers["reference_missing_points_median"],
                       missing_points_ks_pvalue=float(ks_2samp(window.missing, ref_missing).pvalue))
    if n_ok >= cfg.min_samples:
        if numbers["flag_rate"] > numbers["flag_rate_limit"]:
            crossed.append("flag_rate")
        if numbers["psi"] > cfg.psi_limit:
            crossed.append("psi")
        if numbers["ks_pvalue"] < cfg.ks_pvalue:
            crossed.append("ks_pvalue")
    if (window.brightness.size >= cfg.min_samples and numbers["brightness_shift"] is not None
            and abs(numbers["brightness_shift"]) > cfg.max_brightness_shift):
        crossed.append("brightness")
    if (window.missing.size >= cfg.min_samples and numbers["missing_points_increase"] is not None
            and numbers["missing_points_increase"] > cfg.max_missing_points_increase):
        crossed.append("missing_points")
    if crossed:
        status = DRIFT
    else:
        status = OK if n_ok >= cfg.min_samples else NOT_ENOUGH_DATA
    return Assessment(status, tuple(crossed), numbers)


def limits(cfg: MonitorConfig) -> dict[str, float | int]:
    """The limits a pass judges by, as logged with it."""
    keys = ("window", "window_hours", "min_samples", "max_flag_rate_ratio", "psi_limit", "psi_bins",
            "psi_min_per_bin", "ks_pvalue", "max_no_object_rate", "max_brightness_shift",
            "max_missing_points_increase")
    return {key: getattr(cfg, key) for key in keys}
