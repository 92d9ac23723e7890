"""The bench results schema: strict JSON on disk, every record kind read back into rows, the summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.common import PEER
from bench.results import (
    REAL,
    current_record,
    read_records,
    read_results,
    record_kind,
    record_rows,
    results_json,
    rows_frame,
    summarize,
    write_results,
)


def _metrics(image: float) -> dict:
    return {"image_auroc": image, "pixel_auroc": 0.9, "aupro_30": 0.95, "aupro_1": 0.5}


SYNTH_RUN = {"config": "rgb", "seed": 1, "category": "a", "train_seconds": 10.0, "params_digest": "d",
             "scores": {"default": {"fused": {"metrics": _metrics(0.9), "families": {"geometric": 0.8}}},
                        "hard": {"fused": {"metrics": _metrics(0.7), "families": {"both": 0.6}}}}}
SYNTH_PEER = {"preset": "hard", "category": "a", "fit_seconds": {"rgb": 1.0, "depth": 2.0, "fused": 3.0},
              "modalities": {m: {"metrics": _metrics(0.6), "families": {"both": 0.5}}
                             for m in ("rgb", "depth", "fused")}}
REAL_RUN = {"config": "rgb+depth", "seed": 0, "category": "c", "train_seconds": 100.0,
            "scores": {"memory": {"metrics": _metrics(0.95), "per_defect": {"bent": 0.9, "cut": 1.0},
                                  "at_threshold": {"fpr": 0.1, "recall": 0.8}}}}
REAL_PEER = {"peer": PEER, "seed": 2, "category": "c", "fit_seconds": {"rgb": 5.0, "depth": 6.0, "fused": 11.0},
             "modalities": {"fused": {"metrics": _metrics(0.85), "per_defect": {"bent": 0.7, "cut": float("nan")}}}}


def test_the_four_record_kinds_are_told_apart_and_anything_else_is_refused():
    kinds = [record_kind(r) for r in (SYNTH_RUN, SYNTH_PEER, REAL_RUN, REAL_PEER)]
    assert kinds == ["synthetic run", "synthetic peer", "real run", "real peer"]
    with pytest.raises(ValueError, match="not a bench record"):
        record_kind({"seed": 0})


def test_records_become_one_row_per_data_set_variant_seed_and_category():
    frame = rows_frame(row for r in (SYNTH_RUN, SYNTH_PEER, REAL_RUN, REAL_PEER) for row in record_rows(r))
    assert list(frame.columns[:4]) == ["preset", "variant", "seed", "category"]
    assert list(frame["preset"]) == ["default", "hard", "hard", "hard", "hard", REAL, REAL]
    assert list(frame["variant"]) == ["rgb / fused", "rgb / fused", f"{PEER} rgb", f"{PEER} depth",
                                      f"{PEER} rgb+depth", "rgb+depth / memory", f"{PEER} fused"]
    assert frame.loc[0, "image_auroc_geometric"] == 0.8 and np.isnan(frame.loc[1, "image_auroc_geometric"])
    assert list(frame["train_seconds"]) == [10.0, 10.0, 1.0, 2.0, 3.0, 100.0, 11.0]
    real = frame[frame["preset"] == REAL].reset_index(drop=True)
    assert real.loc[0, "defect:bent"] == 0.9 and real.loc[0, "worst_defect"] == 0.9 and real.loc[0, "fpr"] == 0.1
    assert real.loc[1, "worst_defect"] == 0.7 and np.isnan(real.loc[1, "fpr"])  # NaN defects are not the worst


def test_results_are_strict_json_with_one_line_lists_and_nan_as_null(tmp_path):
    payload = {"runs": [{"image_scores": [0.5, 1e-07, 3], "sample_families": ["good", "a, b"], "cells": []}],
               "nested": [[1, 2], {"x": [True, None]}]}
    text = results_json(payload)
    assert json.loads(text) == payload
    assert '"image_scores": [0.5, 1e-07, 3],' in text and '"sample_families": ["good", "a, b"],' in text
    path = write_results(tmp_path / "r" / "x.json", {"a": float("nan"), "b": [1.0, float("inf")], "c": "x"})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.0, None], "c": "x"}
    assert not list((tmp_path / "r").glob("*.tmp"))


def test_a_folder_of_records_a_record_and_a_summary_read_back_alike(tmp_path):
    write_results(tmp_path / "work" / "rgb-seed1-a.json", SYNTH_RUN)
    write_results(tmp_path / "work" / "peer-hard-a.json", SYNTH_PEER)
    (tmp_path / "work" / "broken.json").write_text("{not json")
    write_results(tmp_path / "accuracy.json", {"results": {}, "runs": [SYNTH_RUN, SYNTH_PEER]})
    from_folder = read_results(tmp_path / "work")  # sorted by name: the peer's file first
    from_summary = read_results(tmp_path / "accuracy.json")
    assert sorted(from_folder["variant"]) == sorted(from_summary["variant"]) and len(from_summary) == 5
    assert len(read_results(tmp_path / "work" / "rgb-seed1-a.json")) == 2
    assert read_records(tmp_path / "work")[1]["config"] == "rgb"
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_records(tmp_path / "missing.json")
    assert current_record(tmp_path / "work" / "rgb-seed1-a.json", "d")["seed"] == 1
    assert current_record(tmp_path / "work" / "rgb-seed1-a.json", "other") is None
    assert current_record(tmp_path / "work" / "broken.json", "d") is None


def test_the_summary_is_mean_and_std_over_seeds_and_over_seeds_of_the_mean_category():
    rows = [{"preset": REAL, "variant": "v", "seed": s, "category": c, "values": {"x": x, "y": y}}
            for s, c, x, y in ((0, "a", 0.9, 1.0), (1, "a", 1.0, None), (0, "b", 0.8, float("nan")),
                               (1, "b", 0.8, 2.0), (2, "a", 0.1, 3.0))]
    table = summarize(rows_frame(rows), ["v", "w"], ["a", "b"], overall_keys=["x"])
    assert "w" not in table
    entry = table["v"]
    assert entry["seeds"] == [0, 1, 2] and entry["seeds_complete"] == [0, 1]  # seed 2 lacks b
    assert entry["categories"]["a"]["x"] == pytest.approx({"mean": 2.0 / 3, "std": np.std([0.9, 1.0, 0.1]), "n": 3})
    assert entry["categories"]["a"]["y"]["n"] == 2 and entry["categories"]["b"]["y"]["n"] == 1
    assert entry["mean"] == {"x": pytest.approx({"mean": 0.875, "std": 0.025, "n": 2})}
    ordered = summarize(rows_frame(rows), ["v"], ["a"], overall_keys=[], keys=["y", "x", "z"])
    assert list(ordered["v"]["categories"]["a"]) == ["y", "x"]
