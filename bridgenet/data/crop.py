"""Object-centred crops: the network sees the part, not the table around it (pure functions).

Real scans show the part in the middle of a wider view (MVTec 3D-AD's cable gland spans
about half of its 400 px frame), so resizing the whole frame to the network's input side
spends half of the pixels on the table and shrinks defects a few pixels wide below the
backbone's stride. :func:`object_box` returns a square around the foreground, and the
network input is that square resized; :func:`paste_maps` puts the anomaly maps back into
the frame, so that maps, masks and metrics stay at the input's own resolution.

A box is ``(top, left, height, width)`` in the frame's pixels. Its side is
``margin`` times the larger of the foreground's bounding-box side and its extent along its
principal axis: the extent does not change when the part turns in the image plane, so an
elongated part is shown at the same scale whatever its orientation (the bounding box of a
rod lying diagonally is 1.4 times smaller than that of the same rod lying straight).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

CROPS = ("object", "none")


def whole_frame(height: int, width: int) -> tuple[int, int, int, int]:
    """The box of the whole frame (no crop)."""
    return 0, 0, int(height), int(width)


def object_box(foreground: np.ndarray, margin: float) -> tuple[int, int, int, int]:
    """Square box (top, left, side, side) around the foreground of a (H, W) bool mask.

    See the module docstring for the side. The box lies inside the frame (shifted where
    the part sits near an edge; at most the frame's shorter side). An empty foreground
    gives the whole frame.
    """
    if foreground.ndim != 2:
        raise ValueError(f"foreground must be (H, W), got shape {foreground.shape}")
    if margin < 1:
        raise ValueError(f"data.crop_margin must be >= 1, got {margin}")
    height, width = foreground.shape
    ys, xs = np.nonzero(foreground)
    if len(ys) == 0:
        return whole_frame(height, width)
    extent = max(int(ys.max() - ys.min()), int(xs.max() - xs.min())) + 1
    if len(ys) > 2:
        points = np.stack([ys, xs], 1).astype(np.float64)
        points -= points.mean(0)
        axis = np.linalg.eigh(points.T @ points)[1][:, -1]  # principal axis: largest eigenvalue
        along = points @ axis
        extent = max(extent, math.ceil(along.max() - along.min()) + 1)
    side = min(math.ceil(margin * extent), height, width)
    centre_y, centre_x = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    top = int(np.clip(round(centre_y - side / 2), 0, height - side))
    left = int(np.clip(round(centre_x - side / 2), 0, width - side))
    return top, left, side, side


def crop(array: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The ``box`` of a (H, W, ...) array (a view)."""
    top, left, height, width = box
    return array[top:top + height, left:left + width]


def paste_maps(maps: torch.Tensor, boxes: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """Anomaly maps (N, S, S) of the boxes (N, 4) -> maps (N, H, W) of the frames of ``size``.

    Each map is resized bilinearly to its box and placed there; the frame outside the box,
    which holds no part, gets the map's lowest value.
    """
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    if len(boxes) != len(maps):
        raise ValueError(f"paste_maps: {len(maps)} maps but {len(boxes)} boxes")
    height, width = size
    out = maps.new_empty((len(maps), height, width))
    for i, (top, left, box_h, box_w) in enumerate(boxes.tolist()):
        if top < 0 or left < 0 or top + box_h > height or left + box_w > width or box_h < 1 or box_w < 1:
            raise ValueError(f"paste_maps: box {(top, left, box_h, box_w)} does not fit a {height}x{width} frame")
        resized = F.interpolate(maps[i][None, None], size=(box_h, box_w), mode="bilinear", align_corners=False)
        if (box_h, box_w) != (height, width):
            out[i] = maps[i].amin()
        out[i, top:top + box_h, left:left + box_w] = resized[0, 0]
    return out
