"""Evaluation metrics of the MVTec 3D-AD protocol: pure numpy, arrays in, numbers out.

Image level: AUROC, AP, F1-max of ``image_scores (N,)`` against ``labels (N,)``
(1 = anomalous). Pixel level: AUROC, AP and AU-PRO of ``anomaly_maps (N, H, W)``
against binary ``masks (N, H, W)``. Higher scores mean "more anomalous".

AU-PRO follows the MVTec 3D-AD evaluation code exactly:

* ground-truth regions are the 8-connected components of each mask, pooled over
  the whole test set (regions never connect across images);
* thresholds are the anomaly-free pixels' scores at ``num_thresholds`` evenly
  spaced ranks ``p = floor(linspace(0, n_good - 1, num_thresholds))`` of their
  ascending order; at rank ``p`` the FPR is ``1 - (p + 1) / n_good`` and a pixel
  is predicted anomalous when its score is strictly above the threshold;
* the PRO is the unweighted mean over regions of the fraction of the region's
  pixels predicted anomalous;
* the point (1, 1) is appended, the curve is integrated with the trapezoid rule
  up to the FPR ``limit`` (the PRO at the limit linearly interpolated between its
  neighbours) and the area is divided by ``limit``.

``num_thresholds=None`` evaluates every rank: the exact curve of that
definition (only the corners of the piecewise-linear curve are kept, which
leaves the area unchanged).

When a metric is undefined (no anomalous sample / pixel, or no good one) it is
``nan`` and a warning is logged; it is never a placeholder 0. A non-finite
score raises ``ValueError`` naming the sample index. A constant anomaly map is
not undefined: pixel AUROC is 0.5 and AU-PRO is 0 (no pixel is ever strictly
above a threshold), with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

LOGGER = logging.getLogger(__name__)

METRIC_KEYS: tuple[str, ...] = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "aupro_30",
    "aupro_1",
    "n_test",
    "n_anomalous",
)
DEFAULT_NUM_THRESHOLDS = 2000
GOOD = "good"
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


# ----------------------------------------------------------------------------- validation
def _as_scores(scores: np.ndarray, name: str, ndim: int) -> np.ndarray:
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


def _as_binary(values: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
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


def _check_num_thresholds(num_thresholds: int | None) -> None:
    if num_thresholds is None:
        return
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)):
        raise TypeError(f"num_thresholds: expected an int >= 2 or None, found {num_thresholds!r}")
    if num_thresholds < 2:  # rank n_good - 1 (FPR 0) must be among the thresholds
        raise ValueError(f"num_thresholds: expected >= 2 or None, found {num_thresholds}")


def _check_limit(limit: float) -> None:
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"limit: expected an FPR in (0, 1], found {limit}")


def _undefined(metric: str, why: str) -> float:
    LOGGER.warning("%s is undefined (%s); returning nan", metric, why)
    return float("nan")


# ----------------------------------------------------------------------------- image level
def _image_inputs(image_scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_scores(image_scores, "image_scores", ndim=1)
    return scores, _as_binary(labels, "labels", scores.shape)


def image_auroc(image_scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``image_scores (N,)`` vs ``labels (N,)``; nan without both classes."""
    scores, y = _image_inputs(image_scores, labels)
    if y.all() or not y.any():
        return _undefined("image AUROC", f"{int(y.sum())} anomalous of {y.size} images")
    return float(roc_auc_score(y, scores))


