"""End to end: `dvc repro` in a fresh git repo on a tiny synthetic set, then MLflow and serving."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CATEGORIES = ["bagel", "cookie"]

pytestmark = pytest.mark.slow


def _tiny_params(path: Path) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["synth"].update(categories=CATEGORIES, image_size=128, n_train=8, n_validation=4,
                           n_test_good=3, n_test_per_defect=1, preview=False)
    params["data"].update(categories=CATEGORIES, image_size=64)
    params["model"].update(embed_dim=32, dsc_hidden=32)
    params["train"].update(epochs=2, batch_size=4)
    params["eval"].update(aupro_thresholds=200)
    # 2-epoch tiny models may score near chance, and a few good test parts give coarse rates
    params["promotion"].update(min_image_auroc=0.0, max_fpr_at_threshold=1.0, min_recall_at_threshold=0.0)
    params["category_overrides"] = {c: {} for c in CATEGORIES}
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_api_url):
    """A fresh git + DVC checkout of this repo with tiny params, after one `dvc repro`."""
    root = tmp_path_factory.mktemp("project")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)
    _tiny_params(root / "params.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PREFECT_API_URL": prefect_api_url, "PYTHONPATH": str(root)}
    run = lambda *cmd, **kw: subprocess.run(cmd, check=False, cwd=root, env=env, capture_output=True, text=True, **kw)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "commit", "-qm", "init"]):
        assert run(*cmd).returncode == 0
    first = run("dvc", "repro", timeout=1500)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return root, run


def test_reports_hold_every_category(project):
    root, _ = project
    doc = json.loads((root / "reports" / "metrics.json").read_text())
    assert sorted(doc["categories"]) == CATEGORIES
    keys = {"image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "pixel_ap", "aupro_30", "aupro_1",
            "n_test", "n_anomalous"}
    for values in [*doc["categories"].values(), doc["mean"]]:
        assert set(values) == keys
    for category in CATEGORIES:
        assert (root / "reports" / "categories" / category / f"heatmaps_{category}.png").stat().st_size > 0
    assert "category,fpr,pro" in (root / "reports" / "pro.csv").read_text().splitlines()[0]


def test_second_repro_does_nothing_and_dvc_reads_metrics_and_plots(project):
    _root, run = project
    again = run("dvc", "repro", timeout=600)
    assert again.returncode == 0 and "Running stage" not in again.stdout
    metrics = run("dvc", "metrics", "show", "--json")
    assert metrics.returncode == 0 and "image_auroc" in metrics.stdout
    plots = run("dvc", "plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr


def test_plots_render_offline_one_curve_per_category(project):
    root, run = project
    shown = run("dvc", "plots", "show", "-o", str(root / "plots_html"))
    assert shown.returncode == 0, shown.stderr
    html = (root / "plots_html" / "index.html").read_text()
    # image plots only: no vega spec that would need the CDN's scripts to draw
    assert "<img" in html and "vegaEmbed(" not in html
    for name in ("roc.png", "pro.png"):
        assert name in html
    # one line per category, each its own colour: the legend holds both names
    from PIL import Image

    roc = Image.open(root / "reports" / "roc.png")
    assert roc.size[0] >= 400 and len(set(roc.convert("RGB").getdata())) > 20


def test_every_file_a_stage_writes_is_declared(project):
    root, _ = project
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    declared = [Path(out["path"]) for stage in lock["stages"].values() for out in stage.get("outs", [])]
    for folder in ("reports", "models"):
        for path in (root / folder).rglob("*"):
            relative = path.relative_to(root)
            if path.is_file() and relative.name != "unfinished_runs.json":  # journal of failures only
                assert any(relative == d or d in relative.parents for d in declared), relative


def test_one_category_override_reruns_only_that_category(project):
    root, run = project
    status_before = run("dvc", "status", "--json")
    assert json.loads(status_before.stdout or "{}") == {}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["category_overrides"]["bagel"] = {"train": {"epochs": 3}}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        changed = set(json.loads(run("dvc", "status", "--json").stdout))
        # register@bagel too: register and promote compare with the category's own params
        assert changed == {"train@bagel", "evaluate@bagel", "register@bagel"}
    finally:
        params["category_overrides"]["bagel"] = {}
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_models_are_registered_champions_and_predict(project):
    root, run = project
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for category in CATEGORIES:
        version = client.get_model_version_by_alias(f"bridgenet-{category}", "champion")
        assert version.tags.get("git.commit")
        run_info = client.get_run(version.run_id)
        evaluated = json.loads((root / "reports" / "categories" / category / "metrics.json").read_text())
        # the registered run holds the evaluate stage's numbers, not a second scoring's
        assert run_info.data.metrics["test_image_auroc"] == pytest.approx(
            evaluated["categories"][category]["image_auroc"], rel=1e-6)
        assert version.tags["model.sha256"] == json.loads(
            (root / "reports" / "categories" / category / "evaluation.json").read_text())["model_fingerprint"]
    sample = min((root / "data" / "mvtec3d_synth" / "bagel" / "test" / "color" / "rgb").glob("*.png"))
    xyz = sample.parent.parent / "xyz" / (sample.stem + ".tiff")
    out = run("bridgenet", "predict", "--model", "models:/bridgenet-bagel@champion", "--rgb", str(sample),
              "--xyz", str(xyz), "--heatmap", str(root / "heat.png"), timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # fused scores (the default) are standardised, not probabilities: judged against the threshold
    assert result["anomalous"] == (result["score"] > result["threshold"]) and result["scorer"] == "fused"
    assert (root / "heat.png").stat().st_size > 0


def test_dvc_push_and_pull_with_a_local_remote(project, tmp_path):
    root, run = project
    assert run("dvc", "remote", "add", "-f", "-d", "local", str(tmp_path / "remote")).returncode == 0
    push = run("dvc", "push", timeout=600)
    assert push.returncode == 0, push.stderr
    shutil.rmtree(root / "models" / "cookie")
    pull = run("dvc", "pull", timeout=600)
    assert pull.returncode == 0, pull.stderr
    assert (root / "models" / "cookie" / "model.pt").is_file()


def test_the_scheduled_run_goes_through_dvc_and_its_lineage_tags_are_the_data_it_read(project):
    """The schedule's flow is `dvc repro`: the new models' DVC tags equal dvc.lock's hashes of the new data."""
    root, run = project
    from mlflow import MlflowClient

    params = yaml.safe_load((root / "params.yaml").read_text())
    params["synth"]["seed"] = int(params["synth"].get("seed", 0)) + 1  # other data than the first run's
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = run(sys.executable, "-c", "import json; from flows.scheduled import scheduled_retrain_flow; "
               "print(json.dumps(scheduled_retrain_flow(repo='.')))", timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ran = json.loads(done.stdout.strip().splitlines()[-1])["stages_run"]
    assert {"synthesize", "preprocess", "train@bagel", "register@bagel"} <= set(ran)
    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]["preprocess"]
    data_md5 = next(d["md5"] for d in lock["deps"] if d["path"] == "data/mvtec3d_synth")
    cache_md5 = next(o["md5"] for o in lock["outs"] if o["path"] == "data/cache")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for category in CATEGORIES:
        versions = sorted(client.search_model_versions(f"name='bridgenet-{category}'"), key=lambda v: int(v.version))
        first, latest = versions[0].tags, versions[-1].tags
        assert latest["dvc.data_root.md5"] == data_md5 and latest["dvc.cache_dir.md5"] == cache_md5
        assert first["dvc.data_root.md5"] != data_md5  # the first run's models keep their own data's hash

