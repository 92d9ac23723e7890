"""The line's own defects: the promotion gate's second test set, beside the standard test split.

The defects an operator confirmed (``bridgenet feedback``, cached by preprocessing as the
``line`` split) are its positives and the test split's goods its negatives: the confirmed
goods are trained on, so they never serve as test parts. The set is scored by the same
path as the test split (:func:`bridgenet.promote.evaluation_of_version`, hence
:func:`bridgenet.evaluate.evaluate_category`): image metrics over every part, pixel
metrics over the parts whose mask is known (undefined when no confirmed defect has one).

The gate (:func:`bridgenet.promote.decide`) compares challenger and champion there with its
tolerances; under ``promotion.line_defects: block`` a loss beyond one stops the promotion,
under ``report`` it is only reported. A first model (no champion) is never stopped by it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from bridgenet.config import Params
from bridgenet.data.cache import CachedSplit, cached_splits, join_splits, load_cached_split
from bridgenet.data.samples import LINE_SPLIT

if TYPE_CHECKING:
    from bridgenet.evaluate import CategoryEvaluation

RANKING = ("image_auroc", "image_ap", "pixel_auroc", "aupro_30")  # threshold-free, from the evaluation
REPORTED = (*RANKING, "recall_at_threshold")


def load_line_split(params: Params, category: str, test: CachedSplit) -> CachedSplit | None:
    """The test split's goods, then the category's confirmed line defects; None when there are none."""
    if LINE_SPLIT not in cached_splits(params.data.cache_dir, category):
        return None
    line = load_cached_split(params.data.cache_dir, category, LINE_SPLIT, params.data)
    goods = test.select(np.flatnonzero(test.labels == 0))
    return join_splits(goods, line, LINE_SPLIT)


def line_counts(split: CachedSplit) -> dict[str, int]:
    """Goods, confirmed defects and those of them with a mask, of a set made by :func:`load_line_split`."""
    defects = split.labels == 1
    return {"n_good": int((~defects).sum()), "n_defects": int(defects.sum()),
            "n_defects_with_mask": int((defects & split.known_masks()).sum())}


def line_numbers(evaluation: CategoryEvaluation) -> dict[str, Any]:
    """What the gate's report shows of one model on the line's defects (nan where undefined)."""
    at = evaluation.at_threshold()
    return {**{k: float(evaluation.metrics[k]) for k in RANKING}, "recall_at_threshold": float(at["recall"]),
            "found_at_threshold": f"{at['tp']} of {at['tp'] + at['fn']}", "per_defect": evaluation.per_defect}


def line_tags(report: Mapping[str, Any]) -> dict[str, str]:
    """Version tags of the line's numbers (``line.<metric>``, ``line.n_defects``) for the registry."""
    line = report.get("line_defects")
    if not line:
        return {}
    text = {k: "undefined" if v is None or math.isnan(v) else f"{v:.4f}"
            for k, v in line["challenger"].items() if k in REPORTED}
    return {**{f"line.{k}": v for k, v in text.items()}, "line.n_defects": str(line["n_defects"])}