def image_ap(image_scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (sklearn's step definition); nan without an anomalous image."""
    scores, y = _image_inputs(image_scores, labels)
    if not y.any():
        return _undefined("image AP", f"no anomalous image among {y.size}")
    return float(average_precision_score(y, scores))


def image_f1_max(image_scores: np.ndarray, labels: np.ndarray) -> float:
    """Largest F1 over all thresholds ``score >= t``; nan without an anomalous image."""
    scores, y = _image_inputs(image_scores, labels)
    if not y.any():
        return _undefined("image F1-max", f"no anomalous image among {y.size}")
    precision, recall, _ = precision_recall_curve(y, scores)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def auroc_per_defect(image_scores: np.ndarray, defect_types: Sequence[str]) -> dict[str, float]:
    """Image AUROC of each defect type's samples against all ``"good"`` samples.

    Args:
        image_scores: (N,) image anomaly scores.
        defect_types: N names, ``"good"`` for anomaly-free samples.
    Returns:
        {defect_type: AUROC}, sorted by name; nan (with a warning) without good samples.
    """
    scores = _as_scores(image_scores, "image_scores", ndim=1)
    types = np.asarray(list(defect_types), dtype=object)
    if types.shape != scores.shape:
        raise ValueError(f"defect_types: expected {scores.size} names, found {types.size}")
    good = types == GOOD
    out: dict[str, float] = {}
    for defect in sorted(set(types.tolist()) - {GOOD}):
        keep = good | (types == defect)
        out[defect] = image_auroc(scores[keep], types[keep] == defect)
    return out


def auroc_per_family(
    image_scores: np.ndarray, defect_types: Sequence[str], families: Mapping[str, str]
) -> dict[str, float]:
    """Image AUROC of each defect family's samples against all ``"good"`` samples.

    Args:
        image_scores: (N,) image anomaly scores.
        defect_types: N names, ``"good"`` for anomaly-free samples.
        families: defect type -> family name (e.g. ``DEFECT_FAMILIES``).
    Returns:
        {family: AUROC} for the families present, sorted by name.
    """
    unknown = sorted({d for d in defect_types if d != GOOD and d not in families})
    if unknown:
        raise ValueError(
            f"families: no family for defect type(s) {unknown}; known: {sorted(families)}"
        )
    mapped = [GOOD if d == GOOD else families[d] for d in defect_types]
    return auroc_per_defect(image_scores, mapped)


# ----------------------------------------------------------------------------- pixel level
@dataclass(frozen=True)
class _PixelScores:
    """Scores of all test pixels split by ground truth, each part sorted ascending."""

    good: np.ndarray  # (n_good,) scores of mask == 0 pixels
    anomalous: np.ndarray  # (n_anomalous,) scores of mask == 1 pixels
    region_weight: np.ndarray | None  # (n_anomalous,) 1 / size of the pixel's region
    n_regions: int


def _split_pixels(anomaly_maps: np.ndarray, masks: np.ndarray, regions: bool) -> _PixelScores:
    """Validate maps (N, H, W) and masks, sort good and anomalous scores, label regions."""
    maps = _as_scores(anomaly_maps, "anomaly_maps", ndim=3)
    gt = _as_binary(masks, "masks", maps.shape)
    good = maps[~gt]
    good.sort()
    anomalous = maps[gt]
    weight, n_regions = None, 0
    if regions:
        region_id = np.empty(anomalous.size, dtype=np.int64)
        start = 0
        # one labelling call per image: regions are 8-connected and never span images
        for i in np.flatnonzero(gt.reshape(len(gt), -1).any(axis=1)):
            labelled, n = ndimage.label(gt[i], structure=_EIGHT_CONNECTED)
            ids = labelled[gt[i]]
            region_id[start : start + ids.size] = ids - 1 + n_regions
            start += ids.size
            n_regions += n
        weight = 1.0 / np.bincount(region_id, minlength=n_regions)[region_id]
    order = np.argsort(anomalous, kind="stable")
    anomalous = anomalous[order]
    if weight is not None:
        weight = weight[order]
    ends = [part[[0, -1]] for part in (good, anomalous) if part.size]
    if ends and np.ptp(np.concatenate(ends)) == 0:
        LOGGER.warning("every anomaly map value equals %s: the maps carry no signal", ends[0][0])
    return _PixelScores(good, anomalous, weight, n_regions)


def _pixel_auroc(px: _PixelScores) -> float:
    n_good, n_anom = px.good.size, px.anomalous.size
    if n_good == 0 or n_anom == 0:
        return _undefined("pixel AUROC", f"{n_anom} anomalous and {n_good} good pixels")
    # Mann-Whitney: each (anomalous, good) pair counts 1 if ordered right, 1/2 if tied
    below = np.searchsorted(px.good, px.anomalous, side="left").sum(dtype=np.int64)
    below_or_tied = np.searchsorted(px.good, px.anomalous, side="right").sum(dtype=np.int64)
    return float((below + below_or_tied) / 2 / n_good / n_anom)


def _pixel_ap(px: _PixelScores) -> float:
    n_good, n_anom = px.good.size, px.anomalous.size
    if n_anom == 0:
        return _undefined("pixel AP", f"no anomalous pixel among {n_good}")
    # recall only grows at the distinct anomalous scores v; AP = sum dRecall(v) * precision(v)
    a = px.anomalous
    starts = np.flatnonzero(np.concatenate(([True], a[1:] != a[:-1])))
    counts = np.diff(np.append(starts, n_anom))
    true_pos = n_anom - starts
    false_pos = n_good - np.searchsorted(px.good, a[starts], side="left")
    return float(np.sum(counts * (true_pos / (true_pos + false_pos))) / n_anom)


def _pro_curve(px: _PixelScores, num_thresholds: int | None) -> tuple[np.ndarray, np.ndarray]:
    n_good = px.good.size
    if n_good == 0 or px.n_regions == 0:
        _undefined("PRO curve", f"{px.n_regions} anomalous regions and {n_good} good pixels")
        return np.empty(0), np.empty(0)
    if num_thresholds is None:
        # the overlap only changes between ranks u - 1 and u where u = #good scores below
        # some anomalous pixel; between those corners the curve is a straight line
        corners = np.unique(np.searchsorted(px.good, px.anomalous, side="left"))
        ranks = np.concatenate(([0, n_good - 1], corners - 1, corners))
        ranks = np.unique(np.clip(ranks, 0, n_good - 1))
    else:
        ranks = np.unique(np.linspace(0, n_good - 1, num_thresholds).astype(np.int64))
    thresholds = px.good[ranks]
    # bin[x] = number of thresholds strictly below x: x is detected at threshold k iff k < bin[x]
    bins = np.searchsorted(thresholds, px.anomalous, side="left")
    mass = np.bincount(bins, weights=px.region_weight, minlength=ranks.size + 1)
    detected = np.cumsum(mass[::-1])[::-1][1:]  # detected[k] = sum of mass[j] for j > k
    pro = np.clip(detected / px.n_regions, 0.0, 1.0)
    fpr = 1.0 - (ranks + 1) / n_good
    return np.append(fpr[::-1], 1.0), np.append(pro[::-1], 1.0)


def normalised_area(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``y(x)`` on ``[0, limit]`` divided by ``limit``.

    ``x`` (K,) must increase strictly from 0 and reach ``limit``; ``y`` at ``limit``
    is linearly interpolated between its neighbours, as in MVTec's ``trapezoid``.
    """
    _check_limit(limit)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size == 0:
        return _undefined("area under curve", "empty curve")
    if x[0] != 0.0 or x[-1] < limit or np.any(np.diff(x) <= 0):
        raise ValueError(
            f"x: expected strictly increasing values from 0 to at least {limit}, "
            f"found range [{x[0]}, {x[-1]}]"
        )
    keep = x < limit
    xs = np.append(x[keep], limit)
    ys = np.append(y[keep], np.interp(limit, x, y))
    return float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs)) / 2 / limit)


def pixel_auroc(anomaly_maps: np.ndarray, masks: np.ndarray) -> float:
    """Exact pixel AUROC (ties count 1/2) of maps (N, H, W) vs binary masks (N, H, W)."""
    return _pixel_auroc(_split_pixels(anomaly_maps, masks, regions=False))


def pixel_ap(anomaly_maps: np.ndarray, masks: np.ndarray) -> float:
    """Exact pixel average precision (sklearn's definition) of maps (N, H, W) vs masks."""
    return _pixel_ap(_split_pixels(anomaly_maps, masks, regions=False))


def pro_curve_points(
    anomaly_maps: np.ndarray, masks: np.ndarray, num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """MVTec PRO curve of maps (N, H, W) vs masks (N, H, W).

    Returns:
        (fpr, pro), each (K,), fpr strictly increasing from 0 and ending with the
        point (1, 1); both empty (with a warning) if there is no anomalous region
        or no good pixel.
    """
    _check_num_thresholds(num_thresholds)
    return _pro_curve(_split_pixels(anomaly_maps, masks, regions=True), num_thresholds)


def aupro(
    anomaly_maps: np.ndarray,
    masks: np.ndarray,
    limit: float = 0.3,
    num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS,
) -> float:
    """Area under the MVTec PRO curve up to FPR ``limit``, divided by ``limit``.

    Args:
        anomaly_maps: (N, H, W) real anomaly scores.
        masks: (N, H, W) binary ground truth (1 = anomalous pixel).
        limit: FPR integration limit in (0, 1].
        num_thresholds: ranks sampled from the good pixels' scores; None = every rank.
    Returns:
        AU-PRO in [0, 1]; nan (with a warning) without an anomalous region or a good pixel.
    """
    _check_limit(limit)
    fpr, pro = pro_curve_points(anomaly_maps, masks, num_thresholds)
    return float("nan") if fpr.size == 0 else normalised_area(fpr, pro, limit)


def roc_curve_points(
    scores: np.ndarray, labels: np.ndarray, max_points: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (rule ``score >= t``) of scores vs binary labels of the same shape (N, ...).

    Works for image scores (N,) and for pixel maps (N, H, W) with masks.

    Args:
        max_points: None = every distinct score (exact curve); otherwise thresholds at
            about ``max_points`` evenly spaced ranks of the good and anomalous scores
            (for plotting millions of pixels).
    Returns:
        (fpr, tpr), each (K,), non-decreasing from (0, 0) to (1, 1); both empty (with a
        warning) without both classes.
    """
    arr = np.asarray(scores)
    values = _as_scores(arr, "scores", ndim=max(arr.ndim, 1)).reshape(-1)
    y = _as_binary(labels, "labels", arr.shape).reshape(-1)
    neg, pos = np.sort(values[~y]), np.sort(values[y])
    if neg.size == 0 or pos.size == 0:
        _undefined("ROC curve", f"{pos.size} anomalous and {neg.size} good values")
        return np.empty(0), np.empty(0)
    if max_points is None:
        thresholds = np.unique(np.concatenate((neg, pos)))
    else:
        if max_points < 4:
            raise ValueError(f"max_points: expected an int >= 4 or None, found {max_points}")
        picks = [np.linspace(0, s.size - 1, max_points // 2).astype(np.int64) for s in (neg, pos)]
        thresholds = np.unique(np.concatenate((neg[picks[0]], pos[picks[1]])))
    thresholds = thresholds[::-1]
    fpr = (neg.size - np.searchsorted(neg, thresholds, side="left")) / neg.size
    tpr = (pos.size - np.searchsorted(pos, thresholds, side="left")) / pos.size
    return np.append(0.0, fpr), np.append(0.0, tpr)


# ----------------------------------------------------------------------------- all at once
def compute_all(
    image_scores: np.ndarray,
    labels: np.ndarray,
    anomaly_maps: np.ndarray,
    masks: np.ndarray,
    num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS,
) -> dict[str, float | int]:
    """Every metric of one category, sorting the pixel scores once.

    Args:
        image_scores: (N,) image anomaly scores.
        labels: (N,) 1 = anomalous image.
        anomaly_maps: (N, H, W) pixel scores at the ground truth's resolution.
        masks: (N, H, W) binary ground truth; all zero for good images.
        num_thresholds: AU-PRO thresholds, None = exact curve.
    Returns:
        dict with exactly the keys of ``METRIC_KEYS`` (floats, nan where undefined;
        ``n_test`` and ``n_anomalous`` ints).
    """
    _check_num_thresholds(num_thresholds)
    scores, y = _image_inputs(image_scores, labels)
    n_maps = len(np.asarray(anomaly_maps))
    if n_maps != scores.size:
        raise ValueError(
            f"anomaly_maps: expected {scores.size} maps (one per score), found {n_maps}"
        )
    px = _split_pixels(anomaly_maps, masks, regions=True)
    gt_any = np.asarray(masks).reshape(scores.size, -1).any(axis=1)
    wrong = np.flatnonzero(gt_any & ~y)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(f"masks[{i}] has anomalous pixels but labels[{i}] is 0 (good)")
    empty = np.flatnonzero(~gt_any & y)
    if empty.size:
        LOGGER.warning("anomalous images %s have an empty mask", empty[:10].tolist())
    fpr, pro = _pro_curve(px, num_thresholds)
    aupro_at = {
        limit: float("nan") if fpr.size == 0 else normalised_area(fpr, pro, limit)
        for limit in (0.3, 0.01)
    }
    return {
        "image_auroc": image_auroc(scores, y),
        "image_ap": image_ap(scores, y),
        "image_f1_max": image_f1_max(scores, y),
        "pixel_auroc": _pixel_auroc(px),
        "pixel_ap": _pixel_ap(px),
        "aupro_30": aupro_at[0.3],
        "aupro_1": aupro_at[0.01],
        "n_test": int(scores.size),
        "n_anomalous": int(y.sum()),
    }
