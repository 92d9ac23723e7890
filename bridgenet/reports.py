"""Report writers: metrics.json / metrics.md, curve CSVs and PNG figures.

Functions take numbers, numpy arrays and paths; nothing is fitted on the data
(colour ranges are fixed arguments). Figures are drawn with matplotlib's Agg
canvas through the object API, so no global backend is switched.

``metrics.json`` layout::

    {"categories": {CAT: {<the 9 METRIC_KEYS>}, ...},
     "mean": {<the 9 METRIC_KEYS, mean over categories>},
     "details": {CAT: {"per_defect": {...}, ...}, ...}}   # only if extras are given

Undefined metrics (nan) are written as JSON ``null`` and shown as ``n/a``; a mean
over categories is nan (null) when any category's value is.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bridgenet.files import json_safe, write_json
from bridgenet.metrics import GOOD, METRIC_KEYS

LOGGER = logging.getLogger(__name__)

CurveSet = Mapping[str, tuple[np.ndarray, np.ndarray]]


def _as_float(value: Any) -> float:
    """A metric value as float; None (undefined, as read back from JSON) becomes nan."""
    return float("nan") if value is None else float(value)


def _check_categories(per_category: Mapping[str, Mapping[str, float]]) -> None:
    if not per_category:
        raise ValueError("per_category: expected at least one category, found none")
    for cat, values in per_category.items():
        missing = [k for k in METRIC_KEYS if k not in values]
        extra = sorted(set(values) - set(METRIC_KEYS))
        if missing or extra:
            raise ValueError(
                f"per_category[{cat!r}]: expected exactly the keys {list(METRIC_KEYS)}; "
                f"missing {missing}, unexpected {extra} (pass extra blocks as extras)"
            )


def metrics_document(
    per_category: Mapping[str, Mapping[str, float]],
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the metrics.json content (nan kept as nan).

    Args:
        per_category: {category: compute_all(...) result}.
        extras: optional {category: {block name: JSON-able block}}, e.g.
            ``{"bagel": {"per_defect": {"crack": 0.9}}}``; stored under "details".
    """
    _check_categories(per_category)
    cats = sorted(per_category)
    mean = {k: float(np.mean([_as_float(per_category[c][k]) for c in cats])) for k in METRIC_KEYS}
    undefined = [k for k, v in mean.items() if math.isnan(v)]
    if undefined:
        LOGGER.warning("mean of %s is nan: undefined in at least one category", undefined)
    doc: dict[str, Any] = {
        "categories": {c: {k: per_category[c][k] for k in METRIC_KEYS} for c in cats},
        "mean": mean,
    }
    if extras:
        unknown = sorted(set(extras) - set(cats))
        if unknown:
            raise ValueError(f"extras: categories {unknown} have no metrics; known {cats}")
        doc["details"] = {c: dict(extras[c]) for c in sorted(extras)}
    return doc


