"""Model-behaviour tests of training on CPU with the tiny synthetic data set."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bridgenet import inference
from bridgenet.data.cache import load_cached_split
from bridgenet.evaluate import evaluate_category, load_test_split, score_split
from bridgenet.model.contract import CHECKPOINT_FORMAT
from bridgenet.model.io import load_model, read_checkpoint
from bridgenet.train import train_category
from bridgenet.training.validation import build_validation_set
from tests.conftest import tiny_params


@pytest.fixture(scope="module")
def trained(trained_bagel):
    return trained_bagel


def test_training_lowers_the_loss(trained):
    _, summary, _ = trained
    losses = [h["loss"] for h in summary.history]
    assert len(losses) == 8
    assert losses[-1] < losses[0]
    assert np.mean(losses[-2:]) < 0.9 * np.mean(losses[:2])


def test_test_split_scores(trained):
    params, _, model = trained
    split = load_test_split(params, "bagel")
    evaluation, _ = evaluate_category(params, model, split, torch.device("cpu"))
    assert evaluation.metrics["pixel_auroc"] > 0.75
    assert evaluation.scores.shape == (len(split),)


def test_selection_and_threshold_come_from_validation(trained):
    params, summary, model = trained
    assert 0 <= summary.best_epoch < 8
    best = summary.history[summary.best_epoch]
    assert best["val_score"] == max(h["val_score"] for h in summary.history)
    # the threshold is the 0.99 quantile of the validation goods' scores under the model's scorer
    val = build_validation_set(load_cached_split(params.data.cache_dir, "bagel", "validation", params.data),
                               params, model.network.modalities)
    goods = inference.score(model.network, val.batch.select(torch.from_numpy(val.labels == 0)),
                            torch.device("cpu"), 4).scores
    assert model.threshold == pytest.approx(np.quantile(goods, params.train.threshold_quantile), rel=1e-5)
    assert model.epoch == summary.best_epoch


def test_same_seed_same_scores(tiny_root, tmp_path):
    params = tiny_params(tiny_root, "train.epochs=1")
    a = train_category(params, "cookie", out_dir=tmp_path / "a")
    b = train_category(params, "cookie", out_dir=tmp_path / "b")
    assert a.history[0]["loss"] == b.history[0]["loss"]
    split = load_test_split(params, "cookie")
    sa = score_split(load_model(tmp_path / "a" / "model.pt"), split, 4, torch.device("cpu"))[0]
    sb = score_split(load_model(tmp_path / "b" / "model.pt"), split, 4, torch.device("cpu"))[0]
    np.testing.assert_array_equal(sa, sb)
    c = train_category(tiny_params(tiny_root, "train.epochs=1", "train.seed=7"), "cookie", out_dir=tmp_path / "c")
    assert c.history[0]["loss"] != a.history[0]["loss"]


def test_killed_run_resumes_and_matches_an_uninterrupted_one(tiny_root, tmp_path):
    epochs = 4
    overrides = [f"--set=train.epochs={epochs}", f"--set=train.models_dir={tmp_path / 'models'}"]
    base = [sys.executable, "-m", "bridgenet.cli", "train", "--category", "cookie",
            "--params", str(tmp_path / "params.yaml")]
    params = tiny_params(tiny_root)
    import yaml

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params.to_dict()))
    checkpoint = tmp_path / "models" / "cookie" / "checkpoint.pt"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(base + overrides, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        if checkpoint.is_file() and read_checkpoint(checkpoint, CHECKPOINT_FORMAT)["epoch"] >= 1:
            break
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = read_checkpoint(checkpoint, CHECKPOINT_FORMAT)["epoch"]
    assert killed_at < epochs - 1, "the run finished before the kill"
    assert not (tmp_path / "models" / "cookie" / "model.pt").exists()
    done = subprocess.run(base + overrides + ["--resume"], env=env, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["epochs"] == epochs
    resumed = load_model(tmp_path / "models" / "cookie" / "model.pt")
    # Same numbers as a run that was never interrupted. The reference runs in a fresh process
    # too, so both see the same torch thread count and hence the same float summation order.
    straight_overrides = [f"--set=train.epochs={epochs}", f"--set=train.models_dir={tmp_path / 'straight'}"]
    straight = subprocess.run(base + straight_overrides, env=env, capture_output=True, text=True,
                              timeout=600, check=False)
    assert straight.returncode == 0, straight.stderr[-2000:]
    reference = read_checkpoint(tmp_path / "models" / "cookie" / "checkpoint.pt", CHECKPOINT_FORMAT)["history"]
    uninterrupted = read_checkpoint(tmp_path / "straight" / "cookie" / "checkpoint.pt", CHECKPOINT_FORMAT)["history"]
    assert [h["loss"] for h in reference] == pytest.approx([h["loss"] for h in uninterrupted], rel=1e-6)
    split = load_test_split(params, "cookie")
    np.testing.assert_allclose(
        score_split(resumed, split, 4, torch.device("cpu"))[0],
        score_split(load_model(tmp_path / "straight" / "cookie" / "model.pt"), split, 4, torch.device("cpu"))[0],
        rtol=1e-6,
    )


def test_scans_without_any_object_train_on_rgb_alone(tiny_root, tmp_path, monkeypatch, caplog):
    from bridgenet import train as train_module
    from bridgenet.train import TrainingError, modalities_with_a_signal

    params = tiny_params(tiny_root, "train.epochs=1", "model.memory.max_entries=100")
    assert params.model.modalities == ("rgb", "depth")
    load = train_module.load_cached_split

    def flat(cache_dir, category, split, data):  # a flat stand-in point cloud: no object above the plane
        cached = load(cache_dir, category, split, data)
        return dataclasses.replace(cached, depth=np.zeros_like(cached.depth),
                                   foreground=np.zeros_like(cached.foreground))

    monkeypatch.setattr(train_module, "load_cached_split", flat)
    with caplog.at_level("WARNING", logger="bridgenet.train"):
        summary = train_category(params, "cookie", out_dir=tmp_path / "flat")
    assert "no training scan shows an object above the support plane" in caplog.text
    model = load_model(summary.model_path)
    assert model.network.modalities == ("rgb",) and model.params.model.modalities == ("rgb",)
    assert model.foreground_fraction == 0.0
    # its one bank keeps the entries two would share (1,728 candidates, 10 % of them, cap 100 over all)
    assert model.network.memory.bank("rgb").shape[0] == 100
    split = flat(params.data.cache_dir, "cookie", "test", params.data)
    scores = score_split(model, split, 4, torch.device("cpu"))[0]
    assert np.isfinite(scores).all() and np.ptp(scores) > 0

    some = load(params.data.cache_dir, "cookie", "train", params.data).foreground
    assert modalities_with_a_signal(params, "cookie", some) is params  # an object anywhere: both kept
    depth_only = tiny_params(tiny_root, "model.modalities=[depth]")
    with pytest.raises(TrainingError, match="cookie: no training scan .* depth-only model has nothing to learn"):
        modalities_with_a_signal(depth_only, "cookie", np.zeros_like(some))
