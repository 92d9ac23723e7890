"""Prediction pictures: the anomaly map over the image (heatmap) and the predicted mask, as PNGs.

Plain arguments in (arrays, numbers, paths), so that folder predict can draw them in
worker processes (:mod:`bridgenet.batch_predict`). The heatmap is drawn by matplotlib on a
figure of its own (no pyplot state: safe beside other threads) with a fixed layout, and
saved with zlib level 1: ``constrained`` layout and the default level 6 were two thirds
of the ~0.3 s a picture cost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

PNG_COMPRESS_LEVEL = 1  # pictures are written once per scored sample: speed over size
FIGURE_WIDTH_IN, DPI = 6.4, 100
TITLE_IN = 0.6  # the band above the picture that holds the (two-line) title
BAR_IN, GAP_IN, LABELS_IN = 0.25, 0.12, 0.75  # colour bar, its gap and its labels, right of the picture


def write_mask(mask: np.ndarray, path: Path) -> Path:
    """The predicted mask as a black-and-white PNG (255 where anomalous), the input's size."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, compress_level=PNG_COMPRESS_LEVEL)
    return path


def write_heatmap(rgb: np.ndarray, anomaly_map: np.ndarray, path: Path, value_range: tuple[float, float] = (0.0, 1.0),
                  pixel_threshold: float | None = None, title: str | None = None, alpha: float = 0.5) -> Path:
    """The anomaly map (H, W) over the RGB image (H, W, 3), with a colour bar over ``value_range``,
    the ``pixel_threshold`` as a contour (and a mark on the bar) and ``title``; a PNG 640 px wide."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    low, high = value_range
    height, width = anomaly_map.shape
    picture_w = FIGURE_WIDTH_IN - BAR_IN - GAP_IN - LABELS_IN - 0.1
    picture_h = picture_w * height / width
    fig_w, fig_h = FIGURE_WIDTH_IN, picture_h + TITLE_IN + 0.1
    fig = Figure(figsize=(fig_w, fig_h), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.05 / fig_w, 0.05 / fig_h, picture_w / fig_w, picture_h / fig_h))
    bar_ax = fig.add_axes(((0.05 + picture_w + GAP_IN) / fig_w, 0.05 / fig_h, BAR_IN / fig_w, picture_h / fig_h))
    ax.imshow(rgb)
    shown = ax.imshow(anomaly_map, cmap="inferno", vmin=low, vmax=high, alpha=alpha, interpolation="bilinear")
    bar = fig.colorbar(shown, cax=bar_ax, label="anomaly score")
    if pixel_threshold is not None:
        if anomaly_map.max() > pixel_threshold > anomaly_map.min():
            ax.contour(anomaly_map, levels=[pixel_threshold], colors="cyan", linewidths=1.5)
        bar.ax.axhline(pixel_threshold, color="cyan", linewidth=2)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.05 / fig_h, va="top")
    ax.set_axis_off()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return path


def write_pictures(rgb: np.ndarray, anomaly_map: np.ndarray, mask: np.ndarray | None, heatmap_path: Path | None,
                   mask_path: Path | None, value_range: tuple[float, float], pixel_threshold: float | None,
                   title: str) -> tuple[str | None, str | None]:
    """Heatmap and mask PNGs where paths are given (no mask where ``mask`` is None: a model
    without a pixel threshold); their paths, or None."""
    heatmap = written_mask = None
    if heatmap_path is not None:
        heatmap = str(write_heatmap(rgb, anomaly_map, Path(heatmap_path), value_range, pixel_threshold, title))
    if mask_path is not None and mask is not None:
        written_mask = str(write_mask(mask, Path(mask_path)))
    return heatmap, written_mask
