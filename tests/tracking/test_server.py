"""Against real processes on 127.0.0.1: an ``mlflow server`` (with an outage) and ``mlflow models serve``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from mlflow.tracking import MlflowClient

from bridgenet.data.samples import read_rgb, read_xyz
from bridgenet.tracking.retry import TrackingUnavailableError
from tests.tracking.conftest import free_port, stop_process, wait_for_http

pytestmark = pytest.mark.slow
HOST = "127.0.0.1"


def start_tracking_server(port: int, db: Path, artifacts: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        HOST,
        "--port",
        str(port),
        "--backend-store-uri",
        f"sqlite:///{db}",
        "--artifacts-destination",
        str(artifacts),
        "--workers",
        "1",
    ]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_http(f"http://{HOST}:{port}/health", process)
    except BaseException:
        stop_process(process)
        raise
    return process


def test_tracking_server_logs_registers_and_fails_clearly_when_down(
    tiny, good_models, tmp_path, monkeypatch, caplog
):
    from bridgenet import stages
    from bridgenet.predict import resolve_model

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    db, artifacts = tmp_path / "server.db", tmp_path / "server-artifacts"
    port = free_port()
    uri = f"http://{HOST}:{port}"
    params = tiny.params(
        f"tracking.uri={uri}",
        "tracking.retries=2",
        "tracking.retry_delay_s=0.01",
        f"eval.reports_dir={tmp_path / 'reports'}",
    )
    server = start_tracking_server(port, db, artifacts)
    try:
        result = stages.register(stages.resolve(params, "bagel"), repo_root=tmp_path)
        client = MlflowClient(uri, uri)
        assert (
            str(client.get_model_version_by_alias("bridgenet-bagel", "challenger").version) == "1"
        )
        assert client.get_run(result["run_id"]).info.status == "FINISHED"
        assert resolve_model("models:/bridgenet-bagel@challenger", uri).category == "bagel"
        assert any(artifacts.rglob("model.pt"))  # proxied artifacts land in --artifacts-destination
    finally:
        stop_process(server)

    caplog.set_level(logging.WARNING, logger="bridgenet.tracking.retry")
    with pytest.raises(
        TrackingUnavailableError,
        match=rf"MLflow tracking server at {uri} unreachable after 3 tries",
    ):
        stages.register(stages.resolve(params, "bagel"), repo_root=tmp_path)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert [r.getMessage().split("(try ")[1][:3] for r in retries] == ["1/3", "2/3"]

    server = start_tracking_server(port, db, artifacts)  # same store: nothing was lost
    try:
        client = MlflowClient(uri, uri)
        assert client.get_run(result["run_id"]).data.tags["category"] == "bagel"
        versions = client.search_model_versions("name='bridgenet-bagel'")
        assert [int(v.version) for v in versions] == [1]
        assert (
            client.get_model_version_by_alias("bridgenet-bagel", "challenger").run_id
            == result["run_id"]
        )
    finally:
        stop_process(server)


def test_served_champion_scores_a_request_and_rejects_malformed_ones(registry, tiny):
    port = free_port()
    # the scoring server execs `uvicorn`, found on PATH: the interpreter's bin folder
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry["params"].tracking.uri,
        "MLFLOW_REGISTRY_URI": registry["params"].tracking.uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        "models:/bridgenet-bagel@champion",
        "--env-manager",
        "local",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for_http(f"http://{HOST}:{port}/ping", server, timeout=180)
        folder = tiny.root / "data" / "bagel" / "test" / "good"
        rgb, xyz = read_rgb(folder / "rgb" / "000.png"), read_xyz(folder / "xyz" / "000.tiff")
        url = f"http://{HOST}:{port}/invocations"
        answer = requests.post(
            url,
            json={"inputs": {"rgb": rgb[None].tolist(), "xyz": xyz[None].tolist()}},
            timeout=120,
        )
        assert answer.status_code == 200, answer.text[:2000]
        predictions = answer.json()["predictions"]
        assert len(predictions["score"]) == 1 and np.isfinite(predictions["score"][0])
        assert np.asarray(predictions["anomaly_map"]).shape == (1, *rgb.shape[:2])
        assert isinstance(predictions["anomalous"][0], bool)
        # The served model answers as `bridgenet predict` does on the same files, in the
        # session's scorer (the embedded default, fused).
        from bridgenet.predict import predict_files

        cli = predict_files("models:/bridgenet-bagel@champion", folder / "rgb" / "000.png",
                            folder / "xyz" / "000.tiff", tracking_uri=registry["params"].tracking.uri)
        assert cli["scorer"] == registry["params"].model.scorer == "fused"
        assert predictions["score"][0] == pytest.approx(cli["score"], rel=1e-5, abs=1e-6)
        assert predictions["anomalous"][0] == cli["anomalous"]
        # the files themselves, base64: the same answer for about the files' size
        import base64

        files = {"rgb_png": [base64.b64encode((folder / "rgb" / "000.png").read_bytes()).decode()],
                 "xyz_tiff": [base64.b64encode((folder / "xyz" / "000.tiff").read_bytes()).decode()]}
        encoded = requests.post(url, json={"inputs": files}, timeout=120)
        assert encoded.status_code == 200, encoded.text[:2000]
        assert encoded.json()["predictions"]["score"] == predictions["score"]
        size = sum((folder / p).stat().st_size for p in ("rgb/000.png", "xyz/000.tiff"))
        assert len(encoded.request.body) <= 1.4 * size
        cases = [
            ({"inputs": {"rgb": rgb[None].tolist()}}, "xyz"),
            (
                {"inputs": {"rgb": rgb[None].tolist(), "xyz": np.zeros_like(xyz)[None].tolist()}},
                "empty point cloud",
            ),
            (
                {"inputs": {"rgb": rgb[None, :10].tolist(), "xyz": xyz[None].tolist()}},
                "must have the same",
            ),
            # a float image in [0, 1] (a common client mistake): 400 naming the field, never a cast
            (
                {"inputs": {"rgb": (rgb[None] / 255.0).tolist(), "xyz": xyz[None].tolist()}},
                "rgb: expected uint8 values 0..255, got dtype float64",
            ),
            (
                {"inputs": {"rgb": rgb[None].tolist(),
                            "xyz": np.where(xyz == 0, xyz, np.nan)[None].tolist()}},
                "xyz: holds NaN or Inf",
            ),
        ]
        for bad, fragment in cases:
            # json.dumps writes NaN as JavaScript does (requests' json= refuses it); the server reads it
            response = requests.post(url, data=json.dumps(bad), headers={"Content-Type": "application/json"},
                                     timeout=120)
            assert response.status_code == 400, (response.status_code, response.text[:500])
            body = response.json()
            assert (
                body["error_code"] == "INVALID_PARAMETER_VALUE" and fragment in body["message"]
            ), body
    finally:
        stop_process(server)


def test_logged_model_serves_from_a_fresh_virtualenv(registry, tiny, tmp_path):
    """``mlflow models serve`` as MLflow runs it by default (``--env-manager virtualenv``): a new
    environment from the model's own requirements, pyenv's Python and pip, where bridgenet is not
    installed (its code travels in the model). Several GB: the environment is removed afterwards."""
    import shutil

    env_root, work = tmp_path / "envs", tmp_path / "cwd"
    work.mkdir()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
        "MLFLOW_TRACKING_URI": registry["params"].tracking.uri,
        "MLFLOW_REGISTRY_URI": registry["params"].tracking.uri,
        "MLFLOW_ENV_ROOT": str(env_root),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/bridgenet-bagel@champion",
               "--env-manager", "virtualenv", "--host", HOST, "--port", str(port), "--workers", "1"]
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:  # pip's output would fill a pipe nobody reads
        server = subprocess.Popen(command, env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        try:
            wait_for_http(f"http://{HOST}:{port}/ping", server, timeout=1500)
        except (RuntimeError, TimeoutError) as err:
            raise AssertionError(f"{err}\n{log_path.read_text(errors='replace')[-4000:]}") from None
        (made,) = list(env_root.iterdir())  # one new environment, built for this model
        probe = subprocess.run(
            [str(made / "bin" / "python"), "-c",
             "import importlib.util, sys; print(sys.prefix, importlib.util.find_spec('bridgenet'))"],
            cwd=work, env=env, capture_output=True, text=True, check=True)
        prefix, found = probe.stdout.split()
        assert Path(prefix) == made and found == "None", probe.stdout

        folder = tiny.root / "data" / "bagel" / "test" / "good"
        import base64

        files = {"rgb_png": [base64.b64encode((folder / "rgb" / "000.png").read_bytes()).decode()],
                 "xyz_tiff": [base64.b64encode((folder / "xyz" / "000.tiff").read_bytes()).decode()]}
        answer = requests.post(f"http://{HOST}:{port}/invocations", json={"inputs": files}, timeout=300)
        assert answer.status_code == 200, answer.text[:2000]
        from bridgenet.predict import predict_files

        local = predict_files("models:/bridgenet-bagel@champion", folder / "rgb" / "000.png",
                              folder / "xyz" / "000.tiff", tracking_uri=registry["params"].tracking.uri)
        served = answer.json()["predictions"]
        assert served["score"][0] == pytest.approx(local["score"], rel=1e-5, abs=1e-6)
        assert served["anomalous"][0] == local["anomalous"]
        bad = requests.post(f"http://{HOST}:{port}/invocations",
                            json={"inputs": {"rgb": [[[[0.5, 0.5, 0.5]]]], "xyz": [[[[0.0, 0.0, 0.3]]]]}},
                            timeout=120)
        assert bad.status_code == 400 and "rgb" in bad.json()["message"], bad.text[:500]
    finally:
        stop_process(server)
        shutil.rmtree(env_root, ignore_errors=True)
