"""Object-centred crops: the box around the part, the crop of a sample, maps pasted back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridgenet.config import DataConfig
from bridgenet.data.crop import crop, object_box, paste_maps, whole_frame
from bridgenet.preprocess import network_inputs


def rod(angle_deg: float, size: int = 400, length: int = 160, width: int = 24, centre=(200, 200)) -> np.ndarray:
    ys, xs = np.mgrid[:size, :size].astype(float)
    a = np.deg2rad(angle_deg)
    along = (xs - centre[1]) * np.cos(a) + (ys - centre[0]) * np.sin(a)
    across = -(xs - centre[1]) * np.sin(a) + (ys - centre[0]) * np.cos(a)
    return (np.abs(along) <= length / 2) & (np.abs(across) <= width / 2)


def test_the_box_is_a_square_inside_the_frame_that_holds_the_whole_part():
    mask = rod(30, centre=(150, 230))
    top, left, height, width = object_box(mask, 1.15)
    assert height == width
    assert 0 <= top and top + height <= 400 and 0 <= left and left + width <= 400
    assert crop(mask, (top, left, height, width)).sum() == mask.sum()  # nothing of the part is cut
    assert height == pytest.approx(1.15 * 161, abs=3)  # margin x the part's length


def test_a_part_turned_in_the_image_plane_keeps_its_scale():
    """The side follows the part's principal extent, not its bounding box: a rod lying diagonally
    (bounding box 1.4 times smaller than its length) gets the same square as one lying straight."""
    sides = [object_box(rod(angle), 1.15)[2] for angle in (0, 20, 45, 70, 90)]
    assert max(sides) - min(sides) <= 3


def test_a_part_at_the_edge_shifts_the_box_into_the_frame():
    mask = rod(0, centre=(200, 90))
    top, left, side, _ = object_box(mask, 1.5)
    assert left == 0 and side == pytest.approx(1.5 * 161, abs=3)
    assert crop(mask, (top, left, side, side)).sum() == mask.sum()


def test_no_part_or_a_part_wider_than_the_frame_gives_at_most_the_frame():
    assert object_box(np.zeros((300, 400), bool), 1.15) == whole_frame(300, 400)
    wide = np.zeros((300, 400), bool)
    wide[100:200, 5:395] = True
    top, _left, height, width = object_box(wide, 1.15)
    assert (height, width) == (300, 300) and top == 0


def test_a_margin_below_one_is_refused():
    with pytest.raises(ValueError, match="crop_margin"):
        object_box(rod(0), 0.9)


def test_paste_maps_puts_each_map_back_where_its_box_was():
    maps = torch.zeros(2, 16, 16)
    maps[0, 4:8, 4:8] = 1.0  # a spot in the first quarter of the box
    maps[1] = torch.linspace(0, 1, 16).view(1, 16).expand(16, 16)
    boxes = np.array([[40, 60, 32, 32], [0, 0, 80, 80]])
    pasted = paste_maps(maps, boxes, (80, 100))
    assert pasted.shape == (2, 80, 100)
    spot = pasted[0] > 0.5
    ys, xs = np.nonzero(spot.numpy())
    assert 40 + 8 <= ys.min() and ys.max() < 40 + 16 and 60 + 8 <= xs.min() and xs.max() < 60 + 16
    assert float(pasted[0, :40].max()) == 0.0 and float(pasted[0, :, :60].max()) == 0.0  # outside: the lowest
    assert float(pasted[1, :, 80:].max()) == pytest.approx(0.0)  # the second map's lowest value
    with pytest.raises(ValueError, match="does not fit"):
        paste_maps(maps[:1], np.array([[30, 90, 32, 32]]), (80, 100))


def test_network_inputs_show_the_part_large_and_map_back_to_the_frame():
    """A box on a tilted table at the side of a wide view: the network input is the crop, and a
    defect drawn into the RGB image lands at the same place of the frame once pasted back."""
    from tests.data.test_depth import scene

    size = 256
    heights = np.zeros((size, size))
    heights[150:200, 30:90] = 0.02
    xyz = scene(heights)
    rgb = np.full((size, size, 3), 40, np.uint8)
    rgb[150:200, 30:90] = 200
    rgb[170:176, 50:56] = 0  # a dark defect on the part
    cfg = DataConfig(image_size=64, morph_kernel=3, min_component_pixels=16)
    small, _depth, foreground, box, _ = network_inputs(rgb, xyz, cfg, np.random.default_rng(0))
    top, left, side, _ = box
    assert side < size / 2 and top <= 150 and top + side >= 200 and left <= 30 and left + side >= 90
    assert foreground.mean() > 0.3  # the part fills the input
    whole = network_inputs(rgb, xyz, cfg.model_copy(update={"crop": "none"}), np.random.default_rng(0))
    assert whole[3] == whole_frame(size, size) and whole[2].mean() < 0.1
    dark = torch.from_numpy((small.mean(-1) < 20).astype(np.float32))[None]
    frame = paste_maps(dark, np.array([box]), (size, size))[0].numpy() > 0.5
    ys, xs = np.nonzero(frame)
    assert 166 <= ys.min() and ys.max() <= 180 and 46 <= xs.min() and xs.max() <= 60
