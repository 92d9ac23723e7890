"""The tracking store's set-up: where its artifacts go, the experiment, and the journal it settles."""

from __future__ import annotations

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from bridgenet.tracking.journal import journal_path, note_unfinished_run
from bridgenet.tracking.store import (
    check_sqlite_store,
    configure_tracking,
    sqlite_artifact_location,
)
from tests.tracking.conftest import make_params


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


def test_a_missing_store_is_refused_unless_created(tmp_path):
    params = make_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'typo' / 'm.db'}", "tracking.create=false")
    with pytest.raises(ValueError, match="tracking.create=true"):
        check_sqlite_store(params.tracking)


def test_configure_tracking_creates_the_experiment_once(tmp_path):
    params = make_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'db' / 'm.db'}")
    first = configure_tracking(params)
    assert configure_tracking(params) == first
    experiment = MlflowClient(params.tracking.uri).get_experiment(first)
    assert experiment.name == "bridgenet"
    assert experiment.artifact_location == (tmp_path / "db" / "mlartifacts").as_uri()
    assert mlflow.get_tracking_uri() == params.tracking.uri


def test_set_up_marks_the_journalled_runs_of_its_store(tmp_path):
    params = make_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'm.db'}")
    other = make_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'other.db'}")
    experiment = configure_tracking(params)
    client = MlflowClient(params.tracking.uri)
    run_id = client.create_run(experiment).info.run_id
    note_unfinished_run(params, run_id, "FAILED", "the server went away")
    note_unfinished_run(other, "0" * 32, "FAILED", "another store's run")
    assert configure_tracking(params) == experiment
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["bridgenet.end_reason"] == "the server went away"
    journal = journal_path(params).read_text()
    assert run_id not in journal and "another store's run" in journal  # left for its own store
