"""What a reviewer sees, against a live ``mlflow server``: figures that load, the card's numbers at
the deployed threshold, the gate's cap on false rejects, and the champion alias moved last."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bridgenet import stages
from tests.tracking.conftest import free_port, stop_process, wait_for_http

HOST = "127.0.0.1"

pytestmark = pytest.mark.slow
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def threshold_copy(source: Path, target: Path, threshold: float) -> Path:
    """``source``'s model (and its JSON files) in ``target`` with another decision threshold."""
    import shutil

    from bridgenet.model.io import load_model, read_checkpoint, save_model

    model = load_model(source / "model.pt")
    model = model.with_meta(threshold=threshold)
    target.mkdir(parents=True)
    save_model(model, target / "model.pt", read_checkpoint(source / "model.pt")["history"])
    for extra in source.glob("*.json"):
        shutil.copy(extra, target / extra.name)
    return target


@pytest.fixture(scope="session")
def live_server(tmp_path_factory):
    """``mlflow server`` on a free port, a temporary SQLite store and artifact root; its URL.

    Its output goes to a file: a pipe nobody reads fills up with the access log within a few
    registrations, and the server then blocks on its next write."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("live-server")
    port = free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
               "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
               "--artifacts-destination", str(root / "artifacts"), "--workers", "1"]
    with open(root / "server.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://{HOST}:{port}/health", process)
        yield f"http://{HOST}:{port}"
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def reviewed(live_server, tiny, good_models, tmp_path_factory) -> dict[str, Any]:
    """bagel on the live server: v1 (the good model) promoted; v2, the same model with a threshold
    below every score (it flags every part: recall 1, FPR 1), rejected by a cap of 0.5."""
    root = tmp_path_factory.mktemp("reviewed")
    store = [f"tracking.uri={live_server}", f"eval.reports_dir={root / 'reports'}"]
    good = tiny.params(*store)
    trigger_happy = threshold_copy(good_models / "bagel", root / "models_low" / "bagel", -1e6)
    capped = tiny.params(*store, f"train.models_dir={trigger_happy.parent}", "promotion.max_fpr_at_threshold=0.5")
    first = stages.register(stages.resolve(good, "bagel"), repo_root=root)
    promoted = stages.promote(stages.resolve(good, "bagel"))
    second = stages.register(stages.resolve(capped, "bagel"), repo_root=root)
    rejected = stages.promote(stages.resolve(capped, "bagel"))
    return {"uri": live_server, "params": good, "first": first, "promoted": promoted, "second": second,
            "rejected": rejected, "report": root / "reports" / "promotion_bagel.json"}


def images_of(description: str) -> list[str]:
    return IMAGE.findall(description)


def test_every_image_of_a_version_description_is_a_png_the_server_serves(reviewed):
    client = MlflowClient(reviewed["uri"], reviewed["uri"])
    for version in ("1", "2"):
        description = client.get_model_version("bridgenet-bagel", version).description
        urls = images_of(description)
        assert len(urls) >= 5, description  # ROC, PRO, heatmaps, per-defect chart, training curves
        for url in urls:
            # relative, as the UI's own previews: the page is <server>/#/models/..., so this is <server>/get-artifact
            assert url.startswith("get-artifact?path=figures%2F"), url
            answer = requests.get(urljoin(reviewed["uri"] + "/", url), timeout=30)
            assert answer.status_code == 200, (url, answer.status_code, answer.text[:300])
            assert answer.content.startswith(PNG_MAGIC), url
            assert answer.headers["Content-Type"].startswith("image/png"), url


def test_the_model_card_file_links_its_images_on_the_server(reviewed):
    """model_card.md: the UI's file viewer shows only absolute image URLs; a tracking server is its own UI."""
    import mlflow

    client = MlflowClient(reviewed["uri"], reviewed["uri"])
    tag = client.get_model_version("bridgenet-bagel", "1").tags["model_card"]
    card = Path(mlflow.artifacts.download_artifacts(tag, tracking_uri=reviewed["uri"])).read_text()
    urls = images_of(card)
    assert len(urls) >= 5 and all(url.startswith(f"{reviewed['uri']}/get-artifact?") for url in urls), urls
    for url in urls:
        answer = requests.get(url, timeout=30)
        assert answer.status_code == 200 and answer.content.startswith(PNG_MAGIC), url


