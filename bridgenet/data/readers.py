"""Sample index and file readers for MVTec 3D-AD and Eyecandies roots.

Both formats are indexed into the same :class:`Sample` records with the splits
``train``, ``validation`` and ``test``; :func:`load_sample` turns a record into
arrays ``rgb`` uint8 (H, W, 3), ``xyz`` float32 (H, W, 3) in metres (camera
frame, 0 where the sensor saw nothing) and ``gt`` bool (H, W) or ``None``.

MVTec 3D-AD layout (files paired by stem, never by sort order)::

    ROOT/<cat>/{train,validation}/good/{rgb,xyz}/NNN.{png,tiff}
    ROOT/<cat>/test/<defect|good>/{rgb,xyz,gt}/NNN.{png,tiff,png}

Anything else inside a split folder is an error that names the file; other
folders beside the splits (MVTec's ``calibration``) and hidden files are
ignored. The Eyecandies layout is described in :mod:`bridgenet.data.eyecandies`.

Every error is a :class:`DataError` (a ``ValueError``) whose message starts
with the offending path. :func:`scan_dataset` collects the per-file problems so
that a caller can process the good samples and report the bad ones together;
:func:`index_dataset` raises them all at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from bridgenet.config import DataConfig

LOGGER = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
GOOD = "good"
RGB_EXTENSIONS = (".png",)
XYZ_EXTENSIONS = (".tiff", ".tif")
GT_EXTENSIONS = (".png",)
_RGB_MODES = ("RGB", "RGBA", "L", "LA", "P")
_MASK_MODES = ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I")


class DataError(ValueError):
    """A data file is missing, unpaired, malformed or unreadable; ``path`` names it."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class Sample:
    """One RGB + geometry sample of a data set, with its ground truth.

    ``xyz_path`` is the MVTec xyz TIFF, or the Eyecandies ``depth.png``
    (``kind == "eyecandies"``, then ``info_path`` is its ``info_depth.yaml``).
    ``gt_path`` is ``None`` where the data set has no mask (train/validation).
    ``label`` is 0 for ``defect == "good"`` and 1 otherwise.
    """

    category: str
    split: str
    defect: str
    stem: str
    rgb_path: Path
    xyz_path: Path
    gt_path: Path | None
    label: int
    kind: Literal["mvtec3d", "eyecandies"] = "mvtec3d"
    info_path: Path | None = None

    @property
    def key(self) -> str:
        """``category/split/defect/stem``: unique within a data set."""
        return f"{self.category}/{self.split}/{self.defect}/{self.stem}"

    @property
    def source_paths(self) -> tuple[Path, ...]:
        """Every file the sample is made from."""
        paths = (self.rgb_path, self.xyz_path, self.gt_path, self.info_path)
        return tuple(p for p in paths if p is not None)


# --------------------------------------------------------------------- readers
def open_image(path: Path) -> Image.Image:
    """Open an image lazily (header only); errors name the file."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(path, f"unreadable image ({exc})") from None


def _decode(path: Path, image: Image.Image, mode: str) -> np.ndarray:
    try:
        return np.asarray(image.convert(mode))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(path, f"unreadable or truncated image ({exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the image header, without decoding the pixels."""
    with open_image(path) as image:
        width, height = image.size
    return height, width


def read_rgb(path: Path) -> np.ndarray:
    """8-bit colour image as uint8 (H, W, 3); grey and palette images are expanded.

    An alpha channel (or palette transparency) is dropped, with a warning that
    counts the pixels that were not opaque: their colour is used as it is.
    """
    path = Path(path)
    with open_image(path) as image:
        if image.mode not in _RGB_MODES:
            raise DataError(path, f"expected an 8-bit RGB image, found PIL mode {image.mode!r}")
        if image.mode in ("RGBA", "LA") or "transparency" in image.info:
            alpha = _decode(path, image, "RGBA")[..., 3]
            LOGGER.warning("%s: alpha channel dropped (%d of %d pixels not opaque); the network "
                           "reads RGB only", path, int((alpha < 255).sum()), alpha.size)
        return _decode(path, image, "RGB")


def read_mask(path: Path) -> np.ndarray:
    """Ground-truth mask as bool (H, W): any non-zero pixel is anomalous."""
    path = Path(path)
    with open_image(path) as image:
        if image.mode not in _MASK_MODES:
            raise DataError(path, f"expected a single-channel mask, found PIL mode {image.mode!r}")
        if image.mode in ("I;16", "I"):
            return _decode(path, image, "I") > 0
        return _decode(path, image, "L") > 0


def tiff_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a TIFF's first series, without reading its pixels."""
    path = Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return tuple(series.shape), np.dtype(series.dtype)
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except (tifffile.TiffFileError, OSError, ValueError, IndexError) as exc:
        raise DataError(path, f"unreadable TIFF ({exc})") from None


