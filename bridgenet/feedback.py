"""Operator feedback: confirmed parts from the line join the data, in the MVTec 3D-AD layout.

``bridgenet feedback`` takes one part (``--rgb --xyz --verdict``) or a CSV of them and copies
each into ``<feedback.root>/<category>`` (:func:`bridgenet.paths.feedback_dir`)::

    train/good/{rgb,xyz}/NNN.{png,tiff}          verdict good: trained on by the next run
    test/<kind>/{rgb,xyz}/NNN.{png,tiff}         verdict defect: the gate's line defects
    test/<kind>/gt/NNN.png                       ... with its mask, where the operator gave one
    feedback.csv                                 one row per part: sources, sha256s, verdict, time

Every part is checked before anything is copied (all or nothing): the files are read with
the readers the pipeline uses, rgb and xyz (and the mask) must have the same size, a good part an object
above the support plane (training refuses one without), a defect the frame of the category's
test parts (the gate scores them together). A part whose rgb
and xyz digests are already recorded is a duplicate: reported, not copied again. Numbers
continue after the highest in the folder; no file is ever overwritten.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bridgenet import paths
from bridgenet.config import DataConfig, Params
from bridgenet.data.depth import visible_depth
from bridgenet.data.readers import discover_categories, scan_category
from bridgenet.data.samples import (
    GOOD,
    GT_EXTENSIONS,
    RGB_EXTENSIONS,
    XYZ_EXTENSIONS,
    DataError,
    image_size,
    read_mask,
    read_rgb,
    read_xyz,
)
from bridgenet.files import atomic_path, sha256_file, write_text_atomic

LOGGER = logging.getLogger(__name__)
VERDICTS = ("good", "defect")
DEFAULT_KIND = "line_defect"
_KIND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CSV_COLUMNS = ("rgb", "xyz", "verdict", "mask", "kind", "note")  # rgb, xyz, verdict required
RECORD_COLUMNS = ("time", "verdict", "kind", "rgb", "xyz", "gt", "rgb_source", "xyz_source", "mask_source",
                  "rgb_sha256", "xyz_sha256", "mask_sha256", "note")


@dataclass(frozen=True)
class Part:
    """One confirmed part as the operator gave it; ``where`` names it in messages."""

    rgb: Path
    xyz: Path
    verdict: str
    mask: Path | None = None
    kind: str | None = None
    note: str = ""
    where: str = "the part"


@dataclass
class FeedbackResult:
    """What :func:`add_feedback` did: the parts copied (their record rows) and the duplicates skipped."""

    category: str
    added: list[dict[str, str]] = field(default_factory=list)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    record: Path | None = None


class FeedbackError(ValueError):
    """One or more parts were refused; nothing was copied. ``problems`` names each part and what is wrong."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(f"{len(self.problems)} problem(s), nothing copied:\n  " + "\n  ".join(self.problems))


def read_parts_csv(path: Path) -> list[Part]:
    """Parts from a CSV with columns rgb, xyz, verdict and optionally mask, kind, note.

    Relative paths are read from the CSV's folder; each part is named by its line
    (the header is line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feedback list {path} does not exist")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        missing, unknown = {"rgb", "xyz", "verdict"} - columns, columns - set(CSV_COLUMNS)
        if missing or unknown:
            raise ValueError(f"{path}: columns rgb, xyz, verdict (optional: mask, kind, note) expected; "
                             f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path}: no part listed")

    def file(value: str | None) -> Path | None:
        return path.parent / value.strip() if value and value.strip() else None

    return [Part(rgb=file(row["rgb"]) or Path(""), xyz=file(row["xyz"]) or Path(""),
                 verdict=(row["verdict"] or "").strip(), mask=file(row.get("mask")),
                 kind=(row.get("kind") or "").strip() or None, note=(row.get("note") or "").strip(),
                 where=f"{path}, line {line}")
            for line, row in enumerate(rows, start=2)]


def _check_files(part: Part, frame: tuple[int, int] | None, data_cfg: DataConfig) -> list[str]:
    """What is wrong with one part's files (empty when nothing is); reads them as the pipeline will."""
    wanted = [("rgb", part.rgb, RGB_EXTENSIONS), ("xyz", part.xyz, XYZ_EXTENSIONS)]
    wanted += [("mask", part.mask, GT_EXTENSIONS)] if part.mask is not None else []
    wrong = [f"{name} {path}: the readers take {'/'.join(ext)} files only" for name, path, ext in wanted
             if path.suffix.lower() not in ext]
    if wrong:
        return wrong
    try:
        rgb, xyz = read_rgb(part.rgb), read_xyz(part.xyz)
        mask = read_mask(part.mask) if part.mask is not None else None
    except DataError as exc:
        return [str(exc)]
    size = rgb.shape[:2]
    if xyz.shape[:2] != size:
        wrong.append(f"xyz {part.xyz} is {xyz.shape[1]}x{xyz.shape[0]}, its rgb {size[1]}x{size[0]}")
    if mask is not None and mask.shape != size:
        wrong.append(f"mask {part.mask} is {mask.shape[1]}x{mask.shape[0]}, its rgb {size[1]}x{size[0]}")
    elif mask is not None and not mask.any():
        wrong.append(f"mask {part.mask} marks no pixel (leave it out when the defect's place is unknown)")
    if part.verdict == "good" and not wrong and not _has_object(xyz, data_cfg):
        wrong.append(f"xyz {part.xyz}: no object above the support plane (training refuses such a good part)")
    if part.verdict == "defect" and frame is not None and size != frame:
        wrong.append(f"rgb {part.rgb} is {size[1]}x{size[0]}, the category's test parts {frame[1]}x{frame[0]} "
                     "(the gate scores the line's defects beside them)")
    return wrong


