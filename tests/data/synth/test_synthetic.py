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
from scipy.ndimage import binary_erosion, distance_transform_edt

from bridgenet.config import SynthConfig
from bridgenet.data.families import DEFAULT_DEFECTS, DEFECT_FAMILIES, HARD_DEFECTS, PRESETS
from bridgenet.data.synth.dataset import (
    make_sample,
    plan_jobs,
    sample_params,
    sample_seed,
    synthesize,
)
from bridgenet.data.synth.defects import MAX_DEFECT_FRACTION, MIN_DEFECT_FRACTION
from bridgenet.data.synth.hard_defects import HARD_OBJECT_FRACTION, sample_hard_defect
from bridgenet.data.synth.meshes import BUILDERS, build_object
from bridgenet.data.synth.placement import MIN_DEFECT_HEIGHT_M
from bridgenet.data.synth.raycast import focal_length
from bridgenet.data.synth.render import render_sample, scan_geometry

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
    for defects in PRESETS.values():
        assert set(defects.values()) == {"geometric", "appearance", "both"}
        assert len(defects) >= 4
    assert DEFECT_FAMILIES == {**DEFAULT_DEFECTS, **HARD_DEFECTS}


def test_layout_and_file_formats(dataset):
    root, summary = dataset
    expected = set()
    for cat in CATEGORIES:
        for split, kind, n in [
            ("train", "good", 2),
            ("validation", "good", 1),
            ("test", "good", 1),
        ] + [("test", d, 1) for d in DEFAULT_DEFECTS]:
            subs = {"rgb": "png", "xyz": "tiff"} | ({"gt": "png"} if split == "test" else {})
            expected |= {
                f"{cat}/{split}/{kind}/{sub}/{i:03d}.{ext}"
                for sub, ext in subs.items()
                for i in range(n)
            }
    assert set(_files(root)) == expected
    assert summary["n_samples"] == len(CATEGORIES) * (2 + 1 + 1 + len(DEFAULT_DEFECTS))
    assert summary["counts"]["cookie"]["test"] == {"good": 1, **{d: 1 for d in DEFAULT_DEFECTS}}
    assert summary["preset"] == "default" and summary["defect_families"] == DEFAULT_DEFECTS
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
        for defect in DEFAULT_DEFECTS:
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
    for name, family in DEFAULT_DEFECTS.items():
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
    from bridgenet.data.synth.render import GEOMETRY_EDGE_WEIGHT, plateau

    weights = np.linspace(0.0, 1.0, 101)
    profile = plateau(weights)
    assert profile[0] == 0 and (profile[weights >= GEOMETRY_EDGE_WEIGHT] == 1).all()
    assert (np.diff(profile) >= 0).all()
    params, _, sample = make_sample(3, "bagel", "test", "dent", 0, SIZE, 0.0)
    clean = render_sample(params)
    dz = np.abs(sample.xyz[..., 2] - clean.xyz[..., 2])[sample.mask]
    # A smooth (1 - s^2)^2 bowl is within 20 % of its depth on ~11 % of its area.
    assert (dz > 0.8 * dz.max()).mean() > 0.25


# --- the "hard" preset -------------------------------------------------------------------


def test_hard_preset_families_and_lookup():
    assert HARD_DEFECTS == {
        "faint_stain": "appearance",
        "discoloration": "appearance",
        "micro_bump": "geometric",
        "micro_dent": "geometric",
        "scratch": "both",
        "rim_chip": "both",
    }
    assert not set(HARD_DEFECTS) & set(DEFAULT_DEFECTS)
    from bridgenet.evaluate import defect_families

    assert defect_families(["good", "scratch", "rim_chip", "dent", "other"]) == {
        "scratch": "both",
        "rim_chip": "both",
        "dent": "geometric",
        "other": "other",
    }
    hard = TINY.model_copy(update={"preset": "hard"})
    kinds = {kind for _, split, kind, _ in plan_jobs(hard) if split == "test"}
    assert kinds == {"good", *HARD_DEFECTS}


def test_preset_is_validated():
    from pydantic import ValidationError

    assert SynthConfig().preset == "default"
    with pytest.raises(ValidationError, match="preset"):
        SynthConfig(preset="harder")


@pytest.fixture(scope="module")
def hard_dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth_hard") / "data"
    hard = TINY.model_copy(update={"preset": "hard"})
    summary = synthesize(hard, root, preview_path=root.parent / "sheet.png", workers=1)
    return root, summary


def test_hard_preset_shares_the_goods_and_writes_its_defects(dataset, hard_dataset):
    (root, _), (hard_root, summary) = dataset, hard_dataset
    default, hard = _files(root), _files(hard_root)
    goods = {name for name in default if "/good/" in name}
    assert goods == {name for name in hard if "/good/" in name}
    assert all(default[name] == hard[name] for name in goods)  # byte-identical
    for cat in CATEGORIES:
        for kind in HARD_DEFECTS:
            for sub, ext in (("rgb", "png"), ("xyz", "tiff"), ("gt", "png")):
                assert f"{cat}/test/{kind}/{sub}/000.{ext}" in hard
            gt = np.asarray(Image.open(hard_root / cat / "test" / kind / "gt" / "000.png"))
            assert set(np.unique(gt).tolist()) == {0, 255}, (cat, kind)
    assert not any(name.split("/")[2] in DEFAULT_DEFECTS for name in hard)
    assert summary["preset"] == "hard" and summary["defect_families"] == HARD_DEFECTS
    assert (hard_root.parent / "sheet.png").stat().st_size > 0