def test_the_card_holds_the_counts_and_rates_at_the_deployed_threshold(reviewed):
    client = MlflowClient(reviewed["uri"], reviewed["uri"])
    run_id = reviewed["first"]["run_id"]
    metrics = client.get_run(run_id).data.metrics
    tp, fp, fn, tn = (int(metrics[f"test_at_threshold_{k}"]) for k in ("tp", "fp", "fn", "tn"))
    description = client.get_model_version("bridgenet-bagel", "1").description
    assert f"| defective parts ({tp + fn}) | TP {tp} | FN {fn} |" in description
    assert f"| good parts ({fp + tn}) | FP {fp} | TN {tn} |" in description
    fpr, recall = metrics["test_at_threshold_fpr"], metrics["test_at_threshold_recall"]
    assert f"- **false rejects: {fp} of {fp + tn} good parts** (FPR {fpr:.3f})" in description
    assert f"- **defects found: {tp} of {tp + fn} defective parts** (recall {recall:.3f})" in description
    for key in ("fpr_at_threshold", "recall_at_threshold", "precision_at_threshold", "image_auroc", "aupro_30"):
        assert f"| {key} | " in description  # in the comparison table too
    assert "## Reviewer's checklist" in description and "True" not in description and "None" not in description


def test_the_gate_refuses_a_challenger_whose_false_rejects_are_above_the_cap(reviewed):
    client = MlflowClient(reviewed["uri"], reviewed["uri"])
    rejected = reviewed["rejected"]
    assert reviewed["promoted"]["decision"] == "promoted"
    assert rejected["decision"] == "rejected" and rejected["applied"] is True
    n_good = rejected["test_data"]["n_test"] - rejected["test_data"]["n_anomalous"]
    assert (f"fpr_at_threshold 1.0000 is above the cap 0.5 ({n_good} of {n_good} good test parts rejected)"
            == rejected["reason"])
    assert rejected["caps"]["fpr_at_threshold"] == {"challenger": 1.0, "cap": 0.5, "passed": False}
    assert rejected["challenger"]["metrics"]["recall_at_threshold"] == 1.0  # it finds every defect
    assert str(client.get_model_version_by_alias("bridgenet-bagel", "champion").version) == "1"
    version = client.get_model_version("bridgenet-bagel", "2")
    assert version.tags["promotion.decision"] == "rejected"
    assert version.tags["test.fpr_at_threshold"] == "1.0000"
    assert version.description.startswith("REJECTED on ")
    assert "| fpr_at_threshold | 1.000 | " in version.description and "✗ cap 0.5" in version.description
    assert reviewed["second"]["would_promote"] is False


def test_a_failure_before_the_alias_moves_keeps_the_champion_and_records_why(live_server, tiny, good_models,
                                                                            tmp_path, monkeypatch):
    """The description write fails: no alias moved, the report and a tag say why; a retry promotes."""
    from bridgenet.tracking import registry

    params = tiny.params(f"tracking.uri={live_server}", f"eval.reports_dir={tmp_path / 'reports'}",
                         "registry.prefix=alias-last")
    run = stages.resolve(params, "bagel")
    client = MlflowClient(live_server, live_server)
    stages.register(run, repo_root=tmp_path)
    assert stages.promote(run)["champion_after"] == "1"
    assert stages.register(run, repo_root=tmp_path)["version"] == "2"

    def broken(*args, **kwargs):
        raise MlflowException("the store refused the description (injected)")

    monkeypatch.setattr(registry, "set_version_description", broken)
    with pytest.raises(MlflowException, match="injected"):
        stages.promote(run)
    assert str(client.get_model_version_by_alias("alias-last-bagel", "champion").version) == "1"
    report = json.loads((tmp_path / "reports" / "promotion_bagel.json").read_text())
    assert report["decision"] == "promoted" and report["applied"] is False
    assert report["champion_after"] == "1" and "injected" in report["failure"]
    assert report["reason"] == "no gated metric dropped by more than its tolerance"
    tags = client.get_model_version("alias-last-bagel", "2").tags
    assert tags["promotion.decision"] == "promoted, not applied" and "injected" in tags["promotion.reason"]

    monkeypatch.undo()  # the retry finds the same numbers and applies them, alias last
    again = stages.promote(run)
    assert again["decision"] == "promoted" and again["applied"] is True and again["champion_after"] == "2"
    assert str(client.get_model_version_by_alias("alias-last-bagel", "champion").version) == "2"
    assert client.get_model_version("alias-last-bagel", "2").tags["promotion.decision"] == "promoted"
    assert client.get_model_version("alias-last-bagel", "1").tags["promotion.superseded_by"] == "2"
