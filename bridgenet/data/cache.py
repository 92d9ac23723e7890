"""The preprocessing cache's layout and the cached split, the data every stage after preprocessing reads.

``{cache_dir}/{category}/`` holds one compressed ``.npz`` per sample at
``{split}/{defect}/{stem}.npz`` (written by :mod:`bridgenet.preprocess`), ``index.csv``
(one row per cached sample) and ``manifest.json`` (the settings the cache was built
with and each entry's fingerprint). :func:`load_cached_split` stacks one split of a
category into a :class:`CachedSplit`; :meth:`CachedSplit.fingerprint` names its
content, so that an evaluation can say which data it was made on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import zipfile
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from bridgenet.config import DataConfig
from bridgenet.data.samples import LINE_SPLIT, SPLITS

CACHE_VERSION = 4  # 2: entries hold their fingerprint; 3: and their crop box; 4: and the part's missing points
SETTING_KEYS = (
    "format",
    "eyecandies_rgb",
    "image_size",
    "plane_distance",
    "ransac_iterations",
    "ransac_sample_points",
    "morph_kernel",
    "min_component_pixels",
    "crop",
    "crop_margin",
)
INDEX_COLUMNS = (
    "category",
    "split",
    "defect",
    "stem",
    "label",
    "cache_path",
    "rgb_path",
    "xyz_path",
    "gt_path",
)
MANIFEST = "manifest.json"
INDEX = "index.csv"


def cache_settings(data_cfg: DataConfig) -> dict[str, object]:
    """The ``data:`` settings that change a cache entry's content."""
    return {key: getattr(data_cfg, key) for key in SETTING_KEYS}


def entry_fingerprint(path: Path) -> str | None:
    """The fingerprint a cache entry holds; None when the file is absent, unreadable or has none.

    Reads only the small ``fingerprint`` member of the ``.npz``, not the arrays.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["fingerprint"]) if "fingerprint" in data.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


@dataclass(frozen=True)
class CachedSplit:
    """One category's split, stacked: N samples of side S.

    rgb uint8 (N, S, S, 3), depth float32 (N, S, S) in [0, 1], foreground bool
    (N, S, S), labels int64 (N,), defects/stems lists of N strings, gt a list of
    N bool (H0, W0) masks at original resolution, original_sizes int64 (N, 2),
    crop_boxes int64 (N, 4): the box of the original frame each sample's arrays show
    (top, left, height, width); missing float32 (N,) or None: the share of each part's pixels
    without a measured point (None: not known, a split made by hand); masked bool (N,) or None:
    whether each sample's ground truth is known (False: a confirmed line defect without a mask,
    scored at image level only; None: every one's is).
    """

    category: str
    split: str
    rgb: np.ndarray
    depth: np.ndarray
    foreground: np.ndarray
    labels: np.ndarray
    defects: list[str]
    stems: list[str]
    gt: list[np.ndarray]
    original_sizes: np.ndarray
    crop_boxes: np.ndarray
    masked: np.ndarray | None = None
    missing: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.stems)

    def fingerprint(self) -> str:
        """sha256 over the sample names, labels and network inputs: names the data scored."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.category, self.defects, self.stems]).encode())
        for array in (self.labels, self.rgb, self.depth, self.crop_boxes):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def known_masks(self) -> np.ndarray:
        """(N,) bool: the samples whose ground-truth mask is known (pixel metrics read only these)."""
        return np.ones(len(self), bool) if self.masked is None else np.asarray(self.masked, bool)

    def select(self, index: np.ndarray) -> CachedSplit:
        """The samples at ``index`` (integer positions), in that order."""
        index = np.asarray(index, dtype=np.int64)
        picked = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("rgb", "depth", "foreground", "labels", "original_sizes", "crop_boxes"):
            picked[name] = picked[name][index]
        for name in ("defects", "stems", "gt"):
            picked[name] = [picked[name][i] for i in index]
        picked["masked"] = self.known_masks()[index]
        picked["missing"] = None if self.missing is None else self.missing[index]
        return CachedSplit(**picked)


def join_splits(first: CachedSplit, second: CachedSplit, split: str) -> CachedSplit:
    """``first``'s samples then ``second``'s, as one split named ``split`` (same category and side)."""
    if first.category != second.category or first.rgb.shape[1:] != second.rgb.shape[1:]:
        raise ValueError(f"cannot join {first.category}/{first.split} {first.rgb.shape[1:]} and "
                         f"{second.category}/{second.split} {second.rgb.shape[1:]}")
    joined = {"category": first.category, "split": split}
    for name in ("rgb", "depth", "foreground", "labels", "original_sizes", "crop_boxes"):
        joined[name] = np.concatenate([getattr(first, name), getattr(second, name)])
    for name in ("defects", "stems", "gt"):
        joined[name] = [*getattr(first, name), *getattr(second, name)]
    joined["masked"] = np.concatenate([first.known_masks(), second.known_masks()])
    both = first.missing is not None and second.missing is not None
    joined["missing"] = np.concatenate([first.missing, second.missing]) if both else None
    return CachedSplit(**joined)


