"""The drift bench's darkened line and its variants (the bench itself needs a trained model: not run here)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.drift import darken, darkened_pairs, darkenings, detected, variant_name


def test_darkening_keeps_shape_and_dtype_and_rounds():
    rgb = np.array([[[0, 1, 2], [100, 200, 255]]], dtype=np.uint8)
    out = darken(rgb, 0.15)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out.tolist() == [[[0, 1, 2], [85, 170, 217]]]  # 255 * 0.85 = 216.75 -> 217
    np.testing.assert_array_equal(darken(rgb, 0.0), rgb)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        darken(rgb, 1.0)
    with pytest.raises(ValueError, match="uint8"):
        darken(rgb.astype(np.float32), 0.1)


def test_the_variants_start_with_the_line_as_rendered_each_once_ascending():
    assert darkenings([0.3, 0.05, 0.15, 0.05]) == [0.0, 0.05, 0.15, 0.3]
    assert darkenings([0.0]) == [0.0]
    assert variant_name(0.15) == "darker-0.15" and variant_name(0.0) == "darker-0.00"
    with pytest.raises(ValueError, match="--darken"):
        darkenings([15.0])


def test_a_darkened_copy_leaves_the_point_cloud_and_the_original_alone(tmp_path):
    rgb = tmp_path / "good" / "rgb" / "000.png"
    rgb.parent.mkdir(parents=True)
    Image.fromarray(np.full((4, 5, 3), 200, dtype=np.uint8)).save(rgb)
    xyz = tmp_path / "good" / "xyz" / "000.tiff"
    [(copy, same_xyz)] = darkened_pairs([(rgb, xyz)], 0.5, tmp_path / "darker")
    assert same_xyz == xyz and copy == tmp_path / "darker" / "rgb" / "000.png"
    assert np.asarray(Image.open(copy)).tolist() == np.full((4, 5, 3), 100).tolist()
    assert np.asarray(Image.open(rgb)).max() == 200
    assert darkened_pairs([(rgb, xyz)], 0.0, tmp_path / "none") == [(rgb, xyz)]


def test_detection_counts_the_seeds_whose_pass_said_drift():
    runs = [{"variants": [{"darken": 0.0, "status": "ok"}, {"darken": 0.15, "status": "drift"}]},
            {"variants": [{"darken": 0.0, "status": "ok"}, {"darken": 0.15, "status": "ok"}]}]
    assert detected(runs) == {"0.00": "0/2", "0.15": "1/2"}
