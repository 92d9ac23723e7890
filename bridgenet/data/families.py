"""The synthetic data's defect types and the family each belongs to.

A family says which modality a defect shows in: ``geometric`` (the depth only),
``appearance`` (the colour only) or ``both``. Evaluation reports image AUROC per
family (:func:`bridgenet.evaluate.defect_families`), so this table lives apart
from the renderer (:mod:`bridgenet.data.synth`): reading it loads neither open3d
nor any other rendering dependency.
"""

from __future__ import annotations

FAMILIES = ("geometric", "appearance", "both")

DEFAULT_DEFECTS: dict[str, str] = {
    "dent": "geometric",
    "bump": "geometric",
    "stain": "appearance",
    "color": "appearance",
    "contamination": "both",
}
HARD_DEFECTS: dict[str, str] = {
    "faint_stain": "appearance",
    "discoloration": "appearance",
    "micro_bump": "geometric",
    "micro_dent": "geometric",
    "scratch": "both",
    "rim_chip": "both",
}
PRESETS: dict[str, dict[str, str]] = {"default": DEFAULT_DEFECTS, "hard": HARD_DEFECTS}
DEFECT_FAMILIES: dict[str, str] = {**DEFAULT_DEFECTS, **HARD_DEFECTS}  # every preset's types
