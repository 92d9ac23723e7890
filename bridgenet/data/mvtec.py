"""MVTec 3D-AD layout: index one category folder (files paired by stem, never by sort order).

    ROOT/<cat>/{train,validation}/good/{rgb,xyz}/NNN.{png,tiff}
    ROOT/<cat>/test/<defect|good>/{rgb,xyz,gt}/NNN.{png,tiff,png}

The feedback root (``bridgenet feedback``) uses the same layout without a validation split,
and its test defects may lack a mask (:func:`scan_feedback_category`). Anything else inside a split folder is an error that names the file; other folders
beside the splits (MVTec's ``calibration``) and hidden files are ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bridgenet.data.samples import (
    FEEDBACK_STEM_PREFIX,
    GOOD,
    GT_EXTENSIONS,
    LINE_SPLIT,
    RGB_EXTENSIONS,
    SPLITS,
    XYZ_EXTENSIONS,
    DataError,
    Sample,
    check_xyz_header,
    image_size,
    tiff_header,
    visible_entries,
)


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
    check_xyz_header(xyz, shape, dtype)
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
    required = ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz")  # line defects: mask optional
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


def scan_feedback_category(folder: Path, category: str) -> tuple[list[Sample], list[DataError]]:
    """Index one category of the feedback root: the operator's confirmed parts.

    ``train/good`` holds confirmed goods: split ``train``, stems prefixed with
    :data:`FEEDBACK_STEM_PREFIX`. ``test/<kind>`` holds confirmed defects: split
    :data:`LINE_SPLIT`, a mask (``gt/``) where the operator gave one, ``gt_path`` None
    where not. A missing folder holds nothing; a ``test/good`` or ``validation`` folder is a
    problem (confirmed goods are trained on, they go to ``train/good``).
    """
    problems: list[DataError] = []
    samples: list[Sample] = []
    if not folder.is_dir():
        return samples, problems
    for split in ("validation", f"test/{GOOD}"):
        if (folder / split).exists():
            problems.append(DataError(folder / split, f"the feedback root holds confirmed goods in "
                                      f"train/{GOOD} only (they are trained on)"))
    goods = folder / "train" / GOOD
    if goods.is_dir():
        samples += [dataclasses.replace(s, stem=FEEDBACK_STEM_PREFIX + s.stem)
                    for s in _scan_mvtec_defect(goods, category, "train", problems)]
    test = folder / "test"
    for entry in visible_entries(test) if test.is_dir() else []:
        if not entry.is_dir():
            problems.append(DataError(entry, f"extra file: {test} holds only defect folders"))
        elif entry.name != GOOD:
            samples += _scan_mvtec_defect(entry, category, LINE_SPLIT, problems)
    return samples, problems
