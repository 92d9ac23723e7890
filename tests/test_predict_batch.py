"""Folder and list predict: one loaded model, one CSV row per sample, equal to one-sample predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bridgenet.cli import main
from bridgenet.model.io import save_model
from bridgenet.predict import find_pairs, predict_files, predict_folder


@pytest.fixture(scope="module")
def model_file(trained_bagel, tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "model.pt"
    save_model(trained_bagel[2], path)
    return path


def test_folder_predict_rows_equal_one_sample_predict(tiny_root, model_file, tmp_path):
    folder = tiny_root / "synth" / "bagel" / "test"
    pairs = find_pairs(folder)
    assert len(pairs) == len(list(folder.glob("*/rgb/*.png"))) > 4
    csv_path, errors = predict_folder(model_file, pairs, tmp_path / "out", progress=False)
    table = pd.read_csv(csv_path, float_precision="round_trip")
    assert errors == 0 and list(table["status"]) == ["ok"] * len(pairs)
    for row in table.itertuples():
        single = predict_files(model_file, row.rgb, row.xyz, tmp_path / "single.png")
        assert row.score == single["score"], row.rgb
        assert bool(row.anomalous) == single["anomalous"] and row.threshold == single["threshold"]
        # the same overlay, at the layout of the input folder
        assert row.heatmap.endswith(str(__import__("pathlib").Path(row.rgb).relative_to(folder)))
        assert (tmp_path / "single.png").read_bytes() == open(row.heatmap, "rb").read()
    assert table["score"].nunique() > 1
    good = table["rgb"].str.contains("/good/")
    assert table.loc[~good, "score"].mean() > table.loc[good, "score"].mean()


def test_a_bad_sample_is_reported_in_its_row_and_the_command_exits_1(tiny_root, model_file, tmp_path):
    folder = tmp_path / "line"
    shutil.copytree(tiny_root / "synth" / "bagel" / "test" / "good", folder / "good")
    broken = sorted((folder / "good" / "xyz").iterdir())[0]
    broken.write_bytes(b"not a tiff")
    result = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--folder", str(folder),
                                       "--out", str(tmp_path / "out"), "--no-heatmaps"])
    assert result.exit_code == 1, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    table = pd.read_csv(summary["predictions"])
    assert summary == {"predictions": str(tmp_path / "out" / "predictions.csv"), "samples": len(table),
                       "errors": 1}
    bad = table[table["status"] == "error"]
    assert list(bad["xyz"]) == [str(broken)] and broken.name in bad["error"].iloc[0]
    assert (table.drop(bad.index)["status"] == "ok").all() and table.drop(bad.index)["score"].notna().all()


def test_a_list_of_pairs_and_usage_errors(tiny_root, model_file, tmp_path):
    folder = tiny_root / "synth" / "bagel" / "test" / "good"
    listing = tmp_path / "samples.csv"
    stems = sorted(p.stem for p in (folder / "rgb").iterdir())[:2]
    pd.DataFrame({"rgb": [str(folder / "rgb" / f"{s}.png") for s in stems],
                  "xyz": [str(folder / "xyz" / f"{s}.tiff") for s in stems]}).to_csv(listing, index=False)
    ok = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--list", str(listing),
                                   "--out", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output
    assert len(pd.read_csv(tmp_path / "out" / "predictions.csv")) == 2
    neither = CliRunner().invoke(main, ["predict", "--model", str(model_file)])
    assert neither.exit_code == 2 and "--folder" in neither.output
    no_out = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--folder", str(folder)])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    empty = tmp_path / "empty"
    empty.mkdir()
    none = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--folder", str(empty),
                                     "--out", str(tmp_path / "o2")])
    assert none.exit_code == 1 and "no rgb/<stem>.png" in none.output
