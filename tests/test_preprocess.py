"""Cached preprocessing: layout, reuse, invalidation, bad samples and the split loader."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from bridgenet.config import DataConfig, Params
from bridgenet.data.cache import INDEX_COLUMNS, load_cached_split
from bridgenet.preprocess import run_preprocess, write_entry

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*stored as RGB with contiguous samples:DeprecationWarning"
)

SIDE = 64


def scene(seed: int, side: int = SIDE) -> np.ndarray:
    """xyz (side, side, 3): slightly tilted table 0.5 m away with a 2 cm box on it."""
    rng = np.random.default_rng(seed)
    coords = np.linspace(-0.05, 0.05, side)
    x, y = np.meshgrid(coords, coords)
    z = 0.5 + 0.1 * x + rng.normal(0, 1e-4, (side, side))
    top = slice(16 + seed % 4, 44), slice(20, 48)
    z[top] -= 0.02
    return np.stack([x, y, z], axis=-1).astype(np.float32)


def write_sample(root: Path, category: str, split: str, defect: str, stem: str, seed: int) -> None:
    folder = root / category / split / defect
    for part in ("rgb", "xyz") + (("gt",) if split == "test" else ()):
        (folder / part).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(
        folder / "rgb" / f"{stem}.png"
    )
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", scene(seed))
    if split == "test":
        mask = np.zeros((SIDE, SIDE), np.uint8)
        if defect != "good":
            mask[20:26, 22:30] = 255
        Image.fromarray(mask).save(folder / "gt" / f"{stem}.png")


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for category in ("bagel", "cable"):
        for i in range(3):
            write_sample(root, category, "train", "good", f"{i:03d}", seed=i)
        write_sample(root, category, "validation", "good", "000", seed=5)
        write_sample(root, category, "test", "good", "000", seed=6)
        write_sample(root, category, "test", "hole", "000", seed=7)
        write_sample(root, category, "test", "hole", "001", seed=8)
    return root


N_SAMPLES = 14


def params(root: Path, **data) -> Params:
    settings = {
        "root": str(root),
        "cache_dir": str(root.parent / "cache"),
        "image_size": 32,
        "ransac_sample_points": 500,
        "morph_kernel": 3,
        "min_component_pixels": 8,
    }
    return Params(data=DataConfig(**{**settings, **data}))


def cache_files(cache: Path) -> dict[str, int]:
    return {
        p.relative_to(cache).as_posix(): p.stat().st_mtime_ns
        for p in sorted(cache.rglob("*"))
        if p.is_file()
    }


def test_first_run_writes_the_layout(root):
    p = params(root)
    summary = run_preprocess(p)
    assert (summary["written"], summary["reused"], summary["failed"], summary["removed"]) == (
        N_SAMPLES,
        0,
        0,
        0,
    )
    cache = Path(p.data.cache_dir)
    with np.load(cache / "bagel/test/hole/001.npz") as entry:
        assert entry["rgb"].dtype == np.uint8 and entry["rgb"].shape == (32, 32, 3)
        assert entry["depth"].dtype == np.float32 and entry["depth"].shape == (32, 32)
        assert 0 <= entry["depth"].min() and entry["depth"].max() <= 1
        # the part fills most of the object-centred crop (data.crop: object)
        assert entry["foreground"].dtype == bool and 0.4 < entry["foreground"].mean() < 0.9
        top, left, height, width = entry["crop_box"].tolist()
        assert height == width and 0 <= top and top + height <= SIDE and 0 <= left and left + width <= SIDE
        assert (
            entry["gt"].dtype == bool
            and entry["gt"].shape == (SIDE, SIDE)
            and entry["gt"].sum() == 48
        )
        assert entry["original_size"].dtype == np.int64 and entry["original_size"].tolist() == [
            SIDE,
            SIDE,
        ]
    with np.load(cache / "bagel/train/good/000.npz") as entry:
        assert entry["gt"].shape == (SIDE, SIDE) and not entry["gt"].any()
    with (cache / "bagel/index.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == INDEX_COLUMNS and len(rows) == 7
    assert rows[-1]["cache_path"] == "bagel/test/hole/001.npz" and rows[-1]["label"] == "1"
    assert (cache / "cable/manifest.json").is_file()


def test_second_run_does_no_work(root):
    p = params(root)
    run_preprocess(p)
    cache = Path(p.data.cache_dir)
    before = cache_files(cache)
    summary = run_preprocess(p)
    assert (summary["written"], summary["reused"], summary["failed"], summary["removed"]) == (
        0,
        N_SAMPLES,
        0,
        0,
    )
    assert cache_files(cache) == before


def test_changed_param_reprocesses_everything(root):
    run_preprocess(params(root))
    summary = run_preprocess(params(root, plane_distance=0.006))
    assert (summary["written"], summary["reused"]) == (N_SAMPLES, 0)
    summary = run_preprocess(params(root, plane_distance=0.006))
    assert (summary["written"], summary["reused"]) == (0, N_SAMPLES)


def test_changed_input_reprocesses_only_that_sample(root):
    p = params(root)
    run_preprocess(p)
    cache = Path(p.data.cache_dir)
    before = cache_files(cache)
    tifffile.imwrite(root / "cable/train/good/xyz/001.tiff", scene(3))
    summary = run_preprocess(p)
    assert (summary["written"], summary["reused"]) == (1, N_SAMPLES - 1)
    after = cache_files(cache)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"cable/train/good/001.npz", "cable/manifest.json"}


def test_removed_source_removes_the_entry(root):
    p = params(root)
    run_preprocess(p)
    for part, ext in (("rgb", "png"), ("xyz", "tiff"), ("gt", "png")):
        (root / "bagel/test/hole" / part / f"001.{ext}").unlink()
    summary = run_preprocess(p)
    assert (summary["written"], summary["reused"], summary["removed"]) == (0, N_SAMPLES - 1, 1)
    cache = Path(p.data.cache_dir)
    assert not (cache / "bagel/test/hole/001.npz").exists()
    assert load_cached_split(cache, "bagel", "test").defects == ["good", "hole"]


@pytest.mark.parametrize("corruption", ["truncated", "nan"])
def test_corrupt_sample_is_reported_and_left_out(root, corruption):
    p = params(root)
    run_preprocess(p)
    bad = root / "cable/test/hole/xyz/000.tiff"
    if corruption == "truncated":
        bad.write_bytes(bad.read_bytes()[:5000])
    else:
        xyz = scene(7)
        xyz[10, 10] = np.nan
        tifffile.imwrite(bad, xyz)
    with pytest.raises(ValueError, match=r"1 bad input file\(s\)") as info:
        run_preprocess(p)
    assert str(bad) in str(info.value)
    cache = Path(p.data.cache_dir)
    assert not (cache / "cable/test/hole/000.npz").exists()
    assert not list(cache.rglob("*.tmp"))
    test = load_cached_split(cache, "cable", "test")
    assert test.stems == ["000", "001"] and test.defects == ["good", "hole"]
    # nothing else was redone, and the bad sample stays out until it is fixed
    with pytest.raises(ValueError, match=str(bad)):
        run_preprocess(p)
    write_sample(root, "cable", "test", "hole", "000", seed=7)
    summary = run_preprocess(p)
    assert (summary["written"], summary["reused"], summary["failed"]) == (1, N_SAMPLES - 1, 0)


def test_unpaired_file_is_reported_and_the_rest_is_processed(root):
    p = params(root)
    rgb = root / "bagel/train/good/rgb/001.png"
    (root / "bagel/train/good/xyz/001.tiff").unlink()
    with pytest.raises(ValueError, match="missing partner") as info:
        run_preprocess(p)
    assert str(rgb) in str(info.value)
    assert len(load_cached_split(p.data.cache_dir, "bagel", "train")) == 2
    assert len(load_cached_split(p.data.cache_dir, "cable", "train")) == 3


def test_interrupted_write_leaves_no_temp_file(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_entry(tmp_path / "a" / "x.npz", {"depth": np.zeros(3)})
    assert list((tmp_path / "a").iterdir()) == []


def test_load_cached_split(root):
    p = params(root)
    run_preprocess(p)
    split = load_cached_split(p.data.cache_dir, "bagel", "test", p.data)
    assert split.rgb.shape == (3, 32, 32, 3) and split.rgb.dtype == np.uint8
    assert split.depth.shape == (3, 32, 32) and split.depth.dtype == np.float32
    assert split.foreground.shape == (3, 32, 32) and split.foreground.dtype == bool
    assert split.labels.tolist() == [0, 1, 1] and split.defects == ["good", "hole", "hole"]
    assert split.stems == ["000", "000", "001"]
    assert [g.shape for g in split.gt] == [(SIDE, SIDE)] * 3 and split.gt[1].sum() == 48
    assert split.original_sizes.tolist() == [[SIDE, SIDE]] * 3
    assert len(load_cached_split(p.data.cache_dir, "bagel", "train")) == 3


def test_deterministic_across_caches(root, tmp_path):
    first, second = params(root), params(root, cache_dir=str(tmp_path / "other"))
    run_preprocess(first)
    run_preprocess(second)
    a = load_cached_split(first.data.cache_dir, "cable", "train")
    b = load_cached_split(second.data.cache_dir, "cable", "train")
    np.testing.assert_array_equal(a.depth, b.depth)
    np.testing.assert_array_equal(a.foreground, b.foreground)


def test_missing_or_stale_cache_names_the_folder(root):
    p = params(root)
    cache = Path(p.data.cache_dir)
    with pytest.raises(FileNotFoundError, match=str(cache / "bagel")):
        load_cached_split(cache, "bagel", "train")
    run_preprocess(p)
    with pytest.raises(ValueError, match="stale") as info:
        load_cached_split(cache, "bagel", "train", params(root, image_size=48).data)
    assert str(cache / "bagel") in str(info.value)
    (cache / "bagel/train/good/002.npz").unlink()
    with pytest.raises(ValueError, match="stale.*002.npz"):
        load_cached_split(cache, "bagel", "train")
    with pytest.raises(ValueError, match="split must be one of"):
        load_cached_split(cache, "bagel", "val")


def write_eyecandies(root: Path, folder_split: str, sample_id: str, anomalous: bool) -> None:
    """One Eyecandies sample (only the items the readers use) of a candy box on a flat belt."""
    data = root / "Confetto" / folder_split / "data"
    data.mkdir(parents=True, exist_ok=True)
    z = np.full((SIDE, SIDE), 0.5)
    z[16:44, 20:48] = 0.48
    low, high = 0.45, 0.55
    raw = np.round((z - low) / (high - low) * 65535).astype(np.uint16)
    Image.fromarray(raw).save(data / f"{sample_id}_depth.png")
    (data / f"{sample_id}_info_depth.yaml").write_text(
        f"normalization:\n  min: {low}\n  max: {high}\n"
    )
    Image.fromarray(np.full((SIDE, SIDE, 3), 90, np.uint8)).save(data / f"{sample_id}_image_4.png")
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[20:24, 24:30] = 255 if anomalous else 0
    Image.fromarray(mask).save(data / f"{sample_id}_mask.png")


def test_eyecandies_preprocess(tmp_path):
    root = tmp_path / "eyecandies"
    write_eyecandies(root, "train", "000", False)
    write_eyecandies(root, "val", "000", False)
    write_eyecandies(root, "test_public", "000", False)
    write_eyecandies(root, "test_public", "001", True)
    p = params(root, format="eyecandies", crop="none")  # the frame, to check depth against the drawn box
    assert run_preprocess(p)["written"] == 4
    test = load_cached_split(p.data.cache_dir, "Confetto", "test", p.data)
    assert test.defects == ["bad", "good"] and test.labels.tolist() == [1, 0]
    assert test.gt[0].sum() == 24 and not test.gt[1].any()
    box = np.zeros((32, 32), bool)
    box[8:22, 10:24] = True
    assert (test.foreground[1] == box).mean() > 0.97
    np.testing.assert_allclose(test.depth[1][9:21, 11:23], 1.0, atol=1e-3)
