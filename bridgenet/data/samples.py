"""Sample records and file readers shared by the MVTec 3D-AD and Eyecandies layouts.

A :class:`Sample` names one RGB + geometry sample and its ground truth; the readers
turn files into arrays (``rgb`` uint8 (H, W, 3), ``xyz`` float32 (H, W, 3) in
metres, ``gt`` bool (H, W)). Every error is a :class:`DataError` (a ``ValueError``)
whose message starts with the offending path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

LOGGER = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
GOOD = "good"
# The operator's confirmed parts (``bridgenet feedback``): goods join ``train`` under stems with this
# prefix (so they never collide with data.root's), defects form the ``line`` split, never trained on.
FEEDBACK_STEM_PREFIX = "feedback-"
LINE_SPLIT = "line"
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


def check_xyz_header(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
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
    check_xyz_header(Path(path), shape, xyz.dtype)
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
    check_xyz_header(path, shape, dtype)
    try:
        xyz = tifffile.imread(path)
    except (tifffile.TiffFileError, OSError, ValueError) as exc:
        raise DataError(path, f"unreadable or truncated TIFF ({exc})") from None
    return validate_xyz(np.asarray(xyz), path)


def visible_entries(folder: Path) -> list[Path]:
    """Entries of a folder, hidden ones (``.DS_Store`` ...) left out, sorted."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
