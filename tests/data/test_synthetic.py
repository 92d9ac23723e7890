"""Synthetic MVTec 3D-AD data: determinism, file layout/formats and defect ground truth."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
import tifffile
from PIL import Image

from bridgenet.config import SynthConfig
from bridgenet.data.meshes import BUILDERS, build_object
from bridgenet.data.render import render_sample
from bridgenet.data.synthetic import (
    DEFECT_FAMILIES,
    MAX_DEFECT_FRACTION,
    MIN_DEFECT_FRACTION,
    MIN_DEFECT_HEIGHT_M,
    make_sample,
    synthesize,
)

SIZE = 96
CATEGORIES = ("bagel", "dowel", "cookie", "cable")
TINY = SynthConfig(
    categories=CATEGORIES,
    seed=7,
    image_size=SIZE,
    n_train=2,
    n_validation=1,
    n_test_good=1,
    n_test_per_defect=1,
    preview=False,
)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = synthesize(TINY, root, preview_path=root.parent / "sheet.png", workers=1)
    return root, summary


def test_defect_families_cover_all_three():
    assert set(DEFECT_FAMILIES.values()) == {"geometric", "appearance", "both"}
    assert len(DEFECT_FAMILIES) >= 4


def test_layout_and_file_formats(dataset):
    root, summary = dataset
    expected = set()
    for cat in CATEGORIES:
        for split, kind, n in [
            ("train", "good", 2),
            ("validation", "good", 1),
            ("test", "good", 1),
        ] + [("test", d, 1) for d in DEFECT_FAMILIES]:
            subs = {"rgb": "png", "xyz": "tiff"} | ({"gt": "png"} if split == "test" else {})
            expected |= {
                f"{cat}/{split}/{kind}/{sub}/{i:03d}.{ext}"
                for sub, ext in subs.items()
                for i in range(n)
            }
    assert set(_files(root)) == expected
    assert summary["n_samples"] == len(CATEGORIES) * (2 + 1 + 1 + len(DEFECT_FAMILIES))
    assert summary["counts"]["cookie"]["test"] == {"good": 1, **{d: 1 for d in DEFECT_FAMILIES}}
    assert (root.parent / "sheet.png").stat().st_size > 0
    assert not (root / "preview.png").exists()  # cfg.preview is off

    for name in expected:
        path = root / name
        if name.endswith(".tiff"):
            xyz = tifffile.imread(path)
            assert xyz.dtype == np.float32 and xyz.shape == (SIZE, SIZE, 3)
            z = xyz[..., 2]
            assert ((z > 0.3) & (z < 0.6) | (xyz == 0).all(-1)).all(), name
            assert (z > 0).mean() > 0.9, name  # the support plane fills the view
        elif "/gt/" in name:
            gt = Image.open(path)
            assert gt.mode == "L" and gt.size == (SIZE, SIZE)
            values = set(np.unique(np.asarray(gt)).tolist())
            assert values <= {0, 255}
            assert values == ({0} if "/test/good/" in name else {0, 255}), name
        else:
            rgb = Image.open(path)
            assert rgb.format == "PNG" and rgb.mode == "RGB" and rgb.size == (SIZE, SIZE)


def test_same_seed_gives_identical_files_whatever_the_worker_count(dataset, tmp_path):
    root, _ = dataset
    again = tmp_path / "again"
    synthesize(TINY.model_copy(update={"categories": ("cable", "bagel")}), again, workers=2)
    first, second = _files(root), _files(again)
    assert second and all(name.startswith(("cable/", "bagel/")) for name in second)
    assert all(first[name] == data for name, data in second.items())


def test_different_seed_gives_different_files(dataset, tmp_path):
    root, _ = dataset
    other = tmp_path / "other"
    synthesize(TINY.model_copy(update={"seed": 8, "categories": ("dowel",)}), other, workers=1)
    first, second = _files(root), _files(other)
    data_files = [name for name in second if "/gt/" not in name or "/test/good/" not in name]
    assert all(first[name] != second[name] for name in data_files)


def test_written_masks_lie_on_the_object(dataset):
    root, _ = dataset
    for cat in CATEGORIES:
        for defect in DEFECT_FAMILIES:
            _, _, sample = make_sample(TINY.seed, cat, "test", defect, 0, SIZE, TINY.noise_std_m)
            gt = np.asarray(Image.open(root / cat / "test" / defect / "gt" / "000.png")) > 0
            np.testing.assert_array_equal(gt, sample.mask)
            xyz = tifffile.imread(root / cat / "test" / defect / "xyz" / "000.tiff")
            np.testing.assert_array_equal(xyz, sample.xyz)
            assert MIN_DEFECT_FRACTION <= gt.mean() <= MAX_DEFECT_FRACTION, (cat, defect)
            assert (xyz[gt][:, 2] > 0).all(), (cat, defect)
            height = xyz[gt] @ sample.plane[:3] + sample.plane[3]
            assert height.min() > MIN_DEFECT_HEIGHT_M, (cat, defect)
            assert sample.object_mask[gt].all(), (cat, defect)


@pytest.mark.parametrize("category", CATEGORIES)
def test_defects_change_only_their_modality_inside_the_mask(category):
    for name, family in DEFECT_FAMILIES.items():
        params, defect, sample = make_sample(3, category, "test", name, 1, SIZE, 2e-4)
        clean = render_sample(params)  # the same scan without the defect
        inside, outside = sample.mask, ~sample.mask
        dz = np.abs(sample.xyz - clean.xyz).max(-1)
        drgb = np.abs(sample.rgb.astype(int) - clean.rgb.astype(int)).max(-1)
        assert defect is not None and defect.family == family
        if family == "appearance":
            np.testing.assert_array_equal(sample.xyz, clean.xyz)
            assert drgb[outside].max() == 0, name
        else:
            assert dz[outside].max() == 0, name
            assert dz[inside].mean() > 2e-4, name  # well above the sensor noise
            assert (dz[inside] > 0).mean() > 0.9, name
        if family == "geometric":
            assert drgb[inside].mean() < 40, name  # only shading changes
        else:
            assert drgb[inside].mean() > 15, name
            assert (drgb[inside] > 0).mean() > 0.8, name


def test_good_render_is_deterministic_and_params_matter():
    params, _, sample = make_sample(0, "bagel", "train", "good", 0, SIZE, 2e-4)
    again = render_sample(params)
    np.testing.assert_array_equal(sample.xyz, again.xyz)
    np.testing.assert_array_equal(sample.rgb, again.rgb)
    assert not sample.mask.any()
    moved = render_sample(replace(params, yaw=params.yaw + 0.5))
    assert not np.array_equal(moved.xyz, sample.xyz)
    _, _, other = make_sample(0, "bagel", "train", "good", 1, SIZE, 2e-4)
    assert not np.array_equal(other.rgb, sample.rgb)


def test_sensor_noise_follows_config():
    params, _, noisy = make_sample(0, "cookie", "train", "good", 0, SIZE, 1e-3)
    quiet = render_sample(replace(params, noise_std_m=0.0))
    valid = quiet.xyz[..., 2] > 0
    dz = (noisy.xyz[..., 2] - quiet.xyz[..., 2])[valid]
    assert 0.8e-3 < dz.std() < 1.2e-3


@pytest.mark.parametrize("category", sorted(BUILDERS))
def test_meshes_are_closed_outward_and_rest_on_the_plane(category):
    mesh = build_object(category, np.random.default_rng(0), 2e-3)
    legacy = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(mesh.vertices), o3d.utility.Vector3iVector(mesh.triangles)
    )
    assert legacy.is_watertight()
    assert legacy.get_volume() > 1e-6  # positive: outward orientation
    assert abs(mesh.vertices[:, 2].min()) < 1e-12
    extent = mesh.vertices.max(0) - mesh.vertices.min(0)
    assert 0.03 < extent[:2].max() < 0.13


def test_bad_inputs_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown synthetic category"):
        build_object("teapot", np.random.default_rng(0), 1e-3)
    with pytest.raises(ValueError, match="synth.categories"):
        synthesize(TINY.model_copy(update={"categories": ("teapot",)}), tmp_path)
    with pytest.raises(ValueError, match="test split"):
        make_sample(0, "bagel", "train", "dent", 0, SIZE, 0.0)


def test_rerun_with_fewer_samples_removes_stale_files(tmp_path):
    cfg = TINY.model_copy(update={"categories": ("cookie",), "n_train": 3})
    synthesize(cfg, tmp_path, workers=1)
    summary = synthesize(cfg.model_copy(update={"n_train": 1}), tmp_path, workers=1)
    names = sorted(p.name for p in (tmp_path / "cookie" / "train" / "good" / "rgb").iterdir())
    assert names == ["000.png"] and summary["stale_files_removed"] == 4
    assert all(
        re.fullmatch(r"\d{3}\.(png|tiff)", p.name) for p in tmp_path.rglob("*") if p.is_file()
    )


def test_geometric_defects_have_a_flat_floor_and_a_steep_rim():
    from bridgenet.data.render import GEOMETRY_EDGE_WEIGHT, plateau

    weights = np.linspace(0.0, 1.0, 101)
    profile = plateau(weights)
    assert profile[0] == 0 and (profile[weights >= GEOMETRY_EDGE_WEIGHT] == 1).all()
    assert (np.diff(profile) >= 0).all()
    params, _, sample = make_sample(3, "bagel", "test", "dent", 0, SIZE, 0.0)
    clean = render_sample(params)
    dz = np.abs(sample.xyz[..., 2] - clean.xyz[..., 2])[sample.mask]
    # A smooth (1 - s^2)^2 bowl is within 20 % of its depth on ~11 % of its area.
    assert (dz > 0.8 * dz.max()).mean() > 0.25
