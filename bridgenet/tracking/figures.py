"""Figures logged with a training run: training curves and a preview of the generated anomalies.

Drawn on matplotlib's Agg canvas through the object API (no global backend).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bridgenet.config import Params

LOSS_KEYS = ("loss", "bce_image", "bce_feature", "bce_projected", "focal")
VALIDATION_KEYS = ("val_score", "val_image_auroc", "val_pixel_auroc")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=100)
    return path


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [
        (r["epoch"], r[key])
        for r in history
        if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    if not points:
        return np.zeros(0), np.zeros(0)
    epochs, values = zip(*points)
    return np.asarray(epochs, dtype=float), np.asarray(values, dtype=float)


def training_curves_png(
    history: Sequence[Mapping[str, Any]], path: Path, title: str, best_epoch: int | None = None
) -> Path:
    """Losses (left) and validation scores (right) per epoch; the selected epoch is marked.

    ``history`` is the training summary's list of per-epoch records
    (``epoch``, ``loss``..., ``val_score``...). An empty history (0 epochs)
    gives panels that say so.
    """
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    for ax, keys, label in (
        (left, LOSS_KEYS, "training loss"),
        (right, VALIDATION_KEYS, "validation"),
    ):
        drawn = 0
        for key in keys:
            epochs, values = _series(history, key)
            if len(epochs):
                ax.plot(epochs, values, marker="o", markersize=3, label=key)
                drawn += 1
        if best_epoch is not None and best_epoch >= 0 and drawn:
            ax.axvline(
                best_epoch,
                color="grey",
                linestyle="--",
                linewidth=1,
                label=f"selected epoch {best_epoch}",
            )
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no epoch trained", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize="medium")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def anomaly_preview_png(params: Params, category: str, path: Path, n: int = 3) -> Path | None:
    """Validation samples with the synthetic texture anomalies training selects on (fixed seed).

    Rows: clean rgb, perturbed rgb, perturbed depth, anomaly mask. Returns
    None when the validation set holds no synthetic anomaly
    (``train.validation_anomalies_per_good = 0``).
    """
    from bridgenet.preprocess import load_cached_split
    from bridgenet.train import build_validation_set

    split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    validation = build_validation_set(split, params, params.model.modalities)
    goods = len(split)
    anomalous = np.flatnonzero(validation.labels[goods:] == 1)[:n] + goods
    if len(anomalous) == 0:
        return None
    batch = validation.batch
    fig = Figure(figsize=(2.4 * len(anomalous), 2.4 * 4))
    axes = fig.subplots(4, len(anomalous), squeeze=False)
    for col, index in enumerate(anomalous):
        clean = (index - goods) % goods
        panels = (
            ("clean rgb", batch.rgb[clean].permute(1, 2, 0).numpy(), None),
            ("perturbed rgb", batch.rgb[index].permute(1, 2, 0).clamp(0, 1).numpy(), None),
            ("perturbed depth", batch.depth[index, 0].numpy(), "gray"),
            ("anomaly mask", validation.masks[index].astype(float), "gray"),
        )
        for row, (label, image, cmap) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize="small")
    fig.suptitle(
        f"{category}: generated anomalies (validation, seed {params.train.validation_seed})"
    )
    fig.tight_layout()
    return _save(fig, path)