def _has_object(xyz: np.ndarray, data_cfg: DataConfig) -> bool:
    """Whether the visible depth finds a foreground, as preprocessing will (seeded: deterministic)."""
    try:
        _, foreground = visible_depth(xyz, data_cfg, np.random.default_rng(0))
    except ValueError:
        return False
    return bool(foreground.any())


def check_part(part: Part, frame: tuple[int, int] | None, data_cfg: DataConfig) -> list[str]:
    """Every problem of one part, each starting with ``part.where``; empty when it can be taken."""
    wrong = []
    if part.verdict not in VERDICTS:
        wrong.append(f"verdict {part.verdict!r}: expected one of {', '.join(VERDICTS)}")
    if part.verdict == "good" and (part.mask is not None or part.kind is not None):
        wrong.append("a good part has no mask and no defect kind")
    if part.kind is not None and (not _KIND.match(part.kind) or part.kind == GOOD):
        wrong.append(f"kind {part.kind!r}: a folder name of letters, digits, '_', '-', '.', not {GOOD!r}")
    given = (("rgb", part.rgb), ("xyz", part.xyz), ("mask", part.mask))
    missing = [f"{name}: no path given" if str(path) in ("", ".") else f"{name} {path} is not a file"
               for name, path in given if path is not None and not path.is_file()]
    wrong += missing or _check_files(part, frame, data_cfg)
    return [f"{part.where}: {problem}" for problem in wrong]


def frame_of_test_parts(params: Params, category: str) -> tuple[int, int] | None:
    """(H, W) of the category's test parts in ``data.root``; None when it holds none here.

    Raises ValueError when the category is not one of the data's.
    """
    known = discover_categories(params.data)
    if category not in known:
        raise ValueError(f"unknown category {category!r}; the data's categories: {', '.join(known)}")
    samples, _ = scan_category(params.data, category)
    tests = [s for s in samples if s.split == "test"]
    return image_size(tests[0].rgb_path) if tests else None


def read_record(path: Path) -> list[dict[str, str]]:
    """The rows of a category's ``feedback.csv`` (empty when there is none yet)."""
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _next_number(folder: Path) -> int:
    """One more than the highest numbered stem in ``folder``'s rgb/, xyz/ and gt/ (0 when empty)."""
    stems = [p.stem for sub in ("rgb", "xyz", "gt") if (folder / sub).is_dir() for p in (folder / sub).iterdir()]
    numbers = [int(stem) for stem in stems if stem.isdigit()]
    return max(numbers, default=-1) + 1


def _copy(source: Path, target: Path) -> None:
    if target.exists():  # the numbering avoids it; a race with another writer must not overwrite
        raise FileExistsError(f"{target} exists; feedback never overwrites a file")
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def add_feedback(params: Params, category: str, parts: Sequence[Part], now: str | None = None) -> FeedbackResult:
    """Check every part, then copy the new ones into the feedback root and record them.

    Raises :class:`FeedbackError` (naming each part and its problem) and copies nothing
    when one part is refused. Parts already recorded (same rgb and xyz sha256), or given
    twice, are skipped and listed in ``duplicates``.
    """
    frame = frame_of_test_parts(params, category)
    problems = [problem for part in parts for problem in check_part(part, frame, params.data)]
    if problems:
        raise FeedbackError(problems)
    record_path = paths.feedback_record(params, category)
    rows = read_record(record_path)
    seen = {(row["rgb_sha256"], row["xyz_sha256"]): row for row in rows}
    result = FeedbackResult(category, record=record_path)
    now = now or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    numbers: dict[Path, int] = {}
    for part in parts:
        digests = (sha256_file(part.rgb), sha256_file(part.xyz))
        if digests in seen:
            earlier = seen[digests]
            result.duplicates.append({"where": part.where, "rgb": str(part.rgb),
                                      "recorded_as": f"{earlier['verdict']} {earlier['rgb']} ({earlier['time']})"})
            continue
        kind = GOOD if part.verdict == "good" else part.kind or DEFAULT_KIND
        folder = paths.feedback_dir(params, category) / ("train" if kind == GOOD else "test") / kind
        number = numbers.get(folder, _next_number(folder))
        numbers[folder] = number + 1
        stem = f"{number:03d}"
        stored = {"rgb": folder / "rgb" / f"{stem}.png", "xyz": folder / "xyz" / f"{stem}.tiff",
                  "gt": folder / "gt" / f"{stem}.png" if part.mask is not None else None}
        for name, source in (("rgb", part.rgb), ("xyz", part.xyz), ("gt", part.mask)):
            if source is not None:
                _copy(source, stored[name])
        base = paths.feedback_dir(params, category)
        row = {"time": now, "verdict": part.verdict, "kind": kind,
               **{k: "" if v is None else v.relative_to(base).as_posix() for k, v in stored.items()},
               "rgb_source": str(part.rgb), "xyz_source": str(part.xyz),
               "mask_source": "" if part.mask is None else str(part.mask),
               "rgb_sha256": digests[0], "xyz_sha256": digests[1],
               "mask_sha256": "" if part.mask is None else sha256_file(part.mask), "note": part.note}
        rows.append(row)
        seen[digests] = row
        result.added.append(row)
    if result.added:
        _write_record(record_path, rows)
    LOGGER.info("%s: %d part(s) added to %s, %d duplicate(s) skipped", category, len(result.added),
                paths.feedback_dir(params, category), len(result.duplicates))
    return result


def _write_record(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RECORD_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
