"""Visible-depth extraction on hand-built scenes: a tilted table seen by a pinhole camera."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import ndimage

from bridgenet.data.depth import (
    clean_foreground,
    extract_visible_depth,
    fill_depth_holes,
    fit_background_plane,
    frame_visible_depth,
    missing_share,
)

SIZE = 128
SETTINGS = {
    "image_size": SIZE,
    "plane_distance": 0.004,
    "ransac_iterations": 200,
    "ransac_sample_points": 5000,
    "morph_kernel": 3,
    "min_component_pixels": 16,
}


def scene(height: np.ndarray, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """xyz (H, W, 3) of a table tilted ~15 degrees, 0.5 m away, with ``height`` metres on it."""
    size = height.shape[0]
    coords = (np.arange(size) - size / 2) / (1.5 * size)
    rays = np.stack(
        np.broadcast_arrays(coords[None, :], coords[:, None], np.ones((size, size))), axis=-1
    )
    normal = np.array([0.2, -0.15, -1.0])
    normal /= np.linalg.norm(normal)
    offset = 0.5 * -normal[2]
    z = (height - offset) / (rays @ normal)
    xyz = rays * z[..., None]
    xyz[..., 2] += np.random.default_rng(seed).normal(0, noise, z.shape)
    return xyz.astype(np.float32)


def box_heights(size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    heights = np.zeros((size, size))
    box = np.zeros((size, size), bool)
    box[30:90, 40:100] = True
    heights[box] = 0.02
    return heights, box


def run(xyz: np.ndarray, seed: int = 0, **overrides) -> tuple[np.ndarray, np.ndarray]:
    return extract_visible_depth(xyz, rng=np.random.default_rng(seed), **{**SETTINGS, **overrides})


def test_box_on_tilted_plane_is_foreground_and_plane_is_removed():
    heights, box = box_heights()
    depth, foreground = run(scene(heights, noise=2e-4))
    assert depth.dtype == np.float32 and foreground.dtype == bool
    assert depth.shape == foreground.shape == (SIZE, SIZE)
    assert (foreground == box).mean() > 0.995
    assert not foreground[~box].any() or foreground[~box].sum() < 10
    assert (depth[~foreground] == 0).all()
    assert depth.min() >= 0 and depth.max() <= 1
    # the box top is flat above the table although its camera z varies with the tilt
    top = depth[35:85, 45:95]
    assert top.min() > 0.9 and top.std() < 0.02


def test_depth_is_height_above_the_table_over_its_maximum():
    heights, _ = box_heights()
    heights[50:70, 60:80] = 0.04  # a taller step on the box
    depth, _ = run(scene(heights))
    # 1 = highest above the (tilted) table, whatever the camera z of the point
    np.testing.assert_allclose(depth[55:65, 65:75], 1.0, atol=0.01)
    np.testing.assert_allclose(depth[35:45, 45:55], 0.5, atol=0.01)


def test_resizes_to_image_size():
    heights, box = box_heights()
    depth, foreground = run(scene(heights), image_size=64)
    assert depth.shape == foreground.shape == (64, 64)
    assert abs(foreground.mean() - box.mean()) < 0.02


def test_missing_points_inside_the_object_are_filled():
    heights, _ = box_heights()
    xyz = scene(heights)
    xyz[55:65, 65:75] = 0  # a sensor dropout inside the box
    depth, foreground = run(xyz)
    assert foreground[55:65, 65:75].all()
    neighbours = np.concatenate([depth[53, 65:75], depth[66, 65:75]])
    assert depth[55:65, 65:75].min() >= neighbours.min() - 1e-6
    assert depth[55:65, 65:75].max() <= neighbours.max() + 1e-6


def test_missing_share_counts_the_dropouts_on_the_part_only():
    heights, _ = box_heights()
    xyz = scene(heights)
    settings = {k: v for k, v in SETTINGS.items() if k != "image_size"}
    _, foreground = frame_visible_depth(xyz, rng=np.random.default_rng(0), **settings)
    assert missing_share(xyz, foreground) == 0.0
    xyz[55:65, 65:75] = 0  # 100 of the box's 3,600 pixels lost on the part
    xyz[5:15, 5:15] = np.nan  # and 100 on the table, which do not count
    _, foreground = frame_visible_depth(xyz, rng=np.random.default_rng(0), **settings)
    assert foreground[55:65, 65:75].all() and not foreground[5:15, 5:15].any()
    assert missing_share(xyz, foreground) == pytest.approx(100 / foreground.sum())
    assert missing_share(xyz, np.zeros_like(foreground)) == 0.0  # no part: nothing missing on it
    with pytest.raises(ValueError, match="differ in size"):
        missing_share(xyz, foreground[:-1])


def test_enclosed_table_stays_background():
    heights, _ = box_heights()
    heights[50:70, 60:80] = 0  # a ring: the table shows through the middle
    depth, foreground = run(scene(heights))
    assert not foreground[52:68, 62:78].any()
    assert (depth[52:68, 62:78] == 0).all()


def test_object_larger_than_the_visible_table():
    heights = np.full((SIZE, SIZE), 0.03)  # a flat block filling ~80 % of the view
    heights[:, :12] = heights[:, -12:] = 0
    heights[:12, :] = 0
    depth, foreground = run(scene(heights, noise=2e-4))
    assert foreground[20:-20, 20:-20].all()
    assert not foreground[:, :10].any() and not foreground[:, -10:].any()
    assert depth[20:-20, 20:-20].min() > 0.9


def test_small_blobs_are_dropped():
    heights, _ = box_heights()
    heights[5:8, 5:8] = 0.02  # 9 pixels, under min_component_pixels
    _, foreground = run(scene(heights))
    assert not foreground[:20, :20].any()


def test_no_object_gives_zeros_and_empty_mask(caplog):
    xyz = scene(np.zeros((SIZE, SIZE)), noise=2e-4)
    with caplog.at_level(logging.WARNING, logger="bridgenet.data.depth"):
        depth, foreground = run(xyz)
    assert (depth == 0).all() and not foreground.any()
    assert depth.shape == (SIZE, SIZE)
    assert "no object" in caplog.text


def test_no_valid_point_raises():
    with pytest.raises(ValueError, match="no valid point"):
        run(np.zeros((SIZE, SIZE, 3), np.float32))


def test_same_seed_same_result():
    heights, _ = box_heights()
    xyz = scene(heights, noise=5e-4)
    first = run(xyz, seed=3, ransac_sample_points=500)
    second = run(xyz, seed=3, ransac_sample_points=500)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


def test_plane_is_oriented_towards_the_camera():
    heights, _ = box_heights()
    xyz = scene(heights).reshape(-1, 3)
    plane = fit_background_plane(xyz, 0.002, 100, 2000, np.random.default_rng(0))
    assert np.linalg.norm(plane[:3]) == pytest.approx(1.0)
    assert plane[3] > 0  # the camera (origin) is on the positive side
    distances = xyz @ plane[:3] + plane[3]
    assert np.median(np.abs(distances)) < 1e-4
    assert distances.max() == pytest.approx(0.02, abs=1e-3)


def test_clean_foreground_even_kernel_keeps_a_square():
    square = np.zeros((40, 40), bool)
    square[10:30, 12:28] = True
    for kernel in (2, 4, 5):
        np.testing.assert_array_equal(
            clean_foreground(square, np.ones_like(square), kernel, 0), square
        )


def test_fill_depth_holes_copies_nearest_source():
    depth = np.zeros((5, 5), np.float32)
    source = np.zeros((5, 5), bool)
    source[:, 0], depth[:, 0] = True, 0.25
    source[:, 4], depth[:, 4] = True, 0.75
    foreground = np.ones((5, 5), bool)
    filled = fill_depth_holes(depth, source, foreground)
    np.testing.assert_allclose(filled[:, 1], 0.25)
    np.testing.assert_allclose(filled[:, 3], 0.75)


def test_a_noisy_holed_tilted_scan_gives_a_clean_foreground():
    """As a real structured-light scan looks (MVTec 3D-AD's cable gland): a tilted table with half
    of its points missing at random, 0.3 mm noise, flying points at the part's outline, sensor holes
    inside the part, and a thread (1 mm ridges) on it. The foreground is the part, whole, and
    nothing of the table."""
    rng = np.random.default_rng(3)
    heights = np.zeros((SIZE, SIZE))
    part = np.zeros((SIZE, SIZE), bool)
    part[30:100, 35:90] = True
    heights[part] = 0.03
    heights[30:100:6, 35:90] += 0.001  # the thread
    xyz = scene(heights, noise=3e-4, seed=4)
    table = ~part
    xyz[table & (rng.random((SIZE, SIZE)) < 0.5)] = 0  # speckled table: half its points missing
    outline = part ^ ndimage.binary_erosion(part, iterations=2)
    flying = outline & (rng.random((SIZE, SIZE)) < 0.3)
    xyz[flying] *= rng.uniform(1.0, 1.05, (int(flying.sum()), 1)).astype(np.float32)  # edge points pushed back
    xyz[50:56, 50:58] = 0  # holes inside the part
    xyz[80:83, 60:75] = 0
    depth, foreground = run(xyz)
    overlap = (foreground & part).sum() / (foreground | part).sum()
    assert overlap > 0.97
    assert foreground[50:56, 50:58].all() and foreground[80:83, 60:75].all()  # holes are part of it
    assert not foreground[ndimage.binary_dilation(part, iterations=3) == 0].any()  # no table blob
    inner = ndimage.binary_erosion(part, iterations=4)
    assert depth[inner].min() > 0.85  # heights normalised by the part, holes filled from neighbours
    ridge, groove = depth[60, 40:85].mean(), depth[62, 40:85].mean()
    assert ridge > groove + 0.01  # the 1 mm thread is still in the depth map