def write_metrics_json(
    path: str | Path,
    per_category: Mapping[str, Mapping[str, float]],
    extras: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write metrics.json (nan as null) and return the document written."""
    doc = json_safe(metrics_document(per_category, extras))
    write_json(path, doc)
    return doc


def _cell(key: str, value: float | None) -> str:
    value = _as_float(value)
    if math.isnan(value):
        return "n/a"
    if key.startswith("n_"):
        return f"{value:g}" if value != int(value) else str(int(value))
    return f"{value:.4f}"


def write_metrics_markdown(
    path: str | Path, per_category: Mapping[str, Mapping[str, float]]
) -> None:
    """Write a markdown table: one row per category plus a mean row, one column per metric."""
    doc = metrics_document(per_category)
    lines = [
        "| category | " + " | ".join(METRIC_KEYS) + " |",
        "|---|" + "---:|" * len(METRIC_KEYS),
    ]
    rows = [*doc["categories"].items(), ("**mean**", doc["mean"])]
    for name, values in rows:
        lines.append(f"| {name} | " + " | ".join(_cell(k, values[k]) for k in METRIC_KEYS) + " |")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_curves_csv(path: str | Path, curves: CurveSet, y_name: str) -> None:
    """Write curves as a tidy CSV with columns ``category, fpr, <y_name>``.

    Args:
        curves: {category: (fpr (K,), y (K,))}, e.g. from ``roc_curve_points``
            (``y_name="tpr"``) or ``pro_curve_points`` (``y_name="pro"``).
    """
    if y_name in ("category", "fpr") or not y_name.isidentifier():
        raise ValueError(f"y_name: expected a column name such as 'tpr' or 'pro', found {y_name!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["category", "fpr", y_name])
        for cat in sorted(curves):
            x, y = (np.asarray(a, dtype=np.float64).reshape(-1) for a in curves[cat])
            if x.shape != y.shape:
                raise ValueError(f"curves[{cat!r}]: fpr has {x.size} points, {y_name} {y.size}")
            writer.writerows((cat, repr(float(a)), repr(float(b))) for a, b in zip(x, y))


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Render ``fig`` on an Agg canvas (no global backend) and write it as a PNG at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path


def plot_curves(
    path: str | Path, curves: CurveSet, y_name: str, title: str, limit: float | None = None
) -> None:
    """Plot one line per category; ``limit`` draws the FPR integration limit. Skips empty curves."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    for cat in sorted(curves):
        x, y = curves[cat]
        if len(x) == 0:
            LOGGER.warning("%s: curve of %r is empty (undefined), not drawn", title, cat)
            continue
        ax.plot(x, y, label=cat, linewidth=1.2)
    if limit is not None:
        ax.axvline(limit, color="grey", linestyle="--", linewidth=0.8, label=f"FPR {limit:g}")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="FPR", ylabel=y_name.upper(), title=title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def select_heatmap_samples(
    image_scores: np.ndarray, labels: np.ndarray, n_per_group: int
) -> list[tuple[int, str]]:
    """Pick the rows of a heatmap sheet.

    Returns:
        [(index, role)]: the ``n_per_group`` best-scored anomalous samples
        ("best anomalous"), the ``n_per_group`` worst-scored ones ("worst anomalous";
        no sample twice) and the highest-scored good one ("top good"), in that order.
    """
    if n_per_group < 1:
        raise ValueError(f"n_per_group: expected >= 1, found {n_per_group}")
    scores = np.asarray(image_scores, dtype=np.float64)
    y = np.asarray(labels).astype(bool)
    if scores.shape != y.shape or scores.ndim != 1:
        raise ValueError(f"image_scores {scores.shape} and labels {y.shape}: expected equal (N,)")
    anomalous = np.flatnonzero(y)
    by_score = anomalous[np.argsort(-scores[anomalous], kind="stable")]
    best = by_score[:n_per_group].tolist()
    worst = [i for i in by_score[::-1][:n_per_group].tolist() if i not in best][::-1]
    rows = [(i, "best anomalous") for i in best] + [(i, "worst anomalous") for i in worst]
    good = np.flatnonzero(~y)
    if good.size:
        rows.append((int(good[np.argmax(scores[good])]), "top good"))
    return [(int(i), role) for i, role in rows]


def write_heatmap_sheet(
    path: str | Path,
    rgb: np.ndarray,
    depth: np.ndarray,
    masks: np.ndarray,
    anomaly_maps: np.ndarray,
    row_titles: Sequence[str],
    vmin: float = 0.0,
    vmax: float = 1.0,
    alpha: float = 0.5,
    depth_range: tuple[float, float] = (0.0, 1.0),
) -> None:
    """Write a sheet of K rows x 4 columns: rgb, depth, ground truth, map over rgb.

    Args:
        rgb: (K, H, W, 3) uint8 or float in [0, 1].
        depth: (K, H, W) or (K, H, W, C) (channel 0 shown), grey scale over ``depth_range``.
        masks: (K, H, W) binary ground truth.
        anomaly_maps: (K, H, W) scores, jet colour map fixed to [vmin, vmax], drawn with ``alpha``.
        row_titles: K labels, e.g. "best anomalous #3 (score 0.93)".
    """
    rgb, depth = np.asarray(rgb), np.asarray(depth)
    masks, maps = np.asarray(masks), np.asarray(anomaly_maps)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"rgb: expected (K, H, W, 3), found {rgb.shape}")
    k, h, w = rgb.shape[:3]
    if depth.ndim == 4:
        depth = depth[..., 0]
    for name, arr in (("depth", depth), ("masks", masks), ("anomaly_maps", maps)):
        if arr.shape != (k, h, w):
            raise ValueError(f"{name}: expected shape {(k, h, w)} to match rgb, found {arr.shape}")
    if len(row_titles) != k:
        raise ValueError(f"row_titles: expected {k} titles, found {len(row_titles)}")
    if not vmin < vmax:
        raise ValueError(f"vmin, vmax: expected vmin < vmax, found {vmin}, {vmax}")
    fig = Figure(figsize=(4 * 2.4, max(k, 1) * 2.5))
    axes = fig.subplots(max(k, 1), 4, squeeze=False)
    heads = ("rgb", "depth", "ground truth", "anomaly map")
    for r in range(k):
        row = axes[r]
        row[0].imshow(rgb[r])
        row[1].imshow(depth[r], cmap="gray", vmin=depth_range[0], vmax=depth_range[1])
        row[2].imshow(masks[r], cmap="gray", vmin=0, vmax=1)
        row[3].imshow(rgb[r])
        image = row[3].imshow(maps[r], cmap="jet", vmin=vmin, vmax=vmax, alpha=alpha)
        row[0].set_ylabel(row_titles[r], fontsize="small")
        for c, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize="small")
        fig.colorbar(image, ax=row[3], fraction=0.046, pad=0.02)
    fig.tight_layout()
    save_figure(fig, path)


