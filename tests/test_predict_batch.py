"""Folder and list predict: one loaded model, one CSV row per sample, equal to one-sample predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from bridgenet.batch_predict import predict_folder
from bridgenet.cli import main
from bridgenet.model.io import save_model
from bridgenet.predict import find_pairs, predict_files


@pytest.fixture(scope="module")
def model_file(trained_bagel, tmp_path_factory):
    path = tmp_path_factory.mktemp("batch") / "model.pt"
    save_model(trained_bagel[2], path)
    return path


def test_folder_predict_rows_equal_one_sample_predict(tiny_root, model_file, tmp_path):
    """At batch 1 a folder's rows are one-sample predict's, bit for bit (pictures too); in batches of 8
    equal to float rounding (the batch changes how matrix products split their sums)."""
    folder = tiny_root / "synth" / "bagel" / "test"
    pairs = find_pairs(folder)
    assert len(pairs) == len(list(folder.glob("*/rgb/*.png"))) > 8
    csv_path, errors = predict_folder(model_file, pairs, tmp_path / "out", progress=False, batch_size=1)
    table = pd.read_csv(csv_path, float_precision="round_trip")
    assert errors == 0 and list(table["status"]) == ["ok"] * len(pairs)
    for row in table.itertuples():
        single = predict_files(model_file, row.rgb, row.xyz, tmp_path / "single.png")
        assert row.score == single["score"], row.rgb
        assert bool(row.anomalous) == single["anomalous"] and row.threshold == single["threshold"]
        # the same overlay, at the layout of the input folder
        assert row.heatmap.endswith(str(Path(row.rgb).relative_to(folder)))
        assert (tmp_path / "single.png").read_bytes() == Path(row.heatmap).read_bytes()
    assert table["score"].nunique() > 1
    good = table["rgb"].str.contains("/good/")
    assert table.loc[~good, "score"].mean() > table.loc[good, "score"].mean()
    batched, _ = predict_folder(model_file, pairs, tmp_path / "batched", heatmaps=False, progress=False)
    batched = pd.read_csv(batched, float_precision="round_trip")
    assert list(batched["rgb"]) == list(table["rgb"])
    np.testing.assert_allclose(batched["score"], table["score"], rtol=1e-5)


def test_more_workers_give_the_same_rows_in_the_same_order(tiny_root, model_file, tmp_path):
    folder = tiny_root / "synth" / "bagel" / "test"
    pairs = find_pairs(folder)[::-1]  # not sorted: the CSV keeps the input's order
    tables = []
    for workers in (1, 3):
        csv_path, _ = predict_folder(model_file, pairs, tmp_path / f"w{workers}", heatmaps=False,
                                          progress=False, workers=workers, batch_size=4)
        tables.append(pd.read_csv(csv_path, float_precision="round_trip"))
    assert list(tables[0]["rgb"]) == [str(rgb.resolve()) for rgb, _ in pairs]
    pd.testing.assert_frame_equal(tables[0], tables[1])


def test_a_bad_sample_is_reported_in_its_row_and_the_command_exits_1(tiny_root, model_file, tmp_path):
    folder = tmp_path / "line"
    shutil.copytree(tiny_root / "synth" / "bagel" / "test" / "good", folder / "good")
    broken = min((folder / "good" / "xyz").iterdir())
    broken.write_bytes(b"not a tiff")
    result = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--folder", str(folder),
                                       "--out", str(tmp_path / "out"), "--no-heatmaps", "--no-log",
                                       "--set", "predict.workers=2"])
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
                                   "--out", str(tmp_path / "out"), "--no-log"])
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


def test_the_pixel_threshold_comes_from_the_validation_goods_and_is_saved(trained_bagel, tmp_path):
    from bridgenet import inference
    from bridgenet.data.cache import load_cached_split
    from bridgenet.model.io import load_model
    from bridgenet.training.validation import build_validation_set

    params, summary, model = trained_bagel
    validation = build_validation_set(load_cached_split(params.data.cache_dir, "bagel", "validation", params.data),
                                      params, model.network.modalities)
    maps = inference.score(model.network, validation.batch, "cpu", 4).maps
    peaks = maps[validation.labels == 0].reshape((validation.labels == 0).sum(), -1).max(1)
    expected = float(np.quantile(peaks, params.train.threshold_quantile))
    assert model.pixel_threshold == pytest.approx(expected, rel=1e-5) and summary.pixel_threshold == model.pixel_threshold
    # a map's peak never exceeds its image score (bilinear upsampling and smoothing average)
    assert model.pixel_threshold <= model.threshold + 1e-6
    save_model(model, tmp_path / "model.pt")
    assert load_model(tmp_path / "model.pt").pixel_threshold == model.pixel_threshold


def test_heatmap_and_mask_pictures(tiny_root, trained_bagel, tmp_path):
    from PIL import Image

    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.model.io import save_model
    from bridgenet.pictures import BAR_IN, DPI, FIGURE_WIDTH_IN, GAP_IN, LABELS_IN
    from bridgenet.predict import predict_arrays

    _, _, trained = trained_bagel
    folder = tiny_root / "synth" / "bagel" / "test"

    def sample(defect: str):
        rgb_path = min((folder / defect / "rgb").iterdir())
        return rgb_path, folder / defect / "xyz" / f"{rgb_path.stem}.tiff"

    # a pixel threshold halfway between the good part's peak and the contaminated part's, so that
    # one map crosses it and the other does not, whatever the tiny model's own threshold (the
    # pictures are under test, not the model)
    peaks = {defect: predict_arrays(trained, read_rgb(rgb), read_xyz(xyz)).anomaly_map.max()
             for defect, (rgb, xyz) in ((d, sample(d)) for d in ("good", "contamination"))}
    assert peaks["good"] < peaks["contamination"]
    model = trained.with_meta(pixel_threshold=float((peaks["good"] + peaks["contamination"]) / 2))
    save_model(model, tmp_path / "model.pt")
    model_file = tmp_path / "model.pt"
    results = {}
    for defect in ("good", "contamination"):
        rgb_path, xyz_path = sample(defect)
        out = predict_files(model_file, rgb_path, xyz_path, tmp_path / f"{defect}.png",
                            mask_path=tmp_path / f"{defect}_mask.png")
        prediction = predict_arrays(model, read_rgb(rgb_path), read_xyz(xyz_path))
        mask = np.asarray(Image.open(out["mask"])) > 0
        np.testing.assert_array_equal(mask, prediction.anomaly_map > model.pixel_threshold)
        assert out["anomalous_pixels"] == int(mask.sum()) and out["pixel_threshold"] == model.pixel_threshold
        heatmap = np.asarray(Image.open(out["heatmap"]).convert("RGB"))
        assert heatmap.shape[1] == 640 and heatmap.shape[0] > 500  # the picture, its colour bar and title
        results[defect] = (prediction, heatmap)
    assert not np.array_equal(results["good"][1], results["contamination"][1])
    # the contour (cyan) is drawn on the picture where the map crosses the pixel threshold, and only
    # then; the colour bar, right of the picture, always holds the threshold's cyan mark
    bar_starts = int((FIGURE_WIDTH_IN - BAR_IN - GAP_IN - LABELS_IN) * DPI)
    crossing = []
    for prediction, heatmap in results.values():
        cyan = (heatmap[..., 0] < 60) & (heatmap[..., 1] > 200) & (heatmap[..., 2] > 200)
        crossing.append(prediction.anomaly_map.max() > model.pixel_threshold)
        contour = int(cyan[:, :bar_starts].sum())
        assert cyan[:, bar_starts:].sum() > 20  # the bar's mark (about 70 pixels)
        assert contour > 40 if crossing[-1] else contour == 0, contour  # a contour: about 80 pixels
    assert crossing == [False, True]


def test_a_model_without_a_pixel_threshold_writes_no_mask(trained_bagel, tiny_root, tmp_path):
    _, _, model = trained_bagel
    save_model(model.with_meta(pixel_threshold=None), tmp_path / "old.pt")
    folder = tiny_root / "synth" / "bagel" / "test" / "good"
    rgb_path = min((folder / "rgb").iterdir())
    out = predict_files(tmp_path / "old.pt", rgb_path, folder / "xyz" / f"{rgb_path.stem}.tiff",
                        tmp_path / "h.png", mask_path=tmp_path / "m.png")
    assert out["mask"] is None and out["pixel_threshold"] is None and not (tmp_path / "m.png").exists()
    assert (tmp_path / "h.png").stat().st_size > 10_000


# ------------------------------------------------------------ the prediction log
def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_folder_predict_logs_one_record_per_sample_in_one_go(tiny_root, model_file, tmp_path):
    from bridgenet.monitor.log import read

    folder = tmp_path / "line"
    shutil.copytree(tiny_root / "synth" / "bagel" / "test" / "good", folder / "good")
    shutil.copytree(tiny_root / "synth" / "bagel" / "test" / "contamination", folder / "contamination")
    broken = min((folder / "good" / "xyz").iterdir())
    broken.write_bytes(b"not a tiff")
    log = tmp_path / "monitor" / "predictions.sqlite"
    csv_path, errors = predict_folder(model_file, find_pairs(folder), tmp_path / "out", heatmaps=False,
                                      progress=False, log=log, workers=2, batch_size=3)
    table, records = pd.read_csv(csv_path), read(log)
    assert errors == 1 and len(records) == len(table) > 4
    assert list(records["rgb_digest"]) == [sha256(p) for p in table["rgb"]]
    assert list(records["xyz_digest"]) == [sha256(p) for p in table["xyz"]]
    assert set(records["model_digest"]) == {sha256(model_file)} and records["model"].isna().all()
    assert set(records["category"]) == {"bagel"} and set(records["source"]) == {"predict"}
    ok = table["status"] == "ok"
    expected = np.where(table["anomalous"], "defect", "good")
    assert list(records.loc[ok, "verdict"]) == list(expected[ok])
    assert np.allclose(records.loc[ok, "score"], table.loc[ok, "score"])
    assert (records["threshold"] == table["threshold"]).all()
    bad = records[~ok.to_numpy()]
    assert list(bad["status"]) == ["error"] and bad["verdict"].isna().all() and bad["score"].isna().all()
    assert broken.name in bad["message"].iloc[0]
    light = records.loc[ok.to_numpy(), "brightness"]
    assert light.between(0.05, 0.95).all() and light.nunique() > 1 and bad["brightness"].isna().all()
    holes = records.loc[ok.to_numpy(), "missing_points"]  # rendered scans: every point of the part measured
    assert holes.between(0.0, 0.05).all() and bad["missing_points"].isna().all()


def test_cli_logs_to_monitor_log_unless_told_not_to(tiny_root, model_file, tmp_path):
    from bridgenet.monitor.log import read

    folder = tiny_root / "synth" / "bagel" / "test" / "good"
    rgb = min((folder / "rgb").iterdir())
    xyz = folder / "xyz" / f"{rgb.stem}.tiff"
    log = tmp_path / "log.sqlite"

    def predict(*extra: str):
        result = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--rgb", str(rgb), "--xyz", str(xyz),
                                           *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])

    answer = predict("--set", f"monitor.log={log}")
    records = read(log)
    assert len(records) == 1
    row = records.iloc[0]
    assert (row["status"], row["score"], row["verdict"]) == ("ok", answer["score"],
                                                           "defect" if answer["anomalous"] else "good")
    assert (row["rgb_digest"], row["xyz_digest"]) == (sha256(rgb), sha256(xyz))
    # the part's brightness as the network saw it: what the drift monitor compares with validation goods
    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.model.io import load_model
    from bridgenet.monitor.drift import part_brightness
    from bridgenet.predict import minimum_side, prepare_sample

    model = load_model(model_file)
    prepared = prepare_sample(read_rgb(rgb), read_xyz(xyz), model.params.data, minimum_side(model))
    expected = part_brightness(prepared.rgb[None], prepared.foreground[None])[0]
    assert 0.05 < row["brightness"] < 0.95 and row["brightness"] == pytest.approx(expected, abs=1e-9)
    assert row["missing_points"] == pytest.approx(prepared.missing, abs=1e-9)
    predict("--set", f"monitor.log={log}", "--no-log")
    predict("--set", "monitor.log=''")
    assert len(read(log)) == 1
    # a refused input is recorded too, and still refused
    flat = tmp_path / "flat.tiff"
    flat.write_bytes(b"not a tiff")
    refused = CliRunner().invoke(main, ["predict", "--model", str(model_file), "--rgb", str(rgb), "--xyz",
                                        str(flat), "--set", f"monitor.log={log}"])
    assert refused.exit_code == 1
    last = read(log).iloc[-1]
    assert last["status"] == "error" and "flat.tiff" in last["message"] and last["xyz_digest"] == sha256(flat)


def test_an_unwritable_log_does_not_fail_a_prediction(tiny_root, model_file, tmp_path, caplog):
    folder = tiny_root / "synth" / "bagel" / "test" / "good"
    rgb = min((folder / "rgb").iterdir())
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with caplog.at_level("WARNING"):
        out = predict_files(model_file, rgb, folder / "xyz" / f"{rgb.stem}.tiff", log=blocker / "log.sqlite")
    assert out["status"] == "ok"
    assert any(str(blocker / "log.sqlite") in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_the_served_model_logs_each_sample_with_its_files_digests(trained_bagel, tiny_root, tmp_path):
    import base64
    from types import SimpleNamespace

    from bridgenet.config import apply_overrides, params_from_dict
    from bridgenet.model.io import save_model
    from bridgenet.monitor.log import read
    from bridgenet.serving.pyfunc_model import BridgeNetPyfunc

    log = tmp_path / "served.sqlite"
    _, _, model = trained_bagel
    served = model.with_meta(params=params_from_dict(apply_overrides(model.params.to_dict(), [f"monitor.log={log}"])))
    path = tmp_path / "model.pt"
    save_model(served, path)
    wrapper = BridgeNetPyfunc()
    wrapper.load_context(SimpleNamespace(artifacts={"model": str(path)}))
    folder = tiny_root / "synth" / "bagel" / "test" / "good"
    rgbs = sorted((folder / "rgb").iterdir())[:2]
    xyzs = [folder / "xyz" / f"{p.stem}.tiff" for p in rgbs]
    files = {"rgb_png": [base64.b64encode(p.read_bytes()).decode() for p in rgbs],
             "xyz_tiff": [base64.b64encode(p.read_bytes()).decode() for p in xyzs]}
    out = wrapper.predict(None, files)
    records = read(log)
    assert list(records["rgb_digest"]) == [sha256(p) for p in rgbs]
    assert list(records["xyz_digest"]) == [sha256(p) for p in xyzs]
    assert np.allclose(records["score"], out["score"]) and set(records["source"]) == {"serve"}
    assert set(records["model_digest"]) == {sha256(path)}
    assert records["brightness"].between(0.05, 0.95).all()  # served records feed the brightness check too
    assert records["missing_points"].between(0.0, 1.0).all()  # and the missing-points check
    with pytest.raises(Exception, match="rgb: expected shape"):
        wrapper.predict(None, {"rgb": np.zeros((2, 3)), "xyz": np.zeros((2, 3))})
    refused = read(log).iloc[-1]
    assert refused["status"] == "error" and "expected shape" in refused["message"]
    assert pd.isna(refused["rgb_digest"])


def test_folder_predict_scores_as_one_sample_predict_from_a_file_with_its_graph(trained_bagel, tiny_root, tmp_path):
    """A trained model file carries its traced graph: one-sample predict starts from it, folder predict
    runs the network (faster per sample); the two agree to float rounding, verdicts equal."""
    from bridgenet.train import fast_start_graph

    model = trained_bagel[2]
    path = tmp_path / "model.pt"
    save_model(model, path, graph=fast_start_graph(model))
    pairs = find_pairs(tiny_root / "synth" / "bagel" / "test")
    csv_path, errors = predict_folder(path, pairs, tmp_path / "out", heatmaps=False, progress=False)
    table = pd.read_csv(csv_path, float_precision="round_trip")
    assert errors == 0
    singles = [predict_files(path, rgb, xyz) for rgb, xyz in pairs]
    np.testing.assert_allclose(table["score"], [s["score"] for s in singles], rtol=1e-5, atol=1e-6)
    assert list(table["anomalous"]) == [s["anomalous"] for s in singles]


def test_a_compiled_backbone_scores_a_folder_as_the_plain_one(tiny_root, model_file, tmp_path):
    """predict.compile_backbone: the same rows; the model file keeps no trace of it."""
    pairs = find_pairs(tiny_root / "synth" / "bagel" / "test")
    tables = []
    for compiled in (False, True):
        csv_path, errors = predict_folder(model_file, pairs, tmp_path / f"c{compiled}", heatmaps=False,
                                          progress=False, batch_size=4, compile_backbone=compiled)
        assert errors == 0
        tables.append(pd.read_csv(csv_path, float_precision="round_trip"))
    assert list(tables[1]["rgb"]) == list(tables[0]["rgb"])
    np.testing.assert_allclose(tables[1]["score"], tables[0]["score"], rtol=1e-5)
    assert list(tables[1]["anomalous"]) == list(tables[0]["anomalous"])


def test_compile_backbone_leaves_an_exported_graph_as_it_is_with_a_warning(caplog):
    from types import SimpleNamespace

    from bridgenet.predict import compile_backbone

    graph = SimpleNamespace(network=object(), category="bagel")  # a TorchScript export: no backbone module
    with caplog.at_level("WARNING"):
        compile_backbone(graph, True)
    assert "bagel is an exported graph" in caplog.text
    caplog.clear()
    compile_backbone(graph, False)
    assert caplog.text == ""


def test_the_served_model_compiles_its_backbone_only_when_its_params_say_so(trained_bagel, tmp_path):
    from types import SimpleNamespace

    from bridgenet.config import apply_overrides, params_from_dict
    from bridgenet.model.io import save_model
    from bridgenet.serving.pyfunc_model import BridgeNetPyfunc

    _, _, model = trained_bagel
    for on in (False, True):
        served = model.with_meta(params=params_from_dict(apply_overrides(
            model.params.to_dict(), [f"predict.compile_backbone={str(on).lower()}", "monitor.log="])))
        path = tmp_path / f"model-{on}.pt"
        save_model(served, path)
        wrapper = BridgeNetPyfunc()
        wrapper.load_context(SimpleNamespace(artifacts={"model": str(path)}))
        assert wrapper.model.network.backbone.compile_cpu is on
