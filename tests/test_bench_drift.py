"""The drift bench's darkened line and its variants (the bench itself needs a trained model: not run here)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.drift import (
    darken,
    darkened_pairs,
    darkenings,
    detected,
    drop_points,
    dropouts,
    dropped_pairs,
    variant_name,
)


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
    runs[0]["variants"].append({"darken": 0.0, "dropout": 0.05, "status": "drift"})
    assert detected(runs) == {"0.00": "0/2", "0.15": "1/2", "dropout 0.05": "1/1"}


def test_a_dropout_loses_that_share_of_the_points_of_a_copy_and_keeps_the_image(tmp_path):
    import tifffile

    xyz = np.random.default_rng(0).uniform(0.1, 0.5, size=(200, 300, 3)).astype(np.float32)
    out = drop_points(xyz, 0.1, np.random.default_rng(1))
    lost = (out == 0).all(axis=-1)
    assert out.dtype == xyz.dtype and lost.mean() == pytest.approx(0.1, abs=0.01)
    np.testing.assert_array_equal(out[~lost], xyz[~lost])
    assert (xyz != 0).all()  # the input is left alone
    assert dropouts([0.1, 0.0, 0.02, 0.1]) == [0.02, 0.1] and variant_name(0.05, "dropout") == "dropout-0.05"
    with pytest.raises(ValueError, match="--dropout"):
        dropouts([5.0])
    path = tmp_path / "good" / "xyz" / "000.tiff"
    path.parent.mkdir(parents=True)
    tifffile.imwrite(path, xyz, photometric="minisblack", planarconfig="contig")
    rgb = tmp_path / "good" / "rgb" / "000.png"
    [(same_rgb, copy)] = dropped_pairs([(rgb, path)], 0.2, tmp_path / "dusty")
    assert same_rgb == rgb and copy == tmp_path / "dusty" / "xyz" / "000.tiff"
    assert (tifffile.imread(copy) == 0).all(axis=-1).mean() == pytest.approx(0.2, abs=0.01)
    assert (tifffile.imread(path) != 0).all()
    [(_, again)] = dropped_pairs([(rgb, path)], 0.2, tmp_path / "again")  # seeded by the file's name
    np.testing.assert_array_equal(tifffile.imread(again), tifffile.imread(copy))