def _check_xyz_header(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if len(shape) != 3 or shape[2] != 3:
        raise DataError(path, f"expected an H x W x 3 point map, found shape {shape}")
    if dtype.kind != "f":
        raise DataError(path, f"expected floating-point xyz values, found dtype {dtype}")


def validate_xyz(xyz: np.ndarray, path: Path | str) -> np.ndarray:
    """Check an organised point map and return it as float32 (H, W, 3).

    Valid points have ``z != 0``; NaN/Inf anywhere or no valid point at all
    raise a :class:`DataError` naming ``path``.
    """
    shape = tuple(xyz.shape)
    _check_xyz_header(Path(path), shape, xyz.dtype)
    finite = np.isfinite(xyz)
    if not finite.all():
        bad = int((~finite.all(axis=-1)).sum())
        raise DataError(path, f"{bad} of {shape[0] * shape[1]} points hold NaN or Inf")
    xyz = xyz.astype(np.float32, copy=False)
    if not (xyz[..., 2] != 0).any():
        raise DataError(path, "point cloud has no valid point (z == 0 everywhere)")
    return xyz


def read_xyz(path: Path) -> np.ndarray:
    """MVTec xyz TIFF as float32 (H, W, 3) in metres, validated by :func:`validate_xyz`."""
    path = Path(path)
    shape, dtype = tiff_header(path)
    _check_xyz_header(path, shape, dtype)
    try:
        xyz = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise DataError(path, f"unreadable or truncated TIFF ({exc})") from None
    return validate_xyz(np.asarray(xyz), path)


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Arrays of one sample: rgb uint8 (H, W, 3), xyz float32 (H, W, 3), gt bool (H, W) or None."""
    rgb = read_rgb(sample.rgb_path)
    if sample.kind == "eyecandies":
        from bridgenet.data.eyecandies import read_eyecandies_xyz

        if sample.info_path is None:
            raise DataError(sample.xyz_path, "Eyecandies sample without info_depth.yaml")
        xyz = read_eyecandies_xyz(sample.xyz_path, sample.info_path)
    else:
        xyz = read_xyz(sample.xyz_path)
    if xyz.shape[:2] != rgb.shape[:2]:
        raise DataError(
            sample.xyz_path,
            f"size {xyz.shape[1]}x{xyz.shape[0]} differs from its rgb {sample.rgb_path} "
            f"({rgb.shape[1]}x{rgb.shape[0]})",
        )
    gt = None
    if sample.gt_path is not None:
        gt = read_mask(sample.gt_path)
        if gt.shape != rgb.shape[:2]:
            raise DataError(
                sample.gt_path,
                f"mask size {gt.shape[1]}x{gt.shape[0]} differs from its rgb "
                f"({rgb.shape[1]}x{rgb.shape[0]})",
            )
    return rgb, xyz, gt


# ---------------------------------------------------------------- MVTec index
def visible_entries(folder: Path) -> list[Path]:
    """Entries of a folder, hidden ones (``.DS_Store`` ...) left out, sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _files_by_stem(
    folder: Path, extensions: tuple[str, ...], problems: list[DataError]
) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in visible_entries(folder):
        if path.is_dir() or path.suffix.lower() not in extensions:
            problems.append(
                DataError(
                    path, f"extra file: {folder.name}/ holds only {'/'.join(extensions)} files"
                )
            )
        elif path.stem in files:
            problems.append(DataError(path, f"duplicate stem, also {files[path.stem].name}"))
        else:
            files[path.stem] = path
    return files


def _check_mvtec_headers(rgb: Path, xyz: Path, gt: Path | None) -> None:
    rgb_hw = image_size(rgb)
    shape, dtype = tiff_header(xyz)
    _check_xyz_header(xyz, shape, dtype)
    if shape[:2] != rgb_hw:
        raise DataError(
            xyz, f"size {shape[1]}x{shape[0]} differs from its rgb {rgb} ({rgb_hw[1]}x{rgb_hw[0]})"
        )
    if gt is not None and image_size(gt) != rgb_hw:
        gt_hw = image_size(gt)
        raise DataError(
            gt,
            f"mask size {gt_hw[1]}x{gt_hw[0]} differs from its rgb {rgb} ({rgb_hw[1]}x{rgb_hw[0]})",
        )


def _scan_mvtec_defect(
    folder: Path, category: str, split: str, problems: list[DataError]
) -> list[Sample]:
    defect = folder.name
    parts = {"rgb": RGB_EXTENSIONS, "xyz": XYZ_EXTENSIONS, "gt": GT_EXTENSIONS}
    required = ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz")
    for entry in visible_entries(folder):
        if entry.name not in parts or not entry.is_dir():
            problems.append(
                DataError(entry, f"extra entry: {folder} holds only {'/, '.join(parts)}/ folders")
            )
    files: dict[str, dict[str, Path]] = {}
    for part, extensions in parts.items():
        sub = folder / part
        if sub.is_dir():
            files[part] = _files_by_stem(sub, extensions, problems)
        elif part in required:
            problems.append(DataError(sub, "missing folder"))
            return []
    primary = sorted(set(files["rgb"]) | set(files["xyz"]))
    for stem in sorted(set(files.get("gt", {})) - set(primary)):
        problems.append(
            DataError(files["gt"][stem], "extra file: no rgb/xyz sample with this stem")
        )
    samples = []
    for stem in primary:
        found = {part: files[part].get(stem) for part in files}
        missing = [p for p in required if found.get(p) is None]
        if missing:
            present = next(found[p] for p in ("rgb", "xyz", "gt") if found.get(p) is not None)
            expected = ", ".join(f"{folder / p}/{stem}{parts[p][0]}" for p in missing)
            problems.append(DataError(present, f"missing partner file {expected}"))
            continue
        try:
            _check_mvtec_headers(found["rgb"], found["xyz"], found.get("gt"))
        except DataError as exc:
            problems.append(exc)
            continue
        samples.append(
            Sample(
                category,
                split,
                defect,
                stem,
                found["rgb"],
                found["xyz"],
                found.get("gt"),
                int(defect != GOOD),
            )
        )
    return samples


def scan_mvtec_category(folder: Path, category: str) -> tuple[list[Sample], list[DataError]]:
    """Index one MVTec 3D-AD category folder; structural problems are returned, not raised."""
    problems: list[DataError] = []
    samples: list[Sample] = []
    for split in SPLITS:
        split_dir = folder / split
        if not split_dir.is_dir():
            problems.append(DataError(split_dir, "missing split folder"))
            continue
        for entry in visible_entries(split_dir):
            if not entry.is_dir():
                problems.append(
                    DataError(entry, f"extra file: {split_dir} holds only defect folders")
                )
            elif split != "test" and entry.name != GOOD:
                problems.append(DataError(entry, f"extra folder: {split} holds only '{GOOD}'"))
            else:
                samples.extend(_scan_mvtec_defect(entry, category, split, problems))
    return samples, problems


# ----------------------------------------------------------------- dispatcher
def _is_category(folder: Path, data_format: str) -> bool:
    if data_format == "eyecandies":
        from bridgenet.data.eyecandies import EYECANDIES_SPLITS

        names = EYECANDIES_SPLITS
    else:
        names = SPLITS
    return any((folder / name).is_dir() for name in names)


def discover_categories(data_cfg: DataConfig) -> list[str]:
    """``data.categories`` (each checked to exist) or every category folder under ``data.root``."""
    root = Path(data_cfg.root)
    if not root.is_dir():
        raise DataError(root, "data.root is not a folder")
    if data_cfg.categories:
        missing = [c for c in data_cfg.categories if not (root / c).is_dir()]
        if missing:
            found = [p.name for p in visible_entries(root) if p.is_dir()]
            raise DataError(
                root, f"data.categories lists {missing}, not found; folders found: {found}"
            )
        return list(data_cfg.categories)
    categories = []
    for entry in visible_entries(root):
        if entry.is_dir() and _is_category(entry, data_cfg.format):
            categories.append(entry.name)
        elif entry.is_dir():
            LOGGER.warning(
                "%s: no split folder inside, not a %s category; skipped", entry, data_cfg.format
            )
    if not categories:
        raise DataError(root, f"no {data_cfg.format} category folder found")
    return categories


def scan_dataset(data_cfg: DataConfig) -> tuple[dict[str, list[Sample]], list[DataError]]:
    """Index ``data.root``: samples that passed the checks per category, and every problem.

    A bad root or a listed category that does not exist raises at once; per-file
    problems (unpaired, extra, size mismatch, malformed header) are collected.
    Samples are ordered by split (train, validation, test), defect, stem.
    """
    index: dict[str, list[Sample]] = {}
    problems: list[DataError] = []
    root = Path(data_cfg.root)
    for category in discover_categories(data_cfg):
        if data_cfg.format == "eyecandies":
            from bridgenet.data.eyecandies import scan_eyecandies_category

            samples, found = scan_eyecandies_category(
                root / category, category, data_cfg.eyecandies_rgb
            )
        else:
            samples, found = scan_mvtec_category(root / category, category)
        order = {split: i for i, split in enumerate(SPLITS)}
        index[category] = sorted(samples, key=lambda s: (order[s.split], s.defect, s.stem))
        problems.extend(found)
        LOGGER.debug("%s: %d samples, %d problems", category, len(samples), len(found))
    return index, problems


def index_dataset(data_cfg: DataConfig) -> dict[str, list[Sample]]:
    """Category -> samples of ``data.root``; raises one :class:`DataError` listing every problem."""
    index, problems = scan_dataset(data_cfg)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listing = "\n  ".join(str(p) for p in problems)
        raise DataError(
            Path(data_cfg.root), f"{len(problems)} problems in the data set:\n  {listing}"
        )
    return index
