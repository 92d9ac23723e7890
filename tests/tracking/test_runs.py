"""MLflow set-up, the retry helper, lineage tags, the training summary and the logged training run."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import mlflow
import pytest
import requests
import yaml
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)
from mlflow.tracking import MlflowClient

from bridgenet.config import TrackingConfig
from bridgenet.model.summary import (
    SUMMARY_FILE,
    TrainSummary,
    load_train_summary,
    save_train_summary,
)
from bridgenet.tracking import runs
from bridgenet.tracking.lineage import lineage_tags
from bridgenet.tracking.runs import (
    TrackingUnavailableError,
    call_tracking,
    is_transient,
    sqlite_artifact_location,
)
from tests.tracking.conftest import make_params


# ------------------------------------------------------------------ set-up
def test_sqlite_artifacts_go_next_to_the_database_as_an_absolute_uri(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_artifact_location("sqlite:///mlflow.db") == (tmp_path / "mlartifacts").as_uri()
    assert (
        sqlite_artifact_location(f"sqlite:///{tmp_path}/sub/x.db")
        == (tmp_path / "sub" / "mlartifacts").as_uri()
    )
    assert sqlite_artifact_location("http://127.0.0.1:5000") is None
    with pytest.raises(ValueError, match="needs a database file"):
        sqlite_artifact_location("sqlite:///:memory:")


def test_configure_tracking_creates_the_experiment_once(tmp_path):
    params = make_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'db' / 'm.db'}")
    first = runs.configure_tracking(params)
    assert runs.configure_tracking(params) == first
    experiment = MlflowClient(params.tracking.uri).get_experiment(first)
    assert experiment.name == "bridgenet"
    assert experiment.artifact_location == (tmp_path / "db" / "mlartifacts").as_uri()
    assert mlflow.get_tracking_uri() == params.tracking.uri


# ----------------------------------------------------------------- retries
class Flaky:
    """Raises ``error`` on the first ``failures`` calls, then returns "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(runs.time, "sleep", recorded.append)
    return recorded


def test_transient_failures_are_retried_with_exponential_backoff(sleeps):
    cfg = TrackingConfig(uri="http://127.0.0.1:9", retries=3, retry_delay_s=0.5)
    flaky = Flaky(2, requests.ConnectionError("refused"))
    assert call_tracking(cfg, flaky) == "ok"
    assert flaky.calls == 3
    assert sleeps == [0.5, 1.0]


def test_gives_up_after_the_configured_tries_naming_the_uri(sleeps):
    cfg = TrackingConfig(uri="http://127.0.0.1:9", retries=2, retry_delay_s=0.1)
    flaky = Flaky(100, requests.ConnectionError("refused"))
    with pytest.raises(
        TrackingUnavailableError,
        match=r"MLflow tracking server at http://127\.0\.0\.1:9 unreachable after 3 tries",
    ):
        call_tracking(cfg, flaky)
    assert flaky.calls == 3
    assert sleeps == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize(
    "error",
    [ValueError("bad value"), MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST)],
)
def test_other_errors_are_not_retried(sleeps, error):
    flaky = Flaky(1, error)
    with pytest.raises(type(error)):
        call_tracking(TrackingConfig(retries=5), flaky)
    assert flaky.calls == 1 and sleeps == []


def test_transient_classification():
    wrapped = MlflowException(
        "API request to http://127.0.0.1:9/api/2.0/mlflow/runs/create failed with "
        "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded"
    )
    assert is_transient(wrapped)
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    try:
        raise RuntimeError("outer") from ConnectionRefusedError("refused")
    except RuntimeError as exc:
        assert is_transient(exc)
    assert not is_transient(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))


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
