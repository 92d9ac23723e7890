"""Evaluation metrics of the MVTec 3D-AD protocol: pure numpy, arrays in, numbers out.

Image level: AUROC, AP, F1-max of ``image_scores (N,)`` against ``labels (N,)``
(1 = anomalous). Pixel level: AUROC, AP and AU-PRO of ``anomaly_maps (N, H, W)``
against binary ``masks (N, H, W)``. Higher scores mean "more anomalous".
AU-PRO follows the MVTec 3D-AD evaluation code exactly (:mod:`bridgenet.metrics.pixel`).

When a metric is undefined (no anomalous sample / pixel, or no good one) it is
``nan`` and a warning is logged; it is never a placeholder 0. A non-finite
score raises ``ValueError`` naming the sample index. A constant anomaly map is
not undefined: pixel AUROC is 0.5 and AU-PRO is 0 (no pixel is ever strictly
above a threshold), with a warning.

:mod:`~bridgenet.metrics.image` and :mod:`~bridgenet.metrics.pixel` hold the two levels,
:mod:`~bridgenet.metrics.inputs` the checks they share; this module, :func:`compute_all`
(every metric of one category, the pixel scores sorted once) and :data:`METRIC_KEYS`.
"""

from __future__ import annotations

import logging

import numpy as np

from bridgenet.metrics.image import (
    GOOD,
    auroc_per_defect,
    auroc_per_family,
    image_ap,
    image_auroc,
    image_f1_max,
    image_inputs,
    roc_curve_points,
)
from bridgenet.metrics.inputs import check_num_thresholds
from bridgenet.metrics.pixel import (
    DEFAULT_NUM_THRESHOLDS,
    aupro,
    normalised_area,
    pixel_ap,
    pixel_ap_of,
    pixel_auroc,
    pixel_auroc_of,
    pro_curve_of,
    pro_curve_points,
    split_pixels,
)

__all__ = [
    "DEFAULT_NUM_THRESHOLDS",
    "GOOD",
    "METRIC_KEYS",
    "aupro",
    "auroc_per_defect",
    "auroc_per_family",
    "compute_all",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "normalised_area",
    "pixel_ap",
    "pixel_auroc",
    "pro_curve_points",
    "roc_curve_points",
]

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


def compute_all(
    image_scores: np.ndarray,
    labels: np.ndarray,
    anomaly_maps: np.ndarray,
    masks: np.ndarray,
    num_thresholds: int | None = DEFAULT_NUM_THRESHOLDS,
    masked: np.ndarray | None = None,
) -> dict[str, float | int]:
    """Every metric of one category, sorting the pixel scores once.

    Args:
        image_scores: (N,) image anomaly scores.
        labels: (N,) 1 = anomalous image.
        anomaly_maps: (N, H, W) pixel scores at the ground truth's resolution.
        masks: (N, H, W) binary ground truth; all zero for good images.
        num_thresholds: AU-PRO thresholds, None = exact curve.
        masked: (N,) bool, the images whose mask is known; the pixel metrics read only
            these (an anomalous image without a known mask counts at image level only).
            None: all.
    Returns:
        dict with exactly the keys of ``METRIC_KEYS`` (floats, nan where undefined;
        ``n_test`` and ``n_anomalous`` ints).
    """
    check_num_thresholds(num_thresholds)
    scores, y = image_inputs(image_scores, labels)
    n_maps = len(np.asarray(anomaly_maps))
    if n_maps != scores.size:
        raise ValueError(
            f"anomaly_maps: expected {scores.size} maps (one per score), found {n_maps}"
        )
    known = np.ones(scores.size, bool) if masked is None else np.asarray(masked, bool)
    if known.shape != (scores.size,):
        raise ValueError(f"masked: expected shape ({scores.size},), found {known.shape}")
    px = split_pixels(np.asarray(anomaly_maps)[known], np.asarray(masks)[known], regions=True)
    gt_any = np.asarray(masks).reshape(scores.size, -1).any(axis=1)
    wrong = np.flatnonzero(gt_any & ~y)
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(f"masks[{i}] has anomalous pixels but labels[{i}] is 0 (good)")
    empty = np.flatnonzero(~gt_any & y & known)
    if empty.size:
        LOGGER.warning("anomalous images %s have an empty mask", empty[:10].tolist())
    fpr, pro = pro_curve_of(px, num_thresholds)
    aupro_at = {
        limit: float("nan") if fpr.size == 0 else normalised_area(fpr, pro, limit)
        for limit in (0.3, 0.01)
    }
    return {
        "image_auroc": image_auroc(scores, y),
        "image_ap": image_ap(scores, y),
        "image_f1_max": image_f1_max(scores, y),
        "pixel_auroc": pixel_auroc_of(px),
        "pixel_ap": pixel_ap_of(px),
        "aupro_30": aupro_at[0.3],
        "aupro_1": aupro_at[0.01],
        "n_test": int(scores.size),
        "n_anomalous": int(y.sum()),
    }