def write_defect_auroc_bar(path: str | Path, aurocs: Mapping[str, float], title: str) -> None:
    """Bar chart of image AUROC per defect type (or family); nan bars are marked "n/a"."""
    names = sorted(k for k in aurocs if k != GOOD)
    values = np.array([float(aurocs[k]) for k in names], dtype=np.float64)
    fig = Figure(figsize=(max(4.0, 0.8 * len(names) + 1.5), 3.8))
    ax = fig.add_subplot()
    positions = np.arange(len(names))
    defined = ~np.isnan(values)
    ax.bar(positions[defined], values[defined], color="tab:blue")
    for x, v in zip(positions, values):
        label, height = ("n/a", 0.0) if np.isnan(v) else (f"{v:.3f}", v)
        ax.text(x, height + 0.01, label, ha="center", va="bottom", fontsize="small")
    ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xticks(positions, names, rotation=30, ha="right")
    ax.set(xlim=(-0.6, len(names) - 0.4), ylim=(0, 1.1), ylabel="image AUROC", title=title)
    fig.tight_layout()
    save_figure(fig, path)


LOSS_KEYS = ("loss", "bce_image", "bce_feature", "bce_projected", "focal")
VALIDATION_KEYS = ("val_score", "val_image_auroc", "val_pixel_auroc")


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


def write_training_curves(
    path: str | Path, history: Sequence[Mapping[str, Any]], title: str, best_epoch: int | None = None
) -> Path:
    """Losses (left) and validation scores (right) per epoch; the selected epoch is marked.

    ``history`` is the training summary's list of per-epoch records
    (``epoch``, ``loss``..., ``val_score``...). An empty history (0 epochs)
    gives panels that say so.
    """
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    for ax, keys, label in ((left, LOSS_KEYS, "training loss"), (right, VALIDATION_KEYS, "validation")):
        drawn = 0
        for key in keys:
            epochs, values = _series(history, key)
            if len(epochs):
                ax.plot(epochs, values, marker="o", markersize=3, label=key)
                drawn += 1
        if best_epoch is not None and best_epoch >= 0 and drawn:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1,
                       label=f"selected epoch {best_epoch}")
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no epoch trained", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize="medium")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def write_anomaly_preview(
    path: str | Path,
    clean_rgb: np.ndarray,
    rgb: np.ndarray,
    depth: np.ndarray,
    masks: np.ndarray,
    title: str,
) -> Path:
    """Columns of generated anomalies; rows clean rgb, perturbed rgb, perturbed depth, anomaly mask.

    ``clean_rgb`` and ``rgb`` (K, H, W, 3) in [0, 1], ``depth`` and ``masks`` (K, H, W).
    """
    k = len(rgb)
    if not (len(clean_rgb) == len(depth) == len(masks) == k) or k == 0:
        raise ValueError(f"expected K >= 1 columns in every array, found {len(clean_rgb)}, {k}, "
                         f"{len(depth)}, {len(masks)}")
    fig = Figure(figsize=(2.4 * k, 2.4 * 4))
    axes = fig.subplots(4, k, squeeze=False)
    for col in range(k):
        panels = (
            ("clean rgb", clean_rgb[col], None),
            ("perturbed rgb", np.clip(rgb[col], 0, 1), None),
            ("perturbed depth", depth[col], "gray"),
            ("anomaly mask", masks[col].astype(float), "gray"),
        )
        for row, (label, image, cmap) in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(image, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(label, fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)
