"""Tests of bridgenet.reports: files written with the right keys, columns and images."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from bridgenet import metrics as M
from bridgenet import reports as R


def category_metrics(base: float, n_test: int, n_anomalous: int) -> dict[str, float]:
    values = dict.fromkeys(M.METRIC_KEYS[:7], base)
    values.update(n_test=n_test, n_anomalous=n_anomalous)
    return values


@pytest.fixture
def per_category():
    bagel = category_metrics(0.9, 40, 30)
    dowel = category_metrics(0.7, 20, 10)
    dowel["aupro_1"] = float("nan")  # undefined in one category
    return {"dowel": dowel, "bagel": bagel}


def test_metrics_json_layout(tmp_path, per_category):
    path = tmp_path / "out" / "metrics.json"
    extras = {"bagel": {"per_defect": {"crack": 0.95, "hole": float("nan")}}}
    R.write_metrics_json(path, per_category, extras)
    text = path.read_text()
    assert "NaN" not in text  # strict JSON
    doc = json.loads(text)
    assert set(doc) == {"categories", "mean", "details"}
    assert list(doc["categories"]) == ["bagel", "dowel"]
    for values in doc["categories"].values():
        assert list(values) == list(M.METRIC_KEYS)
    assert list(doc["mean"]) == list(M.METRIC_KEYS)
    # mean over the two categories: (0.9 + 0.7) / 2 = 0.8; counts (40 + 20) / 2, (30 + 10) / 2
    assert doc["mean"]["image_auroc"] == pytest.approx(0.8)
    assert doc["mean"]["n_test"] == pytest.approx(30)
    assert doc["mean"]["n_anomalous"] == pytest.approx(20)
    # undefined stays undefined: null in the category and in the mean, never 0
    assert doc["categories"]["dowel"]["aupro_1"] is None
    assert doc["mean"]["aupro_1"] is None
    assert doc["categories"]["bagel"]["n_test"] == 40
    assert doc["details"] == {"bagel": {"per_defect": {"crack": 0.95, "hole": None}}}


def test_metrics_json_without_extras_and_bad_input(tmp_path, per_category):
    doc = R.write_metrics_json(tmp_path / "m.json", per_category)
    assert set(doc) == {"categories", "mean"}
    broken = {"bagel": {**per_category["bagel"], "per_defect": {}}}
    with pytest.raises(ValueError, match="per_defect"):
        R.write_metrics_json(tmp_path / "m.json", broken)
    missing = {"bagel": {k: v for k, v in per_category["bagel"].items() if k != "pixel_ap"}}
    with pytest.raises(ValueError, match="pixel_ap"):
        R.write_metrics_json(tmp_path / "m.json", missing)
    with pytest.raises(ValueError, match="carrot"):
        R.write_metrics_json(tmp_path / "m.json", per_category, {"carrot": {"x": 1}})


def test_metrics_json_accepts_compute_all_output(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.random((4, 8, 8))
    masks = np.zeros((4, 8, 8), dtype=bool)
    masks[:2, 2:5, 2:5] = True
    out = M.compute_all(maps.max(axis=(1, 2)), [1, 1, 0, 0], maps, masks, num_thresholds=100)
    R.write_metrics_json(tmp_path / "m.json", {"cat": out})
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["categories"]["cat"]["aupro_30"] == pytest.approx(out["aupro_30"])
    assert doc["mean"]["pixel_auroc"] == pytest.approx(out["pixel_auroc"])


def test_metrics_markdown(tmp_path, per_category):
    path = tmp_path / "metrics.md"
    R.write_metrics_markdown(path, per_category)
    lines = path.read_text().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["category", *M.METRIC_KEYS]
    assert len(lines) == 2 + 2 + 1  # header, rule, two categories, mean
    cells = {line.split("|")[1].strip(): line for line in lines[2:]}
    assert set(cells) == {"bagel", "dowel", "**mean**"}
    assert "| 0.9000 |" in cells["bagel"] and "| 40 | 30 |" in cells["bagel"]
    assert "n/a" in cells["dowel"] and "n/a" in cells["**mean**"]


def test_curves_csv_is_tidy(tmp_path):
    curves = {
        "bagel": (np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.8, 1.0])),
        "dowel": (np.array([0.0, 1.0]), np.array([0.3, 1.0])),
    }
    path = tmp_path / "roc.csv"
    R.write_curves_csv(path, curves, "tpr")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["category", "fpr", "tpr"]
    assert len(rows) == 5
    assert [r["category"] for r in rows] == ["bagel"] * 3 + ["dowel"] * 2
    assert float(rows[1]["fpr"]) == 0.5 and float(rows[1]["tpr"]) == 0.8
    R.write_curves_csv(tmp_path / "pro.csv", curves, "pro")
    with (tmp_path / "pro.csv").open() as f:
        assert f.readline().strip() == "category,fpr,pro"
    with pytest.raises(ValueError, match="y_name"):
        R.write_curves_csv(path, curves, "fpr")
    with pytest.raises(ValueError, match="bagel"):
        R.write_curves_csv(path, {"bagel": (np.zeros(3), np.zeros(2))}, "tpr")


def assert_png(path, min_size=(100, 100)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        return image.size


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def assert_differ(first, second, min_changed=0.001):
    """Two figures of the same size that differ in at least ``min_changed`` of their pixels."""
    a, b = pixels(first), pixels(second)
    assert a.shape == b.shape
    changed = float(np.mean(np.any(a != b, axis=-1)))
    assert changed >= min_changed, f"{first} and {second} differ in {changed:.2%} of the pixels"


def test_plot_curves(tmp_path):
    maps = np.random.default_rng(1).random((3, 10, 10))
    masks = np.zeros((3, 10, 10), dtype=bool)
    masks[0, 2:6, 2:6] = True
    curves = {"bagel": M.pro_curve_points(maps, masks), "empty": (np.empty(0), np.empty(0))}
    R.plot_curves(tmp_path / "pro.png", curves, "pro", "PRO", limit=0.3)
    assert assert_png(tmp_path / "pro.png") == (550, 450)  # figsize 5.5 x 4.5 at 100 dpi
    other = {"bagel": (np.array([0.0, 0.1, 1.0]), np.array([0.0, 0.9, 1.0]))}
    R.plot_curves(tmp_path / "other.png", other, "pro", "PRO", limit=0.3)
    assert_differ(tmp_path / "pro.png", tmp_path / "other.png")


def test_select_heatmap_samples():
    scores = np.array([0.9, 0.2, 0.8, 0.4, 0.7, 0.95, 0.1])
    labels = np.array([1, 1, 1, 1, 1, 0, 0])
    # anomalous by score: 0(0.9) 2(0.8) 4(0.7) 3(0.4) 1(0.2); best two 0, 2; worst two 3, 1
    rows = R.select_heatmap_samples(scores, labels, 2)
    assert rows == [
        (0, "best anomalous"),
        (2, "best anomalous"),
        (3, "worst anomalous"),
        (1, "worst anomalous"),
        (5, "top good"),
    ]
    # fewer anomalous samples than 2 * n: nobody twice
    rows = R.select_heatmap_samples(scores[:2], labels[:2], 3)
    assert rows == [(0, "best anomalous"), (1, "best anomalous")]


def test_heatmap_sheet(tmp_path):
    rng = np.random.default_rng(2)
    k, h, w = 3, 32, 40
    rgb = rng.integers(0, 256, (k, h, w, 3), dtype=np.uint8)
    depth = rng.random((k, h, w, 3)).astype(np.float32)
    masks = np.zeros((k, h, w), dtype=np.uint8)
    masks[0, 5:15, 5:15] = 1
    maps = rng.random((k, h, w))
    path = tmp_path / "sheets" / "bagel.png"
    R.write_heatmap_sheet(path, rgb, depth, masks, maps, ["best", "worst", "good"])
    _, height = assert_png(path)
    flipped = tmp_path / "flipped.png"
    R.write_heatmap_sheet(flipped, rgb, depth, masks, maps[:, ::-1], ["best", "worst", "good"])
    assert_differ(path, flipped)  # the maps are drawn, not only the frame
    one_row = tmp_path / "one.png"
    R.write_heatmap_sheet(one_row, rgb[:1], depth[:1, ..., 0], masks[:1], maps[:1], ["best"])
    assert assert_png(one_row)[1] < height  # rows grow the sheet
    with pytest.raises(ValueError, match="anomaly_maps"):
        R.write_heatmap_sheet(path, rgb, depth, masks, maps[:, :-1], ["a", "b", "c"])
    with pytest.raises(ValueError, match="row_titles"):
        R.write_heatmap_sheet(path, rgb, depth, masks, maps, ["a"])
    with pytest.raises(ValueError, match="vmin"):
        R.write_heatmap_sheet(path, rgb, depth, masks, maps, ["a", "b", "c"], vmin=1, vmax=0)


def test_defect_auroc_bar(tmp_path):
    path = tmp_path / "per_defect.png"
    R.write_defect_auroc_bar(path, {"crack": 0.9, "hole": math.nan, "cut": 0.6}, "bagel")
    assert_png(path)
    other = tmp_path / "other.png"
    R.write_defect_auroc_bar(other, {"crack": 0.3, "hole": math.nan, "cut": 0.6}, "bagel")
    assert_differ(path, other)


def test_training_curves_follow_the_history(tmp_path):
    history = [{"epoch": e, "loss": 2.0 - 0.3 * e, "val_score": 0.5 + 0.1 * e} for e in range(4)]
    path = R.write_training_curves(tmp_path / "curves.png", history, "bagel", best_epoch=3)
    assert assert_png(path) == (1000, 360)
    rising = [{**r, "loss": 1.0 + 0.3 * r["epoch"]} for r in history]
    assert_differ(path, R.write_training_curves(tmp_path / "rising.png", rising, "bagel", best_epoch=3))
    empty = R.write_training_curves(tmp_path / "empty.png", [], "bagel")
    assert_differ(path, empty)


def test_anomaly_preview_draws_each_column(tmp_path):
    rng = np.random.default_rng(3)
    clean, rgb = rng.random((2, 2, 24, 24, 3))
    depth, masks = rng.random((2, 24, 24)), np.zeros((2, 24, 24), dtype=bool)
    masks[:, 8:16, 8:16] = True
    path = R.write_anomaly_preview(tmp_path / "preview.png", clean, rgb, depth, masks, "bagel")
    assert assert_png(path) == (480, 960)  # 2.4 in per column, 4 rows, 100 dpi
    moved = np.roll(masks, 6, axis=2)
    other = R.write_anomaly_preview(tmp_path / "moved.png", clean, rgb, depth, moved, "bagel")
    assert_differ(path, other)
    with pytest.raises(ValueError, match="columns"):
        R.write_anomaly_preview(tmp_path / "bad.png", clean, rgb[:1], depth, masks, "bagel")