def _outline(object_mask: np.ndarray) -> np.ndarray:
    return object_mask & ~binary_erosion(object_mask)


@pytest.mark.parametrize("category", CATEGORIES)
def test_hard_defects_change_little_and_only_what_they_should(category):
    for name, family in HARD_DEFECTS.items():
        params, defect, sample = make_sample(5, category, "test", name, 0, SIZE, 2e-4)
        clean = render_sample(params)
        inside = sample.mask
        both = (sample.xyz[..., 2] > 0) & (clean.xyz[..., 2] > 0)
        dz = np.abs(sample.xyz[..., 2] - clean.xyz[..., 2])
        drgb = np.abs(sample.rgb.astype(int) - clean.rgb.astype(int))
        n_object = clean.object_mask.sum()
        assert defect is not None and defect.family == family and inside.any(), name
        if family == "appearance":
            np.testing.assert_array_equal(sample.xyz, clean.xyz)
            lo, hi = HARD_OBJECT_FRACTION[name]
            assert lo <= inside.sum() / n_object <= hi, name
            # faint: a few grey levels on average (the default stain: > 15 on its largest channel)
            assert 0.5 < drgb[inside].mean() < 12, (name, drgb[inside].mean())
        if name.startswith("micro_"):
            assert defect.strength == 0 and not defect.recolour  # no albedo change
            assert inside.sum() <= 0.02 * n_object, name
            assert dz[both].max() < 1e-3 and dz[~inside].max() == 0, name
            assert dz[inside].max() > 2e-4, name  # at least the sensor noise somewhere
        if name == "scratch":
            assert dz[~inside].max() == 0 and drgb[~inside].max() == 0
            assert 1e-4 < dz[inside].max() < 1e-3 and drgb[inside].mean() > 2
        if name == "rim_chip":
            lost = clean.object_mask & ~sample.object_mask
            assert lost.any() and not (lost & ~inside).any()
            assert (inside & _outline(clean.object_mask)).any()


@pytest.mark.parametrize("category", CATEGORIES)
def test_hard_defects_place_at_full_size(category):
    """Placement never fails at 400 pixels; scratches stay thin, chips bite into the outline."""
    size = 400
    for seed in (0, 1):
        for name in HARD_DEFECTS:
            scene_seq, defect_seq = sample_seed(seed, category, "test", name, 0).spawn(2)
            params = sample_params(category, size, 2e-4, np.random.default_rng(scene_seq))
            defect, scan = sample_hard_defect(params, name, np.random.default_rng(defect_seq))
            mask = scan["mask"].reshape(size, size)
            if name in HARD_OBJECT_FRACTION:
                lo, hi = HARD_OBJECT_FRACTION[name]
                clean_object = scan_geometry(params)["on_object"].reshape(size, size)
                assert lo <= mask.sum() / clean_object.sum() <= hi, (seed, name)
            if name == "scratch":
                rows, cols = np.nonzero(mask)
                span = np.hypot(np.ptp(rows), np.ptp(cols))
                assert distance_transform_edt(mask).max() <= 2.0, seed  # at most ~3 px wide
                assert 1 <= mask.sum() / span < 3.5, seed  # mean width in pixels
                length_px = defect.length * focal_length(size) / params.camera_height
                assert span > 0.7 * length_px, seed  # one piece of (about) its full length
            if name == "rim_chip":
                lost = clean_object & ~scan["on_object"].reshape(size, size)
                assert lost.sum() > 0.3 * mask.sum(), seed  # the rest: exposed walls
                assert not (lost & ~mask).any(), seed
                assert (mask & _outline(clean_object)).any(), seed


def test_a_defect_that_does_not_fit_draws_the_scene_again_and_a_sample_that_fits_is_never_redrawn(monkeypatch):
    from bridgenet.data.synth import dataset
    from bridgenet.data.synth.placement import PlacementError

    first_params, _, first = make_sample(3, "cable", "test", "bump", 1, SIZE, 2e-4)
    real, calls = dataset.sample_defect, []

    def refuse_first(params, kind, rng, nthreads):
        calls.append(params)
        if len(calls) == 1:
            raise PlacementError("cable: could not place a 'bump' (injected)")
        return real(params, kind, rng, nthreads)

    monkeypatch.setattr(dataset, "sample_defect", refuse_first)
    params, defect, sample = make_sample(3, "cable", "test", "bump", 1, SIZE, 2e-4)
    assert len(calls) == 2 and calls[0] == first_params  # the first scene is the one that fits without redraws
    assert params == calls[1] and params != first_params  # another scene, drawn from the extended key
    assert defect is not None and sample.mask.any() and not np.array_equal(sample.rgb, first.rgb)
    calls.clear()
    again = make_sample(3, "cable", "test", "bump", 1, SIZE, 2e-4)  # deterministic: the same redraw
    assert again[0] == params and np.array_equal(again[2].rgb, sample.rgb)

    def refuse_all(params, kind, rng, nthreads):
        raise PlacementError("cable: could not place a 'bump' (injected)")

    monkeypatch.setattr(dataset, "sample_defect", refuse_all)
    with pytest.raises(PlacementError, match=r"could not place a 'bump' \(injected\); the scene was drawn 9 times"):
        make_sample(3, "cable", "test", "bump", 1, SIZE, 2e-4)
    monkeypatch.setattr(dataset, "sample_defect", real)
    assert make_sample(3, "cable", "test", "bump", 1, SIZE, 2e-4)[0] == first_params
