"""Registry writes under concurrency and crashes: two registrations on a fresh store, a failure
after the run, a tracking server stopped mid-register. Versions, aliases and runs are compared
with what was stored before the fault."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from filelock import FileLock
from mlflow.tracking import MlflowClient

from bridgenet import stages
from bridgenet.tracking.journal import journal_path
from bridgenet.tracking.retry import TrackingUnavailableError
from bridgenet.tracking.store import configure_tracking
from tests.reliability.conftest import CATEGORIES, child_env, write_params_file

HOST = "127.0.0.1"


def registry_state(uri: str) -> dict[str, object]:
    """Every registered version (name, version, run) and every alias of the store."""
    client = MlflowClient(uri, uri)
    state: dict[str, object] = {}
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name='{model.name}'")
        state[model.name] = {
            "versions": sorted((int(v.version), v.run_id) for v in versions),
            "aliases": {k: str(v) for k, v in sorted(model.aliases.items())},
        }
    return state


def runs_by_status(uri: str) -> dict[str, str]:
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("bridgenet")
    return {r.info.run_id: r.info.status for r in client.search_runs([experiment.experiment_id])}


@pytest.mark.slow
def test_two_registrations_at_once_on_a_fresh_store(small, tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    params_file = write_params_file(small.params(f"tracking.uri={uri}",
                                                 f"eval.reports_dir={tmp_path / 'reports'}"),
                                    tmp_path / "params.yaml")
    children = [
        subprocess.Popen([sys.executable, "-m", "bridgenet.cli", "register", "-c", category,
                          "--params", str(params_file)], env=child_env(), cwd=tmp_path,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for category in CATEGORIES
    ]
    outputs = [child.communicate(timeout=900)[0] for child in children]
    for child, output in zip(children, outputs):
        assert child.returncode == 0, output[-3000:]
        assert "OperationalError" not in output
    state = registry_state(uri)
    assert sorted(state) == [f"bridgenet-{c}" for c in CATEGORIES]
    for name in state:
        assert [v for v, _ in state[name]["versions"]] == [1]
        assert state[name]["aliases"] == {"challenger": "1"}
    assert sorted(runs_by_status(uri).values()) == ["FINISHED", "FINISHED"]


SET_UP_ONLY = """
import sys
from bridgenet.config import load_params
from bridgenet.tracking.store import configure_tracking
params = load_params(sys.argv[1])
print("setting up", flush=True)
configure_tracking(params)
print("done", flush=True)
"""


def test_store_set_up_waits_for_the_lock_beside_the_database(small, tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    params_file = write_params_file(small.params(f"tracking.uri=sqlite:///{db}",
                                                 f"eval.reports_dir={tmp_path / 'reports'}"),
                                    tmp_path / "params.yaml")
    db.parent.mkdir()
    with FileLock(str(db) + ".lock"):  # another process is setting the store up
        child = subprocess.Popen([sys.executable, "-c", SET_UP_ONLY, str(params_file)],
                                 env=child_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        assert child.stdout.readline().strip() == "setting up"
        time.sleep(3)
        assert child.poll() is None and not db.exists()  # it waits: MLflow's set-up has not run
    output = child.communicate(timeout=300)[0]
    assert child.returncode == 0 and output.strip().endswith("done"), output[-3000:]
    assert MlflowClient(f"sqlite:///{db}").get_experiment_by_name("bridgenet") is not None


def test_registration_failing_after_the_run_ends_the_run_failed(small, tmp_path, monkeypatch):
    from bridgenet.tracking import registry

    params = small.params(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                          f"eval.reports_dir={tmp_path / 'reports'}")
    first = stages.register(stages.resolve(params, "bagel"), repo_root=tmp_path)
    before = registry_state(params.tracking.uri)

    def registry_gone(*args, **kwargs):
        raise RuntimeError("injected: the registry refused the write")

    monkeypatch.setattr(registry, "register_challenger", registry_gone)
    with pytest.raises(RuntimeError, match="injected"):
        stages.register(stages.resolve(params, "bagel"), repo_root=tmp_path)
    assert registry_state(params.tracking.uri) == before
    statuses = runs_by_status(params.tracking.uri)
    failed = [run for run, status in statuses.items() if status == "FAILED"]
    assert statuses[first["run_id"]] == "FINISHED" and len(failed) == 1
    reason = MlflowClient(params.tracking.uri).get_run(failed[0]).data.tags["bridgenet.end_reason"]
    assert reason.startswith("registration failed after the run was logged: RuntimeError: injected")


@pytest.mark.slow
def test_server_stopped_mid_register_loses_nothing_and_the_run_ends_failed(
    small, tmp_path, monkeypatch
):
    from bridgenet.tracking import pyfunc
    from tests.tracking.conftest import free_port, stop_process
    from tests.tracking.test_server import start_tracking_server

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    db, artifacts, port = tmp_path / "server.db", tmp_path / "server-artifacts", free_port()
    uri = f"http://{HOST}:{port}"
    params = small.params(f"tracking.uri={uri}", f"eval.reports_dir={tmp_path / 'reports'}")
    server = start_tracking_server(port, db, artifacts)
    try:
        first = stages.register(stages.resolve(params, "bagel"), repo_root=tmp_path)
        before = registry_state(uri)
        real_log = pyfunc.log_pyfunc_model

        def stop_server_then_log(*args, **kwargs):
            stop_process(server)  # the server dies with the run half logged
            return real_log(*args, **kwargs)

        monkeypatch.setattr(pyfunc, "log_pyfunc_model", stop_server_then_log)
        with pytest.raises(TrackingUnavailableError, match=f"MLflow tracking server at {uri}"):
            stages.register(stages.resolve(params, "bagel"), repo_root=tmp_path)
    finally:
        stop_process(server)
    monkeypatch.setattr(pyfunc, "log_pyfunc_model", real_log)
    journal = journal_path(params)
    assert journal.is_file() and uri in journal.read_text()

    server = start_tracking_server(port, db, artifacts)  # back on the same store
    try:
        statuses = runs_by_status(uri)
        assert sorted(statuses.values()) == ["FINISHED", "RUNNING"]  # what the fault left
        configure_tracking(params)  # the next run of any stage settles it
        statuses = runs_by_status(uri)
        assert statuses[first["run_id"]] == "FINISHED"
        assert sorted(statuses.values()) == ["FAILED", "FINISHED"]
        assert not journal.exists()
        assert registry_state(uri) == before
    finally:
        stop_process(server)
