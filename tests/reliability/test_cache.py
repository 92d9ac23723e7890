"""Preprocessing cache under faults: kill -9 part-way with other settings, empty folders, no object.

Each test snapshots what was cached before the fault and shows it is either
reused correctly, repaired, or refused by name, never trusted when wrong.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from bridgenet.data.cache import load_cached_split
from bridgenet.preprocess import run_preprocess
from tests.reliability.conftest import (
    make_params,
    run_child,
    scene,
    snapshot,
    write_dataset,
    write_params_file,
)

N_ENTRIES = 18  # 9 per category

# A preprocess that dies by SIGKILL right after its N-th entry is in place (between entries).
KILL_BETWEEN_ENTRIES = """
import os, signal, sys
import bridgenet.preprocess as pre
from bridgenet.config import load_params
limit, written = int(sys.argv[2]), [0]
real_write = pre.write_entry
def write_then_die(path, arrays):
    real_write(path, arrays)
    written[0] += 1
    if written[0] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
pre.write_entry = write_then_die
pre.run_preprocess(load_params(sys.argv[1]))
"""

# ... and one that dies inside its N-th write: temporary file complete, not yet renamed.
KILL_INSIDE_A_WRITE = """
import os, signal, sys
import bridgenet.preprocess as pre
from bridgenet.config import load_params
limit, calls = int(sys.argv[2]), [0]
real_replace = os.replace
def die_before_the_rename(src, dst):
    calls[0] += 1
    if calls[0] == limit:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = die_before_the_rename  # every atomic write (bridgenet.files) renames with it
pre.run_preprocess(load_params(sys.argv[1]))
"""


def cached_arrays(cache: Path) -> dict[str, dict[str, np.ndarray]]:
    out = {}
    for path in sorted(cache.rglob("*.npz")):
        with np.load(path) as data:
            out[path.relative_to(cache).as_posix()] = {
                k: data[k] for k in ("rgb", "depth", "foreground", "gt")
            }
    return out


def assert_same_arrays(found: dict, expected: dict) -> None:
    assert sorted(found) == sorted(expected)
    for rel, arrays in expected.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(found[rel][key], value, err_msg=f"{rel}: {key}")


@pytest.fixture()
def built(tmp_path):
    """A data set preprocessed with the default plane_distance (4 mm), and its arrays."""
    write_dataset(tmp_path / "data")
    params = make_params(tmp_path)
    run_preprocess(params)
    cache = Path(params.data.cache_dir)
    return params, cache, cached_arrays(cache)


@pytest.mark.parametrize("child, kill_at, rewritten", [
    (KILL_BETWEEN_ENTRIES, 6, 6),
    (KILL_INSIDE_A_WRITE, 3, 2),  # the 3rd entry's temporary file is left behind
])
def test_killed_preprocess_with_other_settings_leaves_no_lying_cache(
    built, tmp_path, child, kill_at, rewritten
):
    params, cache, before = built
    other = write_params_file(make_params(tmp_path, "data.plane_distance=0.015"),
                              tmp_path / "other.yaml")
    killed = run_child(child, str(other), str(kill_at))
    assert killed.returncode == -9, killed.stderr[-2000:]
    changed = [rel for rel, arrays in cached_arrays(cache).items()
               if not np.array_equal(arrays["foreground"], before[rel]["foreground"])]
    assert len(changed) == rewritten  # the fault happened: entries built with 15 mm sit in the cache
    manifest = json.loads((cache / "bagel" / "manifest.json").read_text())
    assert manifest["settings"]["plane_distance"] == 0.004  # ...under a manifest that says 4 mm
    # Loading is refused, naming the entries, instead of training on them.
    in_train = [rel for rel in changed if rel.startswith("bagel/train/")]
    with pytest.raises(ValueError, match=rf"{len(in_train)} entries were not made with the settings") as err:
        load_cached_split(cache, "bagel", "train", params.data)
    assert all(rel in str(err.value) for rel in in_train)
    if child is KILL_INSIDE_A_WRITE:
        assert len(list(cache.rglob("*.tmp"))) == 1

    summary = run_preprocess(params)  # the original settings again: the cache repairs itself
    assert (summary["written"], summary["reused"]) == (rewritten, N_ENTRIES - rewritten)
    assert not list(cache.rglob("*.tmp"))
    assert_same_arrays(cached_arrays(cache), before)
    split = load_cached_split(cache, "bagel", "train", params.data)
    assert split.foreground.reshape(len(split), -1).sum(1).min() > 100  # 4 mm foregrounds, not 15 mm


def test_entry_without_its_fingerprint_is_rebuilt_not_reused(built):
    params, cache, before = built
    entry = cache / "bagel" / "train" / "good" / "000.npz"
    with np.load(entry) as data:  # an entry as cache version 1 wrote it: no fingerprint inside
        arrays = {k: data[k] for k in data.files if k != "fingerprint"}
    np.savez_compressed(entry, **arrays)
    with pytest.raises(ValueError, match="bagel/train/good/000.npz"):
        load_cached_split(cache, "bagel", "train", params.data)
    summary = run_preprocess(params)
    assert (summary["written"], summary["reused"]) == (1, N_ENTRIES - 1)
    assert_same_arrays(cached_arrays(cache), before)


def test_empty_category_folder_keeps_its_cache(built, tmp_path):
    params, cache, _ = built
    params = make_params(tmp_path, "data.categories=[bagel, cable]")
    before = snapshot(cache / "bagel")
    shutil.move(tmp_path / "data" / "bagel", tmp_path / "away")
    (tmp_path / "data" / "bagel").mkdir()  # an empty (or unmounted) folder
    with pytest.raises(ValueError, match=r"no sample found \(empty or unmounted folder\?\)"):
        run_preprocess(params)
    assert snapshot(cache / "bagel") == before
    load_cached_split(cache, "bagel", "train", params.data)


def flatten(root: Path, *samples: str) -> None:
    """Replace each ``category/split/defect/stem`` point cloud with the bare table."""
    for key in samples:
        category, split, defect, stem = key.split("/")
        tifffile.imwrite(root / category / split / defect / "xyz" / f"{stem}.tiff",
                         scene(0, flat=True))


def test_training_sample_without_object_among_ones_with_it_is_refused(tmp_path):
    data = write_dataset(tmp_path / "data")
    flatten(data, "bagel/train/good/001")
    params = make_params(tmp_path)
    with pytest.raises(ValueError, match="1 bad input file") as err:
        run_preprocess(params)
    message = str(err.value)
    assert "bagel/train/good/xyz/001.tiff" in message and "empty scene is normal" in message
    cache = Path(params.data.cache_dir)
    assert not (cache / "bagel/train/good/001.npz").exists()
    split = load_cached_split(cache, "bagel", "train", params.data)
    assert split.stems == ["000", "002", "003"] and split.foreground.reshape(3, -1).any(1).all()


def test_category_without_any_object_is_kept_with_a_count(tmp_path, caplog):
    data = write_dataset(tmp_path / "data")
    flatten(data, *(f"cable/train/good/{i:03d}" for i in range(4)),
            "cable/validation/good/000", "cable/validation/good/001", "bagel/test/hole/001")
    caplog.set_level(logging.WARNING, logger="bridgenet.preprocess")
    summary = run_preprocess(make_params(tmp_path))
    assert (summary["written"], summary["failed"]) == (N_ENTRIES, 0)
    messages = [r.getMessage() for r in caplog.records]
    assert "cable: none of its 6 training samples has a foreground: the category is scored on " \
           "whole images" in messages
    assert "bagel: 1 test sample(s) without a foreground (no object found above the support " \
           "plane)" in messages
