"""The data set of ``data.root``: its categories, its sample index, and one sample's arrays.

Both formats (:mod:`bridgenet.data.mvtec`, :mod:`bridgenet.data.eyecandies`) are
indexed into the same :class:`~bridgenet.data.samples.Sample` records with the splits
``train``, ``validation`` and ``test``; :func:`load_sample` turns a record into arrays
``rgb`` uint8 (H, W, 3), ``xyz`` float32 (H, W, 3) in metres (camera frame, 0 where
the sensor saw nothing) and ``gt`` bool (H, W) or ``None``. :func:`scan_dataset`
collects the per-file problems so that a caller can process the good samples and
report the bad ones together.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from bridgenet.config import DataConfig
from bridgenet.data.eyecandies import (
    EYECANDIES_SPLITS,
    read_eyecandies_xyz,
    scan_eyecandies_category,
)
from bridgenet.data.mvtec import scan_mvtec_category
from bridgenet.data.samples import (
    SPLITS,
    DataError,
    Sample,
    read_mask,
    read_rgb,
    read_xyz,
    visible_entries,
)

LOGGER = logging.getLogger(__name__)


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Arrays of one sample: rgb uint8 (H, W, 3), xyz float32 (H, W, 3), gt bool (H, W) or None."""
    rgb = read_rgb(sample.rgb_path)
    if sample.kind == "eyecandies":
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


# ----------------------------------------------------------------- dispatcher
def _is_category(folder: Path, data_format: str) -> bool:
    if data_format == "eyecandies":
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


def scan_category(data_cfg: DataConfig, category: str) -> tuple[list[Sample], list[DataError]]:
    """Index one category folder of ``data.root`` in ``data.format``; per-file problems are returned."""
    folder = Path(data_cfg.root) / category
    if data_cfg.format == "eyecandies":
        return scan_eyecandies_category(folder, category, data_cfg.eyecandies_rgb)
    return scan_mvtec_category(folder, category)


def scan_dataset(data_cfg: DataConfig) -> tuple[dict[str, list[Sample]], list[DataError]]:
    """Index ``data.root``: samples that passed the checks per category, and every problem.

    A bad root or a listed category that does not exist raises at once; per-file
    problems (unpaired, extra, size mismatch, malformed header) are collected.
    Samples are ordered by split (train, validation, test), defect, stem.
    """
    index: dict[str, list[Sample]] = {}
    problems: list[DataError] = []
    for category in discover_categories(data_cfg):
        samples, found = scan_category(data_cfg, category)
        order = {split: i for i, split in enumerate(SPLITS)}
        index[category] = sorted(samples, key=lambda s: (order[s.split], s.defect, s.stem))
        problems.extend(found)
        LOGGER.debug("%s: %d samples, %d problems", category, len(samples), len(found))
    return index, problems
