"""Training that cannot succeed without learning, and what an interrupted write leaves behind.

Every case starts from a folder holding a trained ``model.pt`` and
``checkpoint.pt`` and shows, by snapshot, that a failed run leaves both as they were.
"""

from __future__ import annotations

import logging
import math
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bridgenet.cli import main
from bridgenet.config import ConfigError
from bridgenet.model.io import load_model
from bridgenet.preprocess import run_preprocess
from bridgenet.train import TrainingError, train_category
from tests.reliability.conftest import (
    make_params,
    run_child,
    snapshot,
    write_dataset,
    write_params_file,
)


@pytest.fixture()
def trained_dir(small, tmp_path) -> Path:
    """A copy of the session's trained bagel folder (model.pt, checkpoint.pt, train_summary.json)."""
    target = tmp_path / "models" / "bagel"
    shutil.copytree(small.root / "models" / "bagel", target)
    assert {"model.pt", "checkpoint.pt"} <= {p.name for p in target.iterdir()}
    return target


@pytest.mark.parametrize("override, key, why", [
    ("train.batch_size=1", "train.batch_size", "no step is taken"),
    ("train.max_samples_per_epoch=1", "train.max_samples_per_epoch", "no step is taken"),
    ("train.epochs=0", "train.epochs", "nothing is trained"),
])
def test_params_that_give_no_step_are_refused_naming_the_key(small, trained_dir, tmp_path,
                                                             override, key, why):
    before = snapshot(trained_dir)
    with pytest.raises(ConfigError, match=rf"{key}: got \d+; .*{why}"):
        small.params(override)
    params_file = write_params_file(small.params(f"train.models_dir={trained_dir.parent}"),
                                    tmp_path / "params.yaml")
    result = CliRunner().invoke(main, ["train", "-c", "bagel", "--params", str(params_file),
                                       "--set", override])
    assert result.exit_code == 2 and key in result.output, result.output
    assert snapshot(trained_dir) == before


def test_category_with_one_training_sample_is_refused(tmp_path, trained_dir):
    write_dataset(tmp_path / "data", categories=("bagel",), n_train=1)
    params = make_params(tmp_path)
    run_preprocess(params)
    before = snapshot(trained_dir)
    with pytest.raises(TrainingError, match="bagel: 1 training sample.*a step needs at least 2"):
        train_category(params, "bagel", out_dir=trained_dir)
    assert snapshot(trained_dir) == before


def test_run_whose_loss_is_not_finite_fails_and_keeps_the_model(small, trained_dir, monkeypatch):
    from bridgenet import train

    monkeypatch.setattr(train.Trainer, "epoch", lambda self: {"loss": math.nan, "focal": math.nan})
    before = snapshot(trained_dir)
    with pytest.raises(TrainingError, match=r"bagel: epoch 0 loss is nan .*left as they were"):
        train_category(small.params("train.epochs=2"), "bagel", out_dir=trained_dir)
    assert snapshot(trained_dir) == before


def test_epoch_without_a_finite_validation_score_never_overwrites_model_pt(
    small, trained_dir, monkeypatch
):
    from bridgenet import train

    monkeypatch.setattr(train, "validation_metrics", lambda *a: {"val_score": math.nan})
    before = snapshot(trained_dir)
    with pytest.raises(TrainingError, match="epoch 0 validation score is nan .*left as they were"):
        train_category(small.params(), "bagel", out_dir=trained_dir)
    assert snapshot(trained_dir) == before


# A training run killed by SIGKILL inside its first checkpoint write: the temporary
# file is complete but not yet renamed over checkpoint.pt.
KILL_INSIDE_CHECKPOINT_WRITE = """
import os, signal, sys
from pathlib import Path
from bridgenet.config import load_params
from bridgenet.train import train_category
real_replace = os.replace
def die_before_the_rename(src, dst):
    if str(dst).endswith("checkpoint.pt"):
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
os.replace = die_before_the_rename  # every atomic write (bridgenet.files) renames with it
train_category(load_params(sys.argv[1]), "bagel", out_dir=Path(sys.argv[2]))
"""


def test_interrupted_checkpoint_write_is_cleaned_up_by_the_next_run(small, trained_dir, tmp_path,
                                                                    caplog):
    before = snapshot(trained_dir)
    params_file = write_params_file(small.params(), tmp_path / "params.yaml")
    killed = run_child(KILL_INSIDE_CHECKPOINT_WRITE, str(params_file), str(trained_dir))
    assert killed.returncode == -9, killed.stderr[-2000:]
    left = sorted(p.name for p in trained_dir.glob(".*.tmp"))
    assert len(left) == 1 and left[0].startswith(".checkpoint.pt.")  # the fault's leftover
    assert {k: v for k, v in snapshot(trained_dir).items() if not k.endswith(".tmp")} == before

    caplog.set_level(logging.WARNING, logger="bridgenet.train")
    train_category(small.params(), "bagel", out_dir=trained_dir)
    assert not list(trained_dir.glob(".*.tmp"))
    assert any(f"removed {trained_dir / left[0]}, left by an interrupted write" in r.getMessage()
               for r in caplog.records)
    assert load_model(trained_dir / "model.pt").epoch == 0
