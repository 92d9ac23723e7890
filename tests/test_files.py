"""Atomic writes and JSON-safe values (bridgenet.files)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from bridgenet.files import atomic_path, json_safe, sha256_file, write_json, write_text_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "record.json", "old\n")
    with pytest.raises(RuntimeError, match="injected"), atomic_path(path) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("injected")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["record.json"]
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".record.json.") and tmp.suffix == ".tmp"
        tmp.write_text("new\n")
    assert path.read_text() == "new\n" and not tmp.exists()


def test_json_safe_turns_numpy_and_undefined_values_into_plain_json():
    value = {1: np.float32(0.5), "nan": float("nan"), "inf": np.float64(np.inf), "flag": np.bool_(True),
             "n": np.int64(3), "array": np.array([1.5, np.nan]), "path": Path("a/b"), "none": None}
    safe = json_safe(value)
    assert safe == {"1": 0.5, "nan": None, "inf": None, "flag": True, "n": 3, "array": [1.5, None],
                    "path": "a/b", "none": None}
    assert type(safe["n"]) is int and type(safe["flag"]) is bool
    json.dumps(safe, allow_nan=False)


def test_write_json_writes_nan_as_null_and_the_hash_names_the_bytes(tmp_path):
    path = write_json(tmp_path / "m.json", {"auroc": math.nan, "ap": 0.25})
    assert json.loads(path.read_text()) == {"auroc": None, "ap": 0.25}
    digest = sha256_file(path)
    assert len(digest) == 64 and digest == sha256_file(path)
    write_json(path, {"auroc": None, "ap": 0.5})
    assert sha256_file(path) != digest
    with pytest.raises(FileNotFoundError, match="absent.json"):
        sha256_file(tmp_path / "absent.json")
