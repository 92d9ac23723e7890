"""The stage layer: params resolved once per category, the test split scored once per model."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bridgenet import evaluate, stages

STAGE_MODULES = ("bridgenet.train", "bridgenet.evaluate", "bridgenet.predict", "bridgenet.preprocess",
                 "bridgenet.register", "bridgenet.promote", "bridgenet.stages")


def test_tracking_imports_no_stage_module():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import bridgenet.tracking, bridgenet.tracking.lineage, bridgenet.tracking.model_card\n"
        "import bridgenet.tracking.pyfunc, bridgenet.tracking.registry, bridgenet.tracking.runs\n"
        "import bridgenet.tracking.retry, bridgenet.tracking.store, bridgenet.tracking.journal\n"
        f"print([m for m in {STAGE_MODULES!r} if m in sys.modules])\n"
        "print('bridgenet.model.network' in sys.modules, 'prefect' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    loaded, rest = out.stdout.strip().splitlines()
    assert loaded == "[]"
    assert rest == "False False"  # not even the network, and no Prefect


class ScoringSpy:
    """Counts the test-split scorings per (model weights and scorer, split content)."""

    def __init__(self, monkeypatch):
        self.calls: Counter[tuple[str, str]] = Counter()
        real = evaluate.score_split

        def spy(model, split, batch_size, device):
            weights = model.network.discriminator.tail.weight.detach().numpy().tobytes()
            key = (hashlib.sha256(weights + model.network.scorer.name.encode()).hexdigest()[:12],
                   split.fingerprint()[:12])
            self.calls[key] += 1
            return real(model, split, batch_size, device)

        monkeypatch.setattr(evaluate, "score_split", spy)

    def take(self) -> Counter[tuple[str, str]]:
        calls, self.calls = self.calls, Counter()
        return calls


def model_folder(source: Path, target: Path) -> Path:
    """A models_dir holding ``source``'s bagel model (model.pt and its JSON files)."""
    (target / "bagel").mkdir(parents=True)
    for path in source.glob("*"):
        if path.is_file():
            shutil.copy(path, target / "bagel" / path.name)
    return target


def pipeline(params) -> dict:
    """One pipeline run of bagel after training: evaluate, register, promote."""
    run = stages.resolve(params, "bagel")
    stages.evaluate(run)
    registered = stages.register(run, repo_root=Path(params.eval.reports_dir).parent)
    return {"registered": registered, "promoted": stages.promote(run)}


def test_one_pipeline_run_scores_each_model_on_each_split_once(tiny, good_models, constant_models,
                                                               tmp_path, monkeypatch):
    from tests.tracking.test_registry import scorer_copy

    spy = ScoringSpy(monkeypatch)
    store = [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"eval.reports_dir={tmp_path / 'reports'}"]

    first = pipeline(tiny.params(*store, f"train.models_dir={model_folder(good_models / 'bagel', tmp_path / 'a')}"))
    assert first["promoted"]["decision"] == "promoted"
    assert list(spy.take().values()) == [1]  # evaluate scored it; register and promote read that

    second = pipeline(tiny.params(*store, f"train.models_dir={constant_models}"))
    assert second["registered"]["champion_version"] == "1"
    assert list(spy.take().values()) == [1]  # the champion's stored evaluation is for this data

    # Other test data (one test sample fewer): the champion was evaluated on other data, so it is
    # scored once more, in register, and promote reads both evaluations.
    cache = tmp_path / "cache"
    shutil.copytree(tiny.params().data.cache_dir, cache)
    index = cache / "bagel" / "index.csv"
    lines = index.read_text().splitlines(keepends=True)
    dropped = next(i for i, line in enumerate(lines) if ",test," in line)
    index.write_text("".join(lines[:dropped] + lines[dropped + 1:]))
    disc = scorer_copy(good_models / "bagel", tmp_path / "c" / "bagel").parent
    third = pipeline(tiny.params(*store, f"data.cache_dir={cache}", f"train.models_dir={disc}"))
    calls = spy.take()
    assert sorted(calls.values()) == [1, 1] and len({split for _, split in calls}) == 1
    assert third["promoted"]["champion_before"]["version"] in {"1", "2"}
    assert third["promoted"]["test_data"]["n_test"] == first["promoted"]["test_data"]["n_test"] - 1

    # Gating again on the same data scores nothing.
    stages.promote(stages.resolve(tiny.params(*store, f"data.cache_dir={cache}",
                                              f"train.models_dir={disc}"), "bagel"))
    assert not spy.take()


def test_a_category_eval_override_reaches_evaluate_register_and_promote(tiny, good_models, tmp_path,
                                                                       monkeypatch):
    from bridgenet.cli import main
    from bridgenet.model.io import load_model

    spy = ScoringSpy(monkeypatch)
    bagel_reports = tmp_path / "bagel-reports"
    params = tiny.params(
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"eval.reports_dir={tmp_path / 'reports'}",
        f"category_overrides.bagel.eval.reports_dir={bagel_reports}",
        "category_overrides.bagel.eval.aupro_thresholds=100",
    )
    assert params.eval.aupro_thresholds == 200
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params.to_dict()))
    for verb in ("evaluate", "register", "promote"):
        result = CliRunner().invoke(main, [verb, "-c", "bagel", "--params", str(params_file)])
        assert result.exit_code == 0, result.output

    evaluated = json.loads((bagel_reports / "categories" / "bagel" / "metrics.json").read_text())
    metrics = evaluated["categories"]["bagel"]
    assert not (tmp_path / "reports" / "categories" / "bagel").exists()
    assert sum(spy.take().values()) == 1  # register and promote found evaluate's result where it put it
    # ... which was computed with the category's 100 AU-PRO thresholds, not the global 200
    run = stages.resolve(params, "bagel")
    split = evaluate.load_test_split(run.params, "bagel")
    model = load_model(good_models / "bagel" / "model.pt")
    with_override, _ = evaluate.evaluate_category(run.params, model, split)
    without, _ = evaluate.evaluate_category(params, model, split)
    assert metrics["aupro_1"] == pytest.approx(with_override.metrics["aupro_1"])
    assert with_override.metrics["aupro_1"] != pytest.approx(without.metrics["aupro_1"], rel=1e-9)

    promotion = json.loads((bagel_reports / "promotion_bagel.json").read_text())
    assert promotion["decision"] == "promoted"
    assert promotion["challenger"]["metrics"]["aupro_1"] == pytest.approx(metrics["aupro_1"])
    client = MlflowClient(params.tracking.uri, params.tracking.uri)
    version = client.get_model_version_by_alias("bridgenet-bagel", "champion")
    assert f"| aupro_1 | {metrics['aupro_1']:.3f} |" in version.description  # the card's table
    assert client.get_run(version.run_id).data.metrics["test_aupro_1"] == pytest.approx(metrics["aupro_1"])
