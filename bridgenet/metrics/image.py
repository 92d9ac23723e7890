"""Image-level metrics: AUROC, AP and F1-max of ``image_scores (N,)`` against ``labels (N,)``
(1 = anomalous), AUROC per defect type and per family, and ROC curve points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from bridgenet.metrics.inputs import as_binary, as_scores, undefined

GOOD = "good"  # the defect type of anomaly-free samples


def image_inputs(image_scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image_scores (N,)`` checked finite and ``labels (N,)`` as bool."""
    scores = as_scores(image_scores, "image_scores", ndim=1)
    return scores, as_binary(labels, "labels", scores.shape)


def image_auroc(image_scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``image_scores (N,)`` vs ``labels (N,)``; nan without both classes."""
    scores, y = image_inputs(image_scores, labels)
    if y.all() or not y.any():
        return undefined("image AUROC", f"{int(y.sum())} anomalous of {y.size} images")
    return float(roc_auc_score(y, scores))


def image_ap(image_scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision (sklearn's step definition); nan without an anomalous image."""
    scores, y = image_inputs(image_scores, labels)
    if not y.any():
        return undefined("image AP", f"no anomalous image among {y.size}")
    return float(average_precision_score(y, scores))


def image_f1_max(image_scores: np.ndarray, labels: np.ndarray) -> float:
    """Largest F1 over all thresholds ``score >= t``; nan without an anomalous image."""
    scores, y = image_inputs(image_scores, labels)
    if not y.any():
        return undefined("image F1-max", f"no anomalous image among {y.size}")
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
    scores = as_scores(image_scores, "image_scores", ndim=1)
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
    values = as_scores(arr, "scores", ndim=max(arr.ndim, 1)).reshape(-1)
    y = as_binary(labels, "labels", arr.shape).reshape(-1)
    neg, pos = np.sort(values[~y]), np.sort(values[y])
    if neg.size == 0 or pos.size == 0:
        undefined("ROC curve", f"{pos.size} anomalous and {neg.size} good values")
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
