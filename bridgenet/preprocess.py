"""Preprocessing stage: ``data.root`` -> cached, network-ready arrays in ``data.cache_dir``.

The operator's confirmed parts under ``feedback.root`` (``bridgenet feedback``) join their
category: goods the ``train`` split (stems ``feedback-NNN``), defects the ``line`` split, which
no stage trains on and the promotion gate scores (:mod:`bridgenet.line_defects`).

One compressed ``.npz`` per sample at ``{cache_dir}/{category}/{split}/{defect}/{stem}.npz``:

- ``rgb`` uint8 (S, S, 3): antialiased bilinear resize of the RGB image's crop box;
- ``depth`` float32 (S, S) in [0, 1] and ``foreground`` bool (S, S): visible
  depth (:mod:`bridgenet.data.depth`), RANSAC seeded from the sample's
  ``category/split/defect/stem`` so the cache is deterministic;
- ``gt`` bool (H0, W0) at the original resolution (all False for good samples);
- ``original_size`` int64 (2,): (H0, W0);
- ``crop_box`` int64 (4,): the frame's box the arrays show, (top, left, height, width)
  (``data.crop``: a square around the part, or the whole frame);
- ``missing`` float32 (): the share of the part's pixels without a measured point
  (:func:`bridgenet.data.depth.missing_share`; the drift monitor's reference);
- ``fingerprint`` str: hash of the source files (size, mtime_ns) and of the
  settings the entry was built with (:func:`fingerprint`).

Per category, ``index.csv`` lists the cached samples and ``manifest.json`` holds
each entry's fingerprint and foreground size (the layout, and the loader every later
stage uses, are in :mod:`bridgenet.data.cache`). The fingerprint inside the entry
is the proof of what made it: a re-run reuses an entry only when the one it
holds equals the current one (whatever the manifest says, so a run killed
after writing entries with other settings cannot leave a lying cache), and
the loader refuses, naming them, entries whose fingerprint differs from the
manifest's. Entries whose sample is gone or now bad are deleted, except that a
category folder with no sample at all (empty or unmounted) keeps its cache and
is reported. Every file is written through :func:`bridgenet.files.atomic_path`, so
no half-written entry is ever visible.

Samples without a foreground (no object above the support plane): in the
training data (train and validation splits) of a category whose other
training samples have one, they are refused like bad samples, because a
training sample without the part teaches the model that an empty scene is
normal; when none of the category's training samples has a foreground the
category is scored on whole images and preprocessing only warns with the count.
Test samples without a foreground are kept and counted in a warning.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from bridgenet import paths
from bridgenet.config import DataConfig, Params
from bridgenet.data.cache import (
    CACHE_VERSION,
    INDEX,
    INDEX_COLUMNS,
    MANIFEST,
    cache_settings,
    entry_fingerprint,
)
from bridgenet.data.crop import crop, object_box, whole_frame
from bridgenet.data.depth import missing_share, resize_depth_and_mask, visible_depth
from bridgenet.data.mvtec import scan_feedback_category
from bridgenet.data.readers import load_sample, scan_dataset
from bridgenet.data.samples import DataError, Sample
from bridgenet.files import TMP_SUFFIX, write_bytes_atomic, write_text_atomic

LOGGER = logging.getLogger(__name__)

def cache_path(sample: Sample) -> str:
    """Entry path relative to the cache folder: ``category/split/defect/stem.npz``."""
    return f"{sample.category}/{sample.split}/{sample.defect}/{sample.stem}.npz"


def sample_seed(sample: Sample) -> int:
    """RANSAC seed of a sample: CRC-32 of ``category/split/defect/stem``."""
    return zlib.crc32(sample.key.encode("utf-8"))


def fingerprint(sample: Sample, settings: dict[str, object]) -> str:
    """Hash of the sample's source files (name, size, mtime_ns) and ``settings``."""
    sources = []
    for path in sample.source_paths:
        try:
            stat = path.stat()
        except OSError as exc:
            raise DataError(path, f"cannot read file status ({exc})") from None
        sources.append([str(path), stat.st_size, stat.st_mtime_ns])
    text = json.dumps(
        {"version": CACHE_VERSION, "settings": settings, "sources": sources, "label": sample.label},
        sort_keys=True,
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class NetworkInputs(NamedTuple):
    """:func:`network_inputs`' result."""

    rgb: np.ndarray
    depth: np.ndarray
    foreground: np.ndarray
    box: tuple[int, int, int, int]
    missing: float


def network_inputs(
    rgb: np.ndarray, xyz: np.ndarray, data_cfg: DataConfig, rng: np.random.Generator
) -> NetworkInputs:
    """Network-ready arrays of one sample, the same for the cache and for online prediction.

    rgb uint8 (H, W, 3) and xyz float32 (H, W, 3) in; rgb uint8 (S, S, 3)
    (antialiased bilinear resize), depth float32 (S, S) in [0, 1], foreground bool (S, S),
    the frame's box they show (top, left, height, width) and the share of the part's pixels
    without a measured point (:func:`bridgenet.data.depth.missing_share`, before the depth's
    holes are filled) out, S = ``data_cfg.image_size``.
    With ``data.crop: object`` the box is a square around the part
    (:func:`bridgenet.data.crop.object_box`), else the whole frame.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
    depth, foreground = visible_depth(xyz, data_cfg, rng)
    missing = missing_share(xyz, foreground)
    if data_cfg.crop == "object":
        box = object_box(foreground, data_cfg.crop_margin)
    else:
        box = whole_frame(*foreground.shape)
    size = data_cfg.image_size
    if foreground.any():
        depth, foreground = resize_depth_and_mask(crop(depth, box), crop(foreground, box), size)
    else:
        depth, foreground = np.zeros((size, size), np.float32), np.zeros((size, size), bool)
    rgb_small = np.asarray(Image.fromarray(np.ascontiguousarray(crop(rgb, box))).resize(
        (size, size), Image.Resampling.BILINEAR))
    return NetworkInputs(rgb_small.astype(np.uint8), depth.astype(np.float32), foreground.astype(bool), box,
                         missing)


def preprocess_sample(sample: Sample, data_cfg: DataConfig) -> dict[str, np.ndarray]:
    """Arrays of one cache entry (see the module docstring); raises DataError naming the file."""
    rgb, xyz, gt = load_sample(sample)
    height, width = rgb.shape[:2]
    if gt is None:
        gt = np.zeros((height, width), dtype=bool)
    elif sample.label == 0 and gt.any():
        raise DataError(
            sample.gt_path, f"good sample's mask marks {int(gt.sum())} pixels as anomalous"
        )
    try:
        rgb_small, depth, foreground, box, missing = network_inputs(
            rgb, xyz, data_cfg, np.random.default_rng(sample_seed(sample))
        )
    except ValueError as exc:
        raise DataError(sample.xyz_path, f"visible depth failed ({exc})") from None
    return {
        "rgb": rgb_small,
        "depth": depth,
        "foreground": foreground,
        "gt": gt.astype(bool),
        "original_size": np.array([height, width], dtype=np.int64),
        "crop_box": np.array(box, dtype=np.int64),
        "missing": np.array(missing, dtype=np.float32),
    }


def write_entry(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a compressed ``.npz`` atomically (temporary file in the same folder, then rename)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_bytes_atomic(path, buffer.getvalue())


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    write_text_atomic(path, text)


def _read_manifest(path: Path) -> dict[str, dict[str, object]]:
    """Entries of a manifest of this cache version (rel -> {fingerprint, foreground_pixels})."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
        entries = manifest["entries"] if manifest.get("version") == CACHE_VERSION else {}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        LOGGER.warning("%s: unreadable manifest (%s); every entry will be checked", path, exc)
        return {}
    if not isinstance(entries, dict):
        return {}
    return {rel: entry for rel, entry in entries.items() if isinstance(entry, dict)}


def _foreground_pixels(path: Path) -> int:
    with np.load(path, allow_pickle=False) as data:
        return int(np.count_nonzero(data["foreground"]))


def _index_csv(rows: list[dict[str, object]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=INDEX_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _remove_stale(folder: Path, keep: set[str]) -> int:
    removed = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder.parent).as_posix()
        stale_entry = path.suffix == ".npz" and rel not in keep
        if path.is_file() and (stale_entry or path.name.endswith(TMP_SUFFIX)):
            path.unlink()
            removed += int(stale_entry)
    for path in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()
    return removed


def _row(sample: Sample, rel: str) -> dict[str, object]:
    return {
        "category": sample.category,
        "split": sample.split,
        "defect": sample.defect,
        "stem": sample.stem,
        "label": sample.label,
        "cache_path": rel,
        "rgb_path": str(sample.rgb_path),
        "xyz_path": str(sample.xyz_path),
        "gt_path": "" if sample.gt_path is None else str(sample.gt_path),
    }


def _preprocess_category(
    cache_dir: Path,
    category: str,
    samples: list[Sample],
    data_cfg: DataConfig,
    failures: list[DataError],
    progress: tqdm,
) -> dict[str, int]:
    folder = cache_dir / category
    settings = cache_settings(data_cfg)
    old = _read_manifest(folder / MANIFEST)
    counts = {"written": 0, "reused": 0, "failed": 0, "removed": 0}
    if not samples:
        kept = sum(1 for _ in folder.rglob("*.npz")) if folder.is_dir() else 0
        if kept:
            failures.append(DataError(
                Path(data_cfg.root) / category,
                f"no sample found (empty or unmounted folder?); its {kept} cached entries in "
                f"{folder} are kept: delete that folder to drop them",
            ))
            counts["failed"] += 1
            return counts
    entries: dict[str, dict[str, object]] = {}
    rows: dict[str, dict[str, object]] = {}
    by_rel: dict[str, Sample] = {}
    progress.set_postfix_str(category)
    for sample in samples:
        rel = cache_path(sample)
        target = cache_dir / rel
        progress.update(1)
        if rel in by_rel:
            failures.append(DataError(sample.rgb_path, f"same cache entry {rel} as {by_rel[rel].rgb_path}"))
            counts["failed"] += 1
            continue
        try:
            stamp = fingerprint(sample, settings)
            # The entry's own fingerprint decides, not the manifest: a killed run may have
            # rewritten entries with other settings after the manifest was last written.
            reuse = entry_fingerprint(target) == stamp
            arrays = None if reuse else preprocess_sample(sample, data_cfg)
        except DataError as error:
            LOGGER.error("bad sample %s", error)
            failures.append(error)
            counts["failed"] += 1
            if target.is_file():
                target.unlink()
                counts["removed"] += 1
            continue
        if arrays is None:
            counts["reused"] += 1
            known = old.get(rel, {})
            pixels = (known["foreground_pixels"] if known.get("fingerprint") == stamp
                      and isinstance(known.get("foreground_pixels"), int) else _foreground_pixels(target))
        else:
            write_entry(target, {**arrays, "fingerprint": np.array(stamp)})  # OSError: the disk's
            counts["written"] += 1
            pixels = int(np.count_nonzero(arrays["foreground"]))
        entries[rel] = {"fingerprint": stamp, "foreground_pixels": pixels}
        rows[rel] = _row(sample, rel)
        by_rel[rel] = sample
    for rel in _refuse_empty_training_samples(category, entries, by_rel, failures):
        del entries[rel], rows[rel]  # _remove_stale deletes the file
        counts["failed"] += 1
    if folder.is_dir():
        counts["removed"] += _remove_stale(folder, set(entries))
    manifest = {"version": CACHE_VERSION, "settings": settings, "entries": entries}
    _write_if_changed(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    _write_if_changed(folder / INDEX, _index_csv(list(rows.values())))
    return counts


def _refuse_empty_training_samples(
    category: str,
    entries: dict[str, dict[str, object]],
    samples: dict[str, Sample],
    failures: list[DataError],
) -> list[str]:
    """Apply the empty-foreground rule (module docstring); return the entries to drop."""
    empty = {rel for rel, entry in entries.items() if entry["foreground_pixels"] == 0}
    training = {rel for rel in entries if samples[rel].split in ("train", "validation")}
    empty_test = len(empty - training)
    if empty_test:
        LOGGER.warning("%s: %d test sample(s) without a foreground (no object found above the "
                       "support plane)", category, empty_test)
    empty_training = sorted(empty & training)
    if not empty_training:
        return []
    if len(empty_training) == len(training):
        LOGGER.warning("%s: none of its %d training samples has a foreground: the category is "
                       "scored on whole images", category, len(training))
        return []
    for rel in empty_training:
        error = DataError(
            samples[rel].xyz_path,
            f"no object found above the support plane, while {len(training) - len(empty_training)} "
            f"other training samples of {category} have one; a training sample without the part "
            "would teach the model that an empty scene is normal",
        )
        LOGGER.error("bad sample %s", error)
        failures.append(error)
    return empty_training


def run_preprocess(params: Params) -> dict[str, object]:
    """Bring ``data.cache_dir`` up to date with ``data.root`` and ``feedback.root``; return the work counts.

    Returns ``{"cache_dir", "written", "reused", "failed", "removed", "categories": {...}}``.
    Bad samples are logged, left out of the cache and, once every other sample
    is done, reported together in one ``ValueError`` that names each file.
    """
    data_cfg = params.data
    cache_dir = Path(data_cfg.cache_dir)
    index, problems = scan_dataset(data_cfg)
    for category in index:
        feedback, found = scan_feedback_category(paths.feedback_dir(params, category), category)
        index[category] = [*index[category], *feedback]
        problems.extend(found)
    for problem in problems:
        LOGGER.error("bad sample %s", problem)
    failures: list[DataError] = list(problems)
    per_category: dict[str, dict[str, int]] = {}
    total = sum(len(samples) for samples in index.values())
    with logging_redirect_tqdm(), tqdm(total=total, desc="preprocess", unit="sample") as progress:
        for category, samples in index.items():
            per_category[category] = _preprocess_category(
                cache_dir, category, samples, data_cfg, failures, progress
            )
    summary: dict[str, object] = {"cache_dir": str(cache_dir), "categories": per_category}
    for key in ("written", "reused", "failed", "removed"):
        summary[key] = sum(counts[key] for counts in per_category.values())
    summary["failed"] = len(failures)
    LOGGER.info(
        "preprocess: %d written, %d reused, %d failed, %d removed",
        summary["written"],
        summary["reused"],
        summary["failed"],
        summary["removed"],
    )
    if failures:
        listing = "\n  ".join(str(f) for f in failures)
        raise ValueError(
            f"{len(failures)} bad input file(s); no cache entry in {cache_dir} for them:\n  {listing}"
        )
    return summary
