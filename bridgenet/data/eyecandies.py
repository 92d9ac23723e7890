"""Eyecandies layout: index and depth-to-point-map conversion.

Layout (one file per item, sample id ``NNN`` as prefix)::

    ROOT/<Category>/{train,val,test_public}/data/NNN_<item>.<ext>

with items ``image_0..5.png`` (lights; ``data.eyecandies_rgb`` picks the RGB
input, ``image_4`` by default), ``depth.png`` (16-bit), ``info_depth.yaml``
(``normalization: {min, max}`` in metres), ``normals.png``, ``pose.txt`` and the
masks ``{bumps,dents,colors,normals}_mask.png`` and their union ``mask.png``
(plus ``obj_params.yaml`` / ``metadata.yaml``). ``test_private`` has no ground
truth and is not indexed. Splits map to ``val -> validation`` and
``test_public -> test``; a test sample is defect ``bad`` (label 1) when its
``mask.png`` has any non-zero pixel, else ``good``.

Geometry: the depth PNG stores z (distance along the optical axis), so
metres = png / 65535 * (max - min) + min. The data set documents one pinhole
camera for every image, focal length 711.11 px with the principal point at
the image centre (W / 2, H / 2); :func:`depth_to_xyz` back-projects with it
into the camera frame, which is the frame of MVTec 3D-AD's xyz maps. The
camera pose (``pose.txt``) is not applied: the method only needs z and a plane
fit, both of which are frame-independent once expressed relative to the camera.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import yaml

from bridgenet.data.samples import (
    GOOD,
    DataError,
    Sample,
    image_size,
    open_image,
    read_mask,
    validate_xyz,
    visible_entries,
)

FOCAL_LENGTH_PX = 711.11
EYECANDIES_SPLITS = {"train": "train", "val": "validation", "test_public": "test"}
IGNORED_SPLITS = ("test_private",)
BAD = "bad"
_ITEMS = {
    **{f"image_{i}": ".png" for i in range(6)},
    "depth": ".png",
    "info_depth": ".yaml",
    "normals": ".png",
    "pose": ".txt",
    "obj_params": ".yaml",
    "metadata": ".yaml",
    "bumps_mask": ".png",
    "dents_mask": ".png",
    "colors_mask": ".png",
    "normals_mask": ".png",
    "mask": ".png",
}
_FILE_NAME = re.compile(r"^(?P<id>\d+)_(?P<item>[A-Za-z0-9_]+?)(?P<ext>\.[A-Za-z0-9]+)$")
_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")


def read_info_depth(path: Path) -> tuple[float, float]:
    """(min, max) metres of the depth normalisation stored in ``info_depth.yaml``."""
    path = Path(path)
    try:
        info = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "file does not exist") from None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise DataError(path, f"unreadable YAML ({exc})") from None
    try:
        low, high = float(info["normalization"]["min"]), float(info["normalization"]["max"])
    except (TypeError, KeyError, ValueError):
        raise DataError(
            path, f"expected 'normalization: {{min: M, max: M}}', found {info!r}"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise DataError(
            path, f"normalization min {low} / max {high} must be finite with min <= max"
        )
    return low, high


def read_depth_png(path: Path, info_path: Path) -> np.ndarray:
    """Eyecandies 16-bit depth PNG as float32 (H, W) metres (z along the optical axis)."""
    path = Path(path)
    low, high = read_info_depth(info_path)
    with open_image(path) as image:
        if image.mode not in _DEPTH_MODES:
            raise DataError(
                path, f"expected a 16-bit single-channel depth PNG, found PIL mode {image.mode!r}"
            )
        try:
            raw = np.asarray(image, dtype=np.float64)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DataError(path, f"unreadable or truncated image ({exc})") from None
    return (raw / 65535.0 * (high - low) + low).astype(np.float32)


def depth_to_xyz(depth: np.ndarray, focal_px: float = FOCAL_LENGTH_PX) -> np.ndarray:
    """Pinhole back-projection of a z map (H, W) to a camera-frame point map float32 (H, W, 3).

    x = (u - W/2) z / f, y = (v - H/2) z / f, with u the column and v the row.
    """
    if depth.ndim != 2:
        raise ValueError(f"depth must be (H, W), got shape {depth.shape}")
    if not focal_px > 0:
        raise ValueError(f"focal_px must be > 0, got {focal_px}")
    height, width = depth.shape
    u = (np.arange(width, dtype=np.float32) - width / 2.0) / focal_px
    v = (np.arange(height, dtype=np.float32) - height / 2.0) / focal_px
    z = depth.astype(np.float32, copy=False)
    return np.stack([z * u[None, :], z * v[:, None], z], axis=-1)


def read_eyecandies_xyz(depth_path: Path, info_path: Path) -> np.ndarray:
    """Depth PNG + ``info_depth.yaml`` -> validated camera-frame point map float32 (H, W, 3)."""
    return validate_xyz(depth_to_xyz(read_depth_png(depth_path, info_path)), depth_path)


def _items_by_id(data_dir: Path, problems: list[DataError]) -> dict[str, dict[str, Path]]:
    by_id: dict[str, dict[str, Path]] = {}
    for path in visible_entries(data_dir):
        match = _FILE_NAME.match(path.name)
        item = match["item"] if match else None
        if path.is_dir() or match is None or _ITEMS.get(item) != match["ext"].lower():
            problems.append(DataError(path, "extra file: not an Eyecandies item NNN_<item>.<ext>"))
            continue
        by_id.setdefault(match["id"], {})[item] = path
    return by_id


def _check_headers(rgb: Path, depth: Path, mask: Path | None) -> None:
    rgb_hw = image_size(rgb)
    with open_image(depth) as image:
        mode, (width, height) = image.mode, image.size
    if mode not in _DEPTH_MODES:
        raise DataError(
            depth, f"expected a 16-bit single-channel depth PNG, found PIL mode {mode!r}"
        )
    if (height, width) != rgb_hw:
        raise DataError(
            depth, f"size {width}x{height} differs from its rgb {rgb} ({rgb_hw[1]}x{rgb_hw[0]})"
        )
    if mask is not None and image_size(mask) != rgb_hw:
        mask_hw = image_size(mask)
        raise DataError(mask, f"mask size {mask_hw[1]}x{mask_hw[0]} differs from its rgb {rgb}")


def scan_eyecandies_category(
    folder: Path, category: str, rgb_item: str
) -> tuple[list[Sample], list[DataError]]:
    """Index one Eyecandies category folder; per-file problems are returned, not raised."""
    if _ITEMS.get(rgb_item) != ".png" or not rgb_item.startswith("image_"):
        raise ValueError(f"data.eyecandies_rgb must be one of image_0..image_5, got {rgb_item!r}")
    problems: list[DataError] = []
    samples: list[Sample] = []
    for folder_split, split in EYECANDIES_SPLITS.items():
        data_dir = folder / folder_split / "data"
        if not data_dir.is_dir():
            problems.append(DataError(data_dir, "missing split data folder"))
            continue
        required = (rgb_item, "depth", "info_depth") + (("mask",) if split == "test" else ())
        for sample_id, items in sorted(_items_by_id(data_dir, problems).items()):
            missing = [item for item in required if item not in items]
            if missing:
                present = next(iter(sorted(items.values())))
                expected = ", ".join(str(data_dir / f"{sample_id}_{m}{_ITEMS[m]}") for m in missing)
                problems.append(DataError(present, f"missing partner file {expected}"))
                continue
            gt = items["mask"] if split == "test" else None
            try:
                _check_headers(items[rgb_item], items["depth"], gt)
                read_info_depth(items["info_depth"])
                defect = BAD if gt is not None and read_mask(gt).any() else GOOD
            except DataError as exc:
                problems.append(exc)
                continue
            samples.append(
                Sample(
                    category,
                    split,
                    defect,
                    sample_id,
                    items[rgb_item],
                    items["depth"],
                    gt,
                    int(defect != GOOD),
                    kind="eyecandies",
                    info_path=items["info_depth"],
                )
            )
    return samples, problems
