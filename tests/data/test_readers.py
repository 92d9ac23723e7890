"""Readers on small files written in the exact MVTec 3D-AD and Eyecandies layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from bridgenet.config import DataConfig
from bridgenet.data.eyecandies import FOCAL_LENGTH_PX, depth_to_xyz
from bridgenet.data.readers import load_sample, scan_dataset
from bridgenet.data.samples import DataError, Sample, read_rgb, read_xyz

H, W = 24, 32
# tifffile stores float (H, W, 3) as contiguous RGB samples, like the real data set, and warns
# that its default may change; the readers accept either layout.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*stored as RGB with contiguous samples:DeprecationWarning"
)


def index_dataset(data_cfg: DataConfig) -> dict[str, list[Sample]]:
    """Category -> samples of ``data.root``; raises one DataError listing every problem."""
    index, problems = scan_dataset(data_cfg)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listing = "\n  ".join(str(p) for p in problems)
        raise DataError(Path(data_cfg.root), f"{len(problems)} problems in the data set:\n  {listing}")
    return index


# ------------------------------------------------------------------ writers
def xyz_map(seed: int = 0, height: int = H, width: int = W) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = np.zeros((height, width, 3), np.float32)
    xyz[..., 0] = np.linspace(-0.05, 0.05, width)[None, :]
    xyz[..., 1] = np.linspace(-0.04, 0.04, height)[:, None]
    xyz[..., 2] = 0.5 + rng.normal(0, 1e-3, (height, width))
    xyz[0, 0] = 0  # one missing point, as in real scans
    return xyz


def write_mvtec(
    root: Path,
    category: str,
    split: str,
    defect: str,
    stem: str,
    seed: int = 0,
    gt: bool | None = None,
) -> dict[str, Path]:
    """Write rgb/xyz (and gt for test) of one MVTec 3D-AD sample; returns the paths."""
    folder = root / category / split / defect
    rng = np.random.default_rng(seed)
    paths = {"rgb": folder / "rgb" / f"{stem}.png", "xyz": folder / "xyz" / f"{stem}.tiff"}
    if gt if gt is not None else split == "test":
        paths["gt"] = folder / "gt" / f"{stem}.png"
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(paths["rgb"])
    tifffile.imwrite(paths["xyz"], xyz_map(seed))
    if "gt" in paths:
        mask = np.zeros((H, W), np.uint8)
        if defect != "good":
            mask[5:10, 6:12] = 255
        Image.fromarray(mask).save(paths["gt"])
    return paths


def mvtec_root(tmp_path: Path, categories=("bagel", "dowel")) -> Path:
    root = tmp_path / "mvtec"
    for c, category in enumerate(categories):
        write_mvtec(root, category, "train", "good", "000", seed=c)
        write_mvtec(root, category, "train", "good", "001", seed=c + 1)
        write_mvtec(root, category, "validation", "good", "000", seed=c + 2)
        write_mvtec(root, category, "test", "good", "000", seed=c + 3)
        write_mvtec(root, category, "test", "crack", "000", seed=c + 4)
        write_mvtec(root, category, "test", "crack", "001", seed=c + 5)
    (root / categories[0] / "calibration").mkdir()
    (root / categories[0] / "calibration" / "camera_parameters.json").write_text("{}")
    (root / "readme.txt").write_text("MVTec 3D-AD")
    return root


def cfg(root: Path, **kwargs) -> DataConfig:
    return DataConfig(root=str(root), **kwargs)


def single_error(root: Path, **kwargs) -> DataError:
    _, problems = scan_dataset(cfg(root, **kwargs))
    assert len(problems) == 1, [str(p) for p in problems]
    with pytest.raises(DataError) as info:
        index_dataset(cfg(root, **kwargs))
    assert str(info.value) == str(problems[0])
    return problems[0]


# ----------------------------------------------------------- MVTec 3D-AD
def test_mvtec_index_and_round_trip(tmp_path):
    root = mvtec_root(tmp_path)
    index = index_dataset(cfg(root))
    assert sorted(index) == ["bagel", "dowel"]
    samples = index["bagel"]
    assert [(s.split, s.defect, s.stem, s.label) for s in samples] == [
        ("train", "good", "000", 0),
        ("train", "good", "001", 0),
        ("validation", "good", "000", 0),
        ("test", "crack", "000", 1),
        ("test", "crack", "001", 1),
        ("test", "good", "000", 0),
    ]
    assert all(s.gt_path is None for s in samples if s.split != "test")
    crack = samples[3]
    assert crack.rgb_path.stem == crack.xyz_path.stem == crack.gt_path.stem == "000"
    rgb, xyz, gt = load_sample(crack)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3)
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(crack.rgb_path)))
    assert xyz.dtype == np.float32 and xyz.shape == (H, W, 3)
    np.testing.assert_array_equal(xyz, xyz_map(seed=4))
    assert gt.dtype == bool and gt.sum() == 30 and gt[5:10, 6:12].all()
    assert load_sample(samples[0])[2] is None


def test_listed_categories_only(tmp_path):
    root = mvtec_root(tmp_path)
    assert list(index_dataset(cfg(root, categories=("dowel",)))) == ["dowel"]


def test_listed_category_that_does_not_exist(tmp_path):
    root = mvtec_root(tmp_path)
    with pytest.raises(DataError, match=r"\['carrot'\], not found") as info:
        index_dataset(cfg(root, categories=("bagel", "carrot")))
    assert str(root) in str(info.value)


def test_root_without_categories(tmp_path):
    (tmp_path / "empty" / "notes").mkdir(parents=True)
    with pytest.raises(DataError, match="no mvtec3d category folder found"):
        index_dataset(cfg(tmp_path / "empty"))
    with pytest.raises(DataError, match="not a folder"):
        index_dataset(cfg(tmp_path / "absent"))


def test_missing_partner_names_both_files(tmp_path):
    root = mvtec_root(tmp_path)
    rgb = write_mvtec(root, "bagel", "train", "good", "002")["rgb"]
    (root / "bagel/train/good/xyz/002.tiff").unlink()
    error = single_error(root)
    assert error.path == rgb
    assert "missing partner" in str(error) and "bagel/train/good/xyz/002.tiff" in str(error)


def test_missing_gt_of_a_test_sample(tmp_path):
    root = mvtec_root(tmp_path)
    (root / "dowel/test/crack/gt/001.png").unlink()
    error = single_error(root)
    assert "dowel/test/crack/gt/001.png" in str(error)


def test_extra_file(tmp_path):
    root = mvtec_root(tmp_path)
    extra = root / "bagel/train/good/rgb/000.jpg"
    extra.write_bytes(b"x")
    error = single_error(root)
    assert error.path == extra and "extra file" in str(error)


def test_extra_gt_without_sample(tmp_path):
    root = mvtec_root(tmp_path)
    extra = root / "bagel/test/crack/gt/007.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(extra)
    error = single_error(root)
    assert error.path == extra and "no rgb/xyz sample" in str(error)


def test_missing_split_folder(tmp_path):
    root = mvtec_root(tmp_path)
    for path in sorted((root / "dowel" / "validation").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / "dowel" / "validation").rmdir()
    error = single_error(root)
    assert error.path == root / "dowel" / "validation" and "missing split" in str(error)


def test_size_mismatch(tmp_path):
    root = mvtec_root(tmp_path)
    xyz = root / "bagel/train/good/xyz/001.tiff"
    tifffile.imwrite(xyz, xyz_map(height=H + 2))
    error = single_error(root)
    assert error.path == xyz and "differs from its rgb" in str(error) and "001.png" in str(error)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.ones((H, W), np.float32), "H x W x 3"),
        (np.ones((H, W, 4), np.float32), "H x W x 3"),
        (np.ones((H, W, 3), np.uint16), "floating-point"),
    ],
)
def test_tiff_that_is_not_a_float_point_map(tmp_path, array, message):
    root = mvtec_root(tmp_path)
    xyz = root / "dowel/test/good/xyz/000.tiff"
    tifffile.imwrite(xyz, array)
    error = single_error(root)
    assert error.path == xyz and message in str(error)
    with pytest.raises(DataError, match=message):
        read_xyz(xyz)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf(tmp_path, value):
    root = mvtec_root(tmp_path)
    xyz_path = root / "bagel/test/crack/xyz/001.tiff"
    xyz = xyz_map()
    xyz[3, 4, 1] = value
    tifffile.imwrite(xyz_path, xyz)
    sample = next(s for s in index_dataset(cfg(root))["bagel"] if s.xyz_path == xyz_path)
    with pytest.raises(DataError, match="1 of 768 points hold NaN or Inf") as info:
        load_sample(sample)
    assert info.value.path == xyz_path and str(xyz_path) in str(info.value)


def test_no_valid_point(tmp_path):
    root = mvtec_root(tmp_path)
    xyz_path = root / "bagel/train/good/xyz/000.tiff"
    tifffile.imwrite(xyz_path, np.zeros((H, W, 3), np.float32))
    with pytest.raises(DataError, match="no valid point") as info:
        read_xyz(xyz_path)
    assert info.value.path == xyz_path


def test_truncated_png(tmp_path):
    root = mvtec_root(tmp_path)
    rgb = root / "bagel/validation/good/rgb/000.png"
    rgb.write_bytes(rgb.read_bytes()[:-200])
    sample = next(s for s in index_dataset(cfg(root))["bagel"] if s.rgb_path == rgb)
    with pytest.raises(DataError, match="truncated") as info:
        load_sample(sample)
    assert info.value.path == rgb and str(rgb) in str(info.value)


def test_unreadable_png(tmp_path):
    root = mvtec_root(tmp_path)
    rgb = root / "bagel/validation/good/rgb/000.png"
    rgb.write_bytes(b"not a png")
    error = single_error(root)
    assert error.path == rgb and "unreadable image" in str(error)
    with pytest.raises(DataError, match="unreadable image"):
        read_rgb(rgb)


def test_truncated_tiff(tmp_path):
    root = mvtec_root(tmp_path)
    xyz = root / "bagel/validation/good/xyz/000.tiff"
    xyz.write_bytes(xyz.read_bytes()[: 8 + H * W * 6])
    with pytest.raises(DataError) as info:
        read_xyz(xyz)
    assert info.value.path == xyz and "TIFF" in str(info.value)


def test_every_problem_is_listed(tmp_path):
    root = mvtec_root(tmp_path)
    (root / "bagel/train/good/xyz/000.tiff").unlink()
    (root / "dowel/test/crack/rgb/notes.txt").write_text("x")
    index, problems = scan_dataset(cfg(root))
    assert len(problems) == 2
    assert len(index["bagel"]) == 5 and len(index["dowel"]) == 6
    with pytest.raises(DataError, match="2 problems") as info:
        index_dataset(cfg(root))
    assert "bagel/train/good/rgb/000.png" in str(info.value) and "notes.txt" in str(info.value)


# ------------------------------------------------------------- Eyecandies
E = 16  # Eyecandies renders are 512 x 512; a small square keeps the tests fast


def write_eyecandies(
    root: Path,
    category: str,
    folder_split: str,
    sample_id: str,
    anomalous: bool = False,
    seed: int = 0,
) -> dict[str, Path]:
    """Write one Eyecandies sample with every public item; returns the paths."""
    data = root / category / folder_split / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = {}
    for i in range(6):
        paths[f"image_{i}"] = data / f"{sample_id}_image_{i}.png"
        Image.fromarray(np.full((E, E, 3), 40 * i, np.uint8)).save(paths[f"image_{i}"])
    paths["depth"] = data / f"{sample_id}_depth.png"
    raw = rng.integers(0, 65536, (E, E)).astype(np.uint16)
    Image.fromarray(raw).save(paths["depth"])
    paths["info_depth"] = data / f"{sample_id}_info_depth.yaml"
    paths["info_depth"].write_text(yaml.safe_dump({"normalization": {"min": 0.6, "max": 0.8}}))
    paths["normals"] = data / f"{sample_id}_normals.png"
    Image.fromarray(np.full((E, E, 3), 128, np.uint8)).save(paths["normals"])
    paths["pose"] = data / f"{sample_id}_pose.txt"
    np.savetxt(paths["pose"], np.eye(4))
    mask = np.zeros((E, E), np.uint8)
    if anomalous:
        mask[4:8, 4:8] = 255
    for name in ("mask", "bumps_mask", "dents_mask", "colors_mask", "normals_mask"):
        paths[name] = data / f"{sample_id}_{name}.png"
        Image.fromarray(mask).save(paths[name])
    return paths


def eyecandies_root(tmp_path: Path) -> Path:
    root = tmp_path / "eyecandies"
    for category in ("CandyCane", "GummyBear"):
        write_eyecandies(root, category, "train", "000")
        write_eyecandies(root, category, "train", "001", seed=1)
        write_eyecandies(root, category, "val", "000", seed=2)
        write_eyecandies(root, category, "test_public", "000", seed=3)
        write_eyecandies(root, category, "test_public", "001", anomalous=True, seed=4)
    (root / "CandyCane" / "test_private" / "data").mkdir(parents=True)
    return root


def ecfg(root: Path, **kwargs) -> DataConfig:
    return DataConfig(root=str(root), format="eyecandies", **kwargs)


def single_eyecandies_error(root: Path) -> DataError:
    _, problems = scan_dataset(ecfg(root))
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def test_eyecandies_index_and_round_trip(tmp_path):
    root = eyecandies_root(tmp_path)
    index = index_dataset(ecfg(root))
    assert sorted(index) == ["CandyCane", "GummyBear"]
    samples = index["CandyCane"]
    assert [(s.split, s.defect, s.stem, s.label) for s in samples] == [
        ("train", "good", "000", 0),
        ("train", "good", "001", 0),
        ("validation", "good", "000", 0),
        ("test", "bad", "001", 1),
        ("test", "good", "000", 0),
    ]
    bad = samples[3]
    assert bad.kind == "eyecandies" and bad.rgb_path.name == "001_image_4.png"
    assert bad.xyz_path.name == "001_depth.png" and bad.info_path.name == "001_info_depth.yaml"
    rgb, xyz, gt = load_sample(bad)
    np.testing.assert_array_equal(rgb, np.full((E, E, 3), 160, np.uint8))
    raw = np.asarray(Image.open(bad.xyz_path)).astype(np.float64)
    np.testing.assert_allclose(xyz[..., 2], raw / 65535 * 0.2 + 0.6, rtol=1e-6)
    u = np.arange(E) - E / 2
    np.testing.assert_allclose(
        xyz[..., 0], u[None, :] * xyz[..., 2] / FOCAL_LENGTH_PX, rtol=1e-5, atol=1e-9
    )
    np.testing.assert_allclose(
        xyz[..., 1], u[:, None] * xyz[..., 2] / FOCAL_LENGTH_PX, rtol=1e-5, atol=1e-9
    )
    assert gt.sum() == 16
    assert load_sample(samples[4])[2].sum() == 0
    assert load_sample(samples[0])[2] is None


def test_eyecandies_rgb_item_is_configurable(tmp_path):
    root = eyecandies_root(tmp_path)
    sample = index_dataset(ecfg(root, eyecandies_rgb="image_2"))["GummyBear"][0]
    assert sample.rgb_path.name == "000_image_2.png"
    assert (load_sample(sample)[0] == 80).all()
    with pytest.raises(ValueError, match="image_0..image_5"):
        index_dataset(ecfg(root, eyecandies_rgb="normals"))


def test_depth_to_xyz_centre_pixel_is_on_the_axis():
    xyz = depth_to_xyz(np.full((4, 6), 0.7, np.float32))
    assert xyz.shape == (4, 6, 3) and xyz.dtype == np.float32
    np.testing.assert_allclose(xyz[2, 3], [0, 0, 0.7])
    np.testing.assert_allclose(xyz[2, 4, 0], 0.7 / FOCAL_LENGTH_PX, rtol=1e-6)


def test_eyecandies_missing_info_depth(tmp_path):
    root = eyecandies_root(tmp_path)
    (root / "GummyBear/val/data/000_info_depth.yaml").unlink()
    error = single_eyecandies_error(root)
    assert "missing partner" in str(error) and "GummyBear/val/data/000_info_depth.yaml" in str(
        error
    )


def test_eyecandies_missing_mask_in_test(tmp_path):
    root = eyecandies_root(tmp_path)
    (root / "CandyCane/test_public/data/001_mask.png").unlink()
    error = single_eyecandies_error(root)
    assert "CandyCane/test_public/data/001_mask.png" in str(error)


def test_eyecandies_extra_file(tmp_path):
    root = eyecandies_root(tmp_path)
    extra = root / "CandyCane/train/data/000_thumbnail.jpg"
    extra.write_bytes(b"x")
    error = single_eyecandies_error(root)
    assert error.path == extra and "extra file" in str(error)


def test_eyecandies_size_mismatch(tmp_path):
    root = eyecandies_root(tmp_path)
    depth = root / "CandyCane/train/data/001_depth.png"
    Image.fromarray(np.ones((E, E + 1), np.uint16)).save(depth)
    error = single_eyecandies_error(root)
    assert error.path == depth and "differs from its rgb" in str(error)


def test_eyecandies_depth_must_be_16_bit(tmp_path):
    root = eyecandies_root(tmp_path)
    depth = root / "CandyCane/train/data/001_depth.png"
    Image.fromarray(np.ones((E, E), np.uint8)).save(depth)
    error = single_eyecandies_error(root)
    assert error.path == depth and "16-bit" in str(error)


def test_eyecandies_bad_info_depth(tmp_path):
    root = eyecandies_root(tmp_path)
    info = root / "CandyCane/train/data/001_info_depth.yaml"
    info.write_text("normalization: {min: 0.8}\n")
    error = single_eyecandies_error(root)
    assert error.path == info and "normalization" in str(error)


def test_eyecandies_truncated_depth(tmp_path):
    root = eyecandies_root(tmp_path)
    depth = root / "GummyBear/train/data/000_depth.png"
    depth.write_bytes(depth.read_bytes()[:-100])
    sample = next(s for s in index_dataset(ecfg(root))["GummyBear"] if s.xyz_path == depth)
    with pytest.raises(DataError, match="truncated") as info:
        load_sample(sample)
    assert info.value.path == depth
