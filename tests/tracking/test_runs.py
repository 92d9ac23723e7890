"""Lineage tags, the training summary, the training run record and the logged training run."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from bridgenet.model.summary import (
    SUMMARY_FILE,
    TrainSummary,
    load_train_summary,
    save_train_summary,
)
from bridgenet.tracking.lineage import lineage_tags
from bridgenet.tracking.pyfunc import PyfuncSpec
from bridgenet.tracking.runs import TrainingRunRecord
from tests.tracking.conftest import make_params


# ----------------------------------------------------------------- lineage
def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
        check=True,
        capture_output=True,
    )


def test_lineage_tags_hold_commit_dirty_flag_and_dvc_md5(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "add", "code.py")
    _git(tmp_path, "commit", "-q", "-m", "first")
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "preprocess": {
                        "cmd": "bridgenet preprocess",
                        "deps": [
                            {"path": "data/mvtec", "hash": "md5", "md5": "aaa111.dir", "size": 10},
                            {"path": "bridgenet/preprocess.py", "hash": "md5", "md5": "ccc"},
                        ],
                        "outs": [
                            {"path": "data/cache", "hash": "md5", "md5": "bbb222.dir", "size": 5}
                        ],
                    }
                },
            }
        )
    )
    _git(tmp_path, "add", "dvc.lock")
    _git(tmp_path, "commit", "-q", "-m", "lock")
    # cache_dir given as an absolute path inside the repository, as dvc.lock never writes it
    params = make_params(
        tmp_path, "data.root=data/mvtec", f"data.cache_dir={tmp_path / 'data' / 'cache'}/"
    )
    tags = lineage_tags(tmp_path, params)
    head = subprocess.run(
        ["git", "-C", str(tmp_path), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert tags["git.commit"] == head and tags["mlflow.source.git.commit"] == head
    assert tags["git.dirty"] == "false"
    assert tags["dvc.lock"] == "present"
    assert tags["dvc.data_root.md5"] == "aaa111.dir" and tags["dvc.data_root.path"] == "data/mvtec"
    assert tags["dvc.cache_dir.md5"] == "bbb222.dir" and tags["dvc.cache_dir.path"] == "data/cache"
    (tmp_path / "code.py").write_text("x = 2\n")
    assert lineage_tags(tmp_path, params)["git.dirty"] == "true"
    other = make_params(tmp_path, "data.root=data/elsewhere")
    assert lineage_tags(tmp_path, other)["dvc.data_root.md5"].startswith("not in dvc.lock")


def test_lineage_without_git_or_dvc_lock_says_so(tmp_path):
    tags = lineage_tags(tmp_path, make_params(tmp_path))
    assert tags["git.commit"].startswith("unknown")
    assert tags["dvc.lock"].startswith("absent") and str(tmp_path) in tags["dvc.lock"]
    assert not any(k.endswith(".md5") for k in tags)


# ----------------------------------------------------------------- summary
def test_train_summary_round_trip_and_model_file_fallback(tmp_path, constant_models):
    summary = TrainSummary(category="bagel", model_path="models/bagel/model.pt", best_epoch=1, threshold=0.5,
                           validation={"val_score": float("nan")},
                           history=[{"epoch": 0, "loss": 1.5}, {"epoch": 1, "loss": 1.25}])
    path = save_train_summary(summary, tmp_path)
    assert path.name == SUMMARY_FILE
    assert json.loads(path.read_text())["validation"]["val_score"] is None
    assert load_train_summary(tmp_path) == TrainSummary(**{**summary.to_dict(), "validation": {"val_score": None}})
    fallback = load_train_summary(constant_models / "bagel")  # only model.pt there
    assert fallback.category == "bagel" and len(fallback.history) == 2
    assert math.isfinite(fallback.threshold)
    with pytest.raises(FileNotFoundError, match="model.pt"):
        load_train_summary(tmp_path / "empty")


# ------------------------------------------------------------ training run
def _record(tmp_path, **changes):
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    figure = tmp_path / "roc_bagel.png"
    figure.write_bytes(b"png")
    fields = {
        "category": "bagel", "trained_params": make_params(tmp_path), "model_file": model,
        "pyfunc": PyfuncSpec(code=tmp_path / "serve.py", signature=None, pip_requirements=[]),
        "summary": TrainSummary(category="bagel", model_path=str(model), best_epoch=0, threshold=0.5), "evaluation": None, "lineage": {}, "figures": {"roc": figure},
        "datasets": [{"name": "bagel/train", "source": "data/bagel", "digest": "d", "context": "training"},
                     {"name": "bagel/test", "source": "data/bagel/test", "digest": "f", "context": "test"}],
    }
    return TrainingRunRecord(**{**fields, **changes})


def test_training_run_record_names_a_missing_file_and_finds_its_datasets(tmp_path):
    record = _record(tmp_path)
    assert record.dataset("test")["digest"] == "f" and record.dataset("training")["name"] == "bagel/train"
    assert isinstance(record.datasets, tuple) and record.figures["roc"] == tmp_path / "roc_bagel.png"
    with pytest.raises(FileNotFoundError, match=r"model file .*nothing\.pt does not exist"):
        _record(tmp_path, model_file=tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError, match=r"figure 'pro': file .*pro_bagel\.png does not exist"):
        _record(tmp_path, figures={"pro": tmp_path / "pro_bagel.png"})
    twice = [{"name": "a", "source": "a", "digest": "d", "context": "test"}] * 2
    with pytest.raises(ValueError, match="one 'training' and one 'test'"):
        _record(tmp_path, datasets=twice)


def test_training_run_holds_params_curves_metrics_figures_and_model(registry):
    params = registry["params"]
    result = registry["registered"]["bagel"]
    client = MlflowClient(params.tracking.uri)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.embed_dim"] == "64"
    assert run.data.params["data.image_size"] == "64"
    assert run.data.tags["category"] == "bagel"
    assert run.data.tags["dvc.lock"].startswith("absent")
    for key in ("loss", "val_score"):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [0, 1], key
    assert run.data.metrics["test_image_auroc"] == pytest.approx(result["metrics"]["image_auroc"])
    assert any(k.startswith("test_auroc_defect_") for k in run.data.metrics)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    names |= {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    names |= {a.path for a in client.list_artifacts(run.info.run_id, "training")}
    assert {
        "params.yaml",
        "model_card.md",
        "figures/heatmaps_bagel.png",
        "figures/defect_auroc_bagel.png",
        "figures/training_curves_bagel.png",
        "figures/anomaly_preview_bagel.png",
        "training/train_summary.json",
    } <= names
    config = yaml.safe_load(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id,
                artifact_path="params.yaml",
                tracking_uri=params.tracking.uri,
            )
        ).read_text()
    )
    assert config["model"]["embed_dim"] == 64 and config["train"]["epochs"] == 2
    # artifacts live in mlartifacts/ next to the SQLite file
    db = Path(params.tracking.uri[len("sqlite:///") :])
    assert run.info.artifact_uri.startswith((db.parent / "mlartifacts").as_uri())
    assert (db.parent / "mlartifacts").is_dir()
