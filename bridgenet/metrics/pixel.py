"""Pixel-level metrics: AUROC, AP and AU-PRO of ``anomaly_maps (N, H, W)`` against binary
``masks (N, H, W)``, from the pixel scores sorted once (:func:`split_pixels`).

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
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bridgenet.metrics.inputs import (
    as_binary,
    as_scores,
    check_limit,
    check_num_thresholds,
    undefined,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_NUM_THRESHOLDS = 2000
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


@dataclass(frozen=True)
class PixelScores:
    """Scores of all test pixels split by ground truth, each part sorted ascending."""

    good: np.ndarray  # (n_good,) scores of mask == 0 pixels
    anomalous: np.ndarray  # (n_anomalous,) scores of mask == 1 pixels
    region_weight: np.ndarray | None  # (n_anomalous,) 1 / size of the pixel's region
    n_regions: int


def split_pixels(anomaly_maps: np.ndarray, masks: np.ndarray, regions: bool) -> PixelScores:
    """Validate maps (N, H, W) and masks, sort good and anomalous scores, label regions."""
    maps = as_scores(anomaly_maps, "anomaly_maps", ndim=3)
    gt = as_binary(masks, "masks", maps.shape)
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
    return PixelScores(good, anomalous, weight, n_regions)


def pixel_auroc_of(px: PixelScores) -> float:
    """Pixel AUROC of scores already split and sorted by :func:`split_pixels`."""
    n_good, n_anom = px.good.size, px.anomalous.size
    if n_good == 0 or n_anom == 0:
        return undefined("pixel AUROC", f"{n_anom} anomalous and {n_good} good pixels")
    # Mann-Whitney: each (anomalous, good) pair counts 1 if ordered right, 1/2 if tied
    below = np.searchsorted(px.good, px.anomalous, side="left").sum(dtype=np.int64)
    below_or_tied = np.searchsorted(px.good, px.anomalous, side="right").sum(dtype=np.int64)
    return float((below + below_or_tied) / 2 / n_good / n_anom)


def pixel_ap_of(px: PixelScores) -> float:
    """Pixel AP of scores already split and sorted by :func:`split_pixels`."""
    n_good, n_anom = px.good.size, px.anomalous.size
    if n_anom == 0:
        return undefined("pixel AP", f"no anomalous pixel among {n_good}")
    # recall only grows at the distinct anomalous scores v; AP = sum dRecall(v) * precision(v)
    a = px.anomalous
    starts = np.flatnonzero(np.concatenate(([True], a[1:] != a[:-1])))
    counts = np.diff(np.append(starts, n_anom))
    true_pos = n_anom - starts
    false_pos = n_good - np.searchsorted(px.good, a[starts], side="left")
    return float(np.sum(counts * (true_pos / (true_pos + false_pos))) / n_anom)


def pro_curve_of(px: PixelScores, num_thresholds: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro) of scores split by :func:`split_pixels` with regions (see :func:`pro_curve_points`)."""
    n_good = px.good.size
    if n_good == 0 or px.n_regions == 0:
        undefined("PRO curve", f"{px.n_regions} anomalous regions and {n_good} good pixels")
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
    check_limit(limit)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size == 0:
        return undefined("area under curve", "empty curve")
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
    return pixel_auroc_of(split_pixels(anomaly_maps, masks, regions=False))


def pixel_ap(anomaly_maps: np.ndarray, masks: np.ndarray) -> float:
    """Exact pixel average precision (sklearn's definition) of maps (N, H, W) vs masks."""
    return pixel_ap_of(split_pixels(anomaly_maps, masks, regions=False))


def pro_curve_points(
    anomaly_maps: np.ndarray, masks: np.ndarray, num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS
) -> tuple[np.ndarray, np.ndarray]:
    """MVTec PRO curve of maps (N, H, W) vs masks (N, H, W).

    Returns:
        (fpr, pro), each (K,), fpr strictly increasing from 0 and ending with the
        point (1, 1); both empty (with a warning) if there is no anomalous region
        or no good pixel.
    """
    check_num_thresholds(num_thresholds)
    return pro_curve_of(split_pixels(anomaly_maps, masks, regions=True), num_thresholds)


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
    check_limit(limit)
    fpr, pro = pro_curve_points(anomaly_maps, masks, num_thresholds)
    return float("nan") if fpr.size == 0 else normalised_area(fpr, pro, limit)