def _stale(folder: Path, why: str) -> ValueError:
    return ValueError(f"{folder}: stale preprocessing cache ({why}); run `bridgenet preprocess`")


def cached_splits(cache_dir: str | Path, category: str) -> set[str]:
    """The splits ``{cache_dir}/{category}/index.csv`` lists samples of (empty when there is no index)."""
    index_path = Path(cache_dir) / category / INDEX
    if not index_path.is_file():
        return set()
    with index_path.open(newline="") as handle:
        return {row["split"] for row in csv.DictReader(handle)}


def load_cached_split(
    cache_dir: str | Path, category: str, split: str, data_cfg: DataConfig | None = None
) -> CachedSplit:
    """Load ``{cache_dir}/{category}``'s entries of ``split`` (train, validation, test, or ``line``:
    the operator's confirmed defects, :mod:`bridgenet.feedback`).

    With ``data_cfg``, the cache must have been built with its settings
    (image_size, plane fit, ...). A missing cache raises FileNotFoundError, a
    stale or inconsistent one ValueError; both name the folder.
    """
    if split not in (*SPLITS, LINE_SPLIT):
        raise ValueError(f"split must be one of {(*SPLITS, LINE_SPLIT)}, got {split!r}")
    folder = Path(cache_dir) / category
    index_path, manifest_path = folder / INDEX, folder / MANIFEST
    if not index_path.is_file() or not manifest_path.is_file():
        raise FileNotFoundError(
            f"{folder}: no preprocessing cache (missing {INDEX} or {MANIFEST}); "
            "run `bridgenet preprocess`"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise _stale(folder, f"unreadable {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != CACHE_VERSION:
        raise _stale(
            folder,
            f"cache version {manifest.get('version') if isinstance(manifest, dict) else None}, "
            f"expected {CACHE_VERSION}",
        )
    if data_cfg is not None and manifest.get("settings") != cache_settings(data_cfg):
        raise _stale(
            folder,
            f"built with {manifest.get('settings')}, current settings {cache_settings(data_cfg)}",
        )
    with index_path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["split"] == split]
    if not rows:
        raise ValueError(f"{folder}: no cached sample of split {split!r}")
    arrays: dict[str, list[np.ndarray]] = {
        k: [] for k in ("rgb", "depth", "foreground", "gt", "original_size", "crop_box", "missing")
    }
    listed = manifest.get("entries", {})
    mismatched = []
    for row in rows:
        entry = Path(cache_dir) / row["cache_path"]
        expected = listed.get(row["cache_path"])
        if not isinstance(expected, dict) or not entry.is_file():
            raise _stale(folder, f"entry {entry} listed in {INDEX} is missing")
        try:
            with np.load(entry, allow_pickle=False) as data:
                if "fingerprint" not in data.files or str(data["fingerprint"]) != expected.get(
                    "fingerprint"
                ):
                    mismatched.append(row["cache_path"])
                    continue
                for key, values in arrays.items():
                    values.append(data[key])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise _stale(folder, f"unreadable entry {entry}: {exc}") from None
    if mismatched:
        more = len(mismatched) - 10
        shown = ", ".join(mismatched[:10]) + (f" and {more} more" if more > 0 else "")
        raise _stale(
            folder,
            f"{len(mismatched)} entries were not made with the settings and inputs of {MANIFEST} "
            f"(an interrupted run?): {shown}",
        )
    shapes = {a.shape for a in arrays["depth"]}
    if len(shapes) != 1:
        raise _stale(folder, f"entries of different sizes {sorted(shapes)}")
    return CachedSplit(
        category=category,
        split=split,
        rgb=np.stack(arrays["rgb"]).astype(np.uint8, copy=False),
        depth=np.stack(arrays["depth"]).astype(np.float32, copy=False),
        foreground=np.stack(arrays["foreground"]).astype(bool, copy=False),
        labels=np.array([int(row["label"]) for row in rows], dtype=np.int64),
        defects=[row["defect"] for row in rows],
        stems=[row["stem"] for row in rows],
        gt=arrays["gt"],
        original_sizes=np.stack(arrays["original_size"]).astype(np.int64, copy=False),
        crop_boxes=np.stack(arrays["crop_box"]).astype(np.int64, copy=False),
        masked=np.array([row["gt_path"] != "" or row["label"] == "0" for row in rows], dtype=bool),
        missing=np.array(arrays["missing"], dtype=np.float32),
    )
