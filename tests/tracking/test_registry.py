"""Registration, model card and the promotion gate (challenger vs champion on the same data)."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from bridgenet import stages
from bridgenet.promote import compare_metrics

TOL = {"image_auroc": 0.005, "aupro_30": 0.01}
NAN = float("nan")


# ------------------------------------------------------------- the decision
def test_first_model_is_promoted():
    decision = compare_metrics({"image_auroc": 0.7, "aupro_30": 0.2}, None, TOL)
    assert decision["promote"] and "first model" in decision["reason"]


@pytest.mark.parametrize(
    "challenger, promoted, named",
    [
        ({"image_auroc": 0.900, "aupro_30": 0.50}, True, None),  # equal
        ({"image_auroc": 0.896, "aupro_30": 0.491}, True, None),  # drops within tolerance
        ({"image_auroc": 0.950, "aupro_30": 0.70}, True, None),  # better
        ({"image_auroc": 0.894, "aupro_30": 0.50}, False, "image_auroc"),  # drop 0.006 > 0.005
        ({"image_auroc": 0.990, "aupro_30": 0.48}, False, "aupro_30"),  # better image, worse pixels
        ({"image_auroc": 0.900, "aupro_30": NAN}, False, "undefined"),  # cannot be measured
    ],
)
def test_no_gated_metric_may_drop_beyond_its_tolerance(challenger, promoted, named):
    decision = compare_metrics(challenger, {"image_auroc": 0.9, "aupro_30": 0.5}, TOL)
    assert decision["promote"] is promoted
    if named:
        assert named in decision["reason"]
    assert decision["metrics"]["image_auroc"]["champion"] == 0.9


@pytest.mark.parametrize("champion", [None, {"image_auroc": 0.5, "aupro_30": 0.1}])
def test_a_challenger_below_a_floor_is_never_promoted_first_model_included(champion):
    floors = {"image_auroc": 0.6}
    low = compare_metrics({"image_auroc": 0.55, "aupro_30": 0.9}, champion, TOL, floors)
    assert not low["promote"] and "image_auroc 0.5500 is below the floor 0.6" in low["reason"]
    assert low["floors"]["image_auroc"] == {"challenger": 0.55, "floor": 0.6, "passed": False}
    undefined = compare_metrics({"image_auroc": NAN, "aupro_30": 0.9}, champion, TOL, floors)
    assert not undefined["promote"]
    assert compare_metrics({"image_auroc": 0.6, "aupro_30": 0.9}, champion, TOL, floors)["promote"]


def test_the_deployed_threshold_has_a_cap_on_false_rejects_and_a_floor_on_recall():
    challenger = {"image_auroc": 0.95, "aupro_30": 0.6, "fpr_at_threshold": 1 / 3, "recall_at_threshold": 0.9}
    champion = {"image_auroc": 0.9, "aupro_30": 0.5, "fpr_at_threshold": 0.0, "recall_at_threshold": 0.9}
    caps, floors = {"fpr_at_threshold": 0.2}, {"recall_at_threshold": 0.5}
    for other in (None, champion):  # the first model too
        decision = compare_metrics(challenger, other, TOL, floors, caps,
                                   notes={"fpr_at_threshold": " (1 of 3 good test parts rejected)"})
        assert not decision["promote"]
        assert decision["reason"] == "fpr_at_threshold 0.3333 is above the cap 0.2 (1 of 3 good test parts rejected)"
        assert decision["caps"]["fpr_at_threshold"] == {"challenger": 1 / 3, "cap": 0.2, "passed": False}
    low_recall = {**challenger, "fpr_at_threshold": 0.1, "recall_at_threshold": 0.4}
    assert "recall_at_threshold 0.4000 is below the floor 0.5" in compare_metrics(
        low_recall, None, TOL, floors, caps)["reason"]
    assert compare_metrics({**challenger, "fpr_at_threshold": 0.2}, champion, TOL, floors, caps)["promote"]
    assert not compare_metrics({**challenger, "fpr_at_threshold": NAN}, champion, TOL, floors, caps)["promote"]


def test_a_tolerance_on_false_rejects_counts_a_rise_as_the_loss():
    tolerances = {**TOL, "fpr_at_threshold": 0.05}
    old = {"image_auroc": 0.9, "aupro_30": 0.5, "fpr_at_threshold": 0.10}
    worse = compare_metrics({**old, "fpr_at_threshold": 0.20}, old, tolerances)
    assert not worse["promote"] and "fpr_at_threshold rose by 0.1000 (0.1000 -> 0.2000" in worse["reason"]
    assert compare_metrics({**old, "fpr_at_threshold": 0.0}, old, tolerances)["promote"]  # fewer: better


def test_decide_gates_the_deployed_threshold_with_the_configured_limits(tiny):
    from bridgenet.promote import decide, gate_metrics
    from tests.test_evaluate import evaluation

    record = evaluation()  # scores 0.2 (good), 0.9 and 0.4 (crack) at threshold 0.5
    record.metrics.update(image_auroc=0.75, aupro_30=0.3)
    assert gate_metrics(record)["recall_at_threshold"] == 0.5 and gate_metrics(record)["fpr_at_threshold"] == 0
    strict = tiny.params("promotion.min_recall_at_threshold=0.6").promotion
    decision = decide(record, None, strict)
    assert decision["outcome"] == "rejected"
    assert "recall_at_threshold 0.5000 is below the floor 0.6 (1 of 2 defective test parts found)" in decision["reason"]
    assert decide(record, None, tiny.params().promotion)["outcome"] == "promoted"
    same = decide(record, None, strict, challenger_is_champion=True)
    assert same["outcome"] == "unchanged" and not same["promote"]


def test_metric_undefined_for_both_is_skipped():
    decision = compare_metrics(
        {"image_auroc": 0.9, "aupro_30": NAN}, {"image_auroc": 0.9, "aupro_30": NAN}, TOL
    )
    assert decision["promote"] and "aupro_30" in decision["reason"]


# ------------------------------------------------------------ registration
def test_registered_version_has_aliases_lineage_metrics_and_card(registry):
    params = registry["params"]
    client = MlflowClient(params.tracking.uri, params.tracking.uri)
    for category in ("bagel", "dowel"):
        result = registry["registered"][category]
        version = client.get_model_version_by_alias(f"bridgenet-{category}", "champion")
        assert str(version.version) == str(result["version"]) == "1"
        assert (
            client.get_model_version_by_alias(f"bridgenet-{category}", "challenger").version
            == version.version
        )
        assert version.run_id == result["run_id"]
        tags = version.tags
        assert tags["category"] == category
        assert float(tags["test.image_auroc"]) == pytest.approx(result["metrics"]["image_auroc"], abs=1e-4)
        assert {"git.commit", "dvc.lock", "model_card", "model.sha256", "threshold", "test.fpr_at_threshold",
                "test.recall_at_threshold", "promotion.decision", "promotion.reason"} <= set(tags)
        assert len(tags) <= 14, sorted(tags)  # what a reviewer filters on; the rest is in the card
        assert "nan" not in tags.values()
        assert tags["promotion.decision"] == "promoted"
        card = Path(
            mlflow.artifacts.download_artifacts(
                tags["model_card"], tracking_uri=params.tracking.uri
            )
        ).read_text()
        assert card.startswith("Challenger, not gated yet: against no champion yet it would be promoted")
        assert f"# Model card: bridgenet-{category}, version 1" in card
        description = version.description
        for name in ("heatmaps", "training_curves", "roc", "pro", "defect_auroc"):
            # the file's viewer shows images with an absolute URL only: the UI's (tracking.host:ui_port)
            link = f"get-artifact?path=figures%2F{name}_{category}.png&run_uuid={result['run_id']})"
            assert f"](http://127.0.0.1:5000/{link}" in card and f"]({link}" in description
        for defect in _defects(params, category):
            assert f"| {defect} |" in card
        model = client.get_registered_model(f"bridgenet-{category}")
        assert model.description.startswith(f"Anomaly detector for {category} parts")
        assert model.tags["category"] == category and "FPR <=" in model.tags["gate"]


def test_the_registry_page_holds_what_a_reviewer_needs(registry):
    """Description (decision line, then the card), inputs with their digests, source, metrics at the threshold,
    curves; a logged model named after the category that holds the selected epoch's numbers."""
    from bridgenet.tracking.lineage import folder_digest

    params = registry["params"]
    client = MlflowClient(params.tracking.uri, params.tracking.uri)
    result = registry["registered"]["bagel"]
    version = client.get_model_version("bridgenet-bagel", result["version"])
    first_line = version.description.splitlines()[0]
    assert first_line.startswith("PROMOTED on ") and "v1 is the champion (was: no champion yet)" in first_line
    assert "first model: no champion yet" in first_line and "#" not in first_line and "*" not in first_line
    assert "# Model card: bridgenet-bagel, version 1" in version.description  # the card below the decision
    assert len(version.description) < 5000 and "(cut here" not in version.description
    run = client.get_run(result["run_id"])
    assert run.info.run_name == result["run_name"] and run.info.run_name.startswith("bagel 20")
    assert run.data.tags["bridgenet.stage"] == "register"
    assert "bridgenet-bagel" in run.data.tags["mlflow.note.content"]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {"bagel/train", "bagel/test"}
    tags = {name: {t.key: t.value for t in d.tags} for name, d in inputs.items()}
    assert {name: t.get("mlflow.data.context") for name, t in tags.items()} == {
        "bagel/train": "training", "bagel/test": "test"}
    evaluation = json.loads((Path(params.eval.reports_dir) / "categories" / "bagel" / "evaluation.json").read_text())
    assert tags["bagel/test"]["sha256"] == evaluation["data_fingerprint"]  # whole, beside MLflow's 36 characters
    assert inputs["bagel/test"].dataset.digest == evaluation["data_fingerprint"][:36]
    train_digest = folder_digest(Path(params.data.root) / "bagel")
    assert tags["bagel/train"]["sha256"] == train_digest
    assert f"sha256 `{train_digest}`" in version.description
    assert "`bagel/test`" in version.description and evaluation["data_fingerprint"] in version.description
    assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"]
    metrics = run.data.metrics
    counts = [metrics[f"test_at_threshold_{k}"] for k in ("tp", "fp", "fn", "tn")]
    assert sum(counts) == metrics["test_n_test"] > 0
    assert metrics["test_at_threshold_tp"] + metrics["test_at_threshold_fn"] == pytest.approx(
        metrics["test_n_anomalous"])
    assert 0 <= metrics["test_at_threshold_fpr"] <= 1 and 0 <= metrics["test_at_threshold_recall"] <= 1
    tp, fp, fn, tn = (int(c) for c in counts)
    assert f"| defective parts ({tp + fn}) | TP {tp} | FN {fn} |" in version.description
    assert f"| good parts ({fp + tn}) | FP {fp} | TN {tn} |" in version.description
    figures = {f.path for f in client.list_artifacts(result["run_id"], "figures")}
    assert {"figures/roc_bagel.png", "figures/pro_bagel.png"} <= figures

    logged = client.get_logged_model(result["model_uri"].removeprefix("models:/"))
    assert logged.name == "bridgenet-bagel"
    summary = json.loads((Path(params.train.models_dir) / "bagel" / "train_summary.json").read_text())
    selected = {m.key: m for m in logged.metrics}
    # the model file's validation numbers (the selected epoch as the file scores), as on the run
    assert selected["best_val_image_auroc"].value == pytest.approx(summary["validation"]["val_image_auroc"])
    assert selected["best_epoch"].value == summary["best_epoch"]
    assert "val_score" not in selected and "loss" not in selected  # per-epoch curves stay the run's
    assert selected["test_image_auroc"].value == pytest.approx(result["metrics"]["image_auroc"])
    assert selected["test_image_auroc"].dataset_name == "bagel/test"


def test_the_training_input_is_the_category_s_folder_with_its_own_digest(tiny):
    from types import SimpleNamespace

    from bridgenet.register import input_datasets, training_data_digest

    params, evaluation = tiny.params(), SimpleNamespace(data_fingerprint="f" * 64)
    bagel, dowel = training_data_digest(params, "bagel"), training_data_digest(params, "dowel")
    assert len(bagel) == 64 and bagel != dowel  # not the data root's, the same for every category
    train, test = input_datasets(params, "bagel", bagel, evaluation)
    assert train == {"name": "bagel/train", "source": str(Path(params.data.root) / "bagel"), "digest": bagel,
                     "context": "training"}
    assert test["digest"] == "f" * 64 and test["context"] == "test" and test["name"] == "bagel/test"
    assert training_data_digest(params, "nosuch").startswith("unknown (data folder")


def test_register_reads_what_train_and_evaluate_left_and_makes_only_the_rest(tiny, good_models, tmp_path,
                                                                             monkeypatch):
    from bridgenet import evaluate, paths
    from bridgenet.files import sha256_file
    from bridgenet.register import made_at_registration, read_stage_outputs
    from bridgenet.training import validation
    from tests.tracking.test_stages import model_folder

    models = model_folder(good_models / "bagel", tmp_path / "models")
    (models / "bagel" / paths.PREVIEW_FILE).write_bytes(b"the train stage's preview")
    params = tiny.params(f"train.models_dir={models}", f"eval.reports_dir={tmp_path / 'reports'}")
    before = read_stage_outputs(params, "bagel")
    assert before.evaluation is None  # nothing evaluated yet: made at registration
    assert before.preview == models / "bagel" / paths.PREVIEW_FILE
    stages.evaluate(stages.resolve(params, "bagel"))

    left = read_stage_outputs(params, "bagel")
    assert left.evaluation is not None and left.evaluation.model_fingerprint == sha256_file(left.model_file)
    assert left.summary.best_epoch == before.summary.best_epoch and left.trained_params.train.epochs == 2

    def not_again(*args, **kwargs):
        raise AssertionError("register redid an earlier stage's work")

    monkeypatch.setattr(evaluate, "evaluate_to_folder", not_again)
    monkeypatch.setattr(validation, "write_anomaly_preview", not_again)
    made = made_at_registration(params, "bagel", left, tmp_path)
    assert made.evaluation is left.evaluation
    assert set(made.figures) == {"training_curves", "roc", "pro", "anomaly_preview"}
    assert made.figures["anomaly_preview"].read_bytes() == b"the train stage's preview"
    assert made.figures["anomaly_preview"].name == "anomaly_preview_bagel.png"
    assert len(made.train_digest) == 64 and set(made.pyfunc.input_example) == {"rgb", "xyz"}


def _defects(params, category):
    folder = Path(params.data.root) / category / "test"
    return sorted(p.name for p in folder.iterdir() if p.name != "good")


# ---------------------------------------------------------------- the gate
def scorer_copy(source: Path, target: Path, scorer: str = "memory") -> Path:
    """``source``'s model.pt and train summary in ``target``, set to score with ``scorer`` alone."""
    import shutil

    from bridgenet.config import apply_overrides, params_from_dict
    from bridgenet.model.io import load_model, read_checkpoint, save_model

    model = load_model(source / "model.pt")
    model = model.with_meta(params=params_from_dict(apply_overrides(model.params.to_dict(),
                                                                    [f"model.scorer={scorer}"])))
    model.network.scorer = scorer
    target.mkdir(parents=True)
    save_model(model, target / "model.pt", read_checkpoint(source / "model.pt")["history"])
    for extra in source.glob("*.json"):
        shutil.copy(extra, target / extra.name)
    return target


def test_promotion_gate_keeps_the_better_model(tiny, good_models, constant_models, tmp_path):
    """constant model first (becomes champion), good model promoted over it, constant again rejected."""
    from bridgenet.cli import main

    store = [
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"eval.reports_dir={tmp_path / 'reports'}",
    ]
    constant = tiny.params(*store, f"train.models_dir={constant_models}")
    # The gate's logic against the constant discriminator: the good model scored by its memory
    # head (on 13 test samples a 2-epoch tiny model's discriminator is no better than chance).
    good_memory = scorer_copy(good_models / "bagel", tmp_path / "models_memory" / "bagel")
    good = tiny.params(*store, f"train.models_dir={good_memory.parent}")
    client = MlflowClient(good.tracking.uri, good.tracking.uri)
    report_path = tmp_path / "reports" / "promotion_bagel.json"

    def register(params):
        return stages.register(stages.resolve(params, "bagel"), repo_root=tmp_path)

    assert register(constant)["version"] == "1"
    first = stages.promote(stages.resolve(constant, "bagel"))
    assert first["decision"] == "promoted" and first["champion_after"] == "1"
    assert first["challenger"]["metrics"]["image_auroc"] == pytest.approx(0.5)

    registered = register(good)
    assert registered["version"] == "2" and registered["champion_version"] == "1"
    assert registered["would_promote"] is True
    second = stages.promote(stages.resolve(good, "bagel"))
    assert second["decision"] == "promoted", second["reason"]
    assert second["champion_before"]["version"] == "1" and second["champion_after"] == "2"
    # Better where it counts on this 13-sample set: the constant map localises nothing.
    assert second["compared"]["aupro_30"]["challenger"] > second["compared"]["aupro_30"]["champion"]
    assert json.loads(report_path.read_text())["decision"] == "promoted"
    assert str(client.get_model_version_by_alias("bridgenet-bagel", "champion").version) == "2"
    v2 = client.get_model_version("bridgenet-bagel", "2")
    assert v2.tags["promotion.decision"] == "promoted"
    assert v2.description.startswith("PROMOTED on ") and "(was: champion v1)" in v2.description.splitlines()[0]
    assert "| image_auroc | " in v2.description and "| 0.500 |" in v2.description  # the champion's, 3 decimals
    assert second["champion_before"]["metrics"]["image_auroc"] == pytest.approx(0.5)
    assert client.get_model_version("bridgenet-bagel", "1").tags["promotion.superseded_by"] == "2"
    card = Path(
        mlflow.artifacts.download_artifacts(v2.tags["model_card"], tracking_uri=good.tracking.uri)
    ).read_text()
    assert card.startswith("Challenger, not gated yet: against champion v1 it would be promoted")
    assert "| champion v1 |" in card

    # a worse model is registered as challenger but never promoted (gate run through the CLI)
    assert register(constant)["would_promote"] is False
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(constant.to_dict()))
    result = CliRunner().invoke(main, ["promote", "-c", "bagel", "--params", str(params_file)])
    assert result.exit_code == 0, result.output
    third = json.loads(report_path.read_text())
    assert third["decision"] == "rejected" and "aupro_30 dropped" in third["reason"]
    assert third["applied"] is True and third["failure"] is None
    assert third["test_data"]["fingerprint"] == second["test_data"]["fingerprint"]
    assert str(client.get_model_version_by_alias("bridgenet-bagel", "champion").version) == "2"
    assert str(client.get_model_version_by_alias("bridgenet-bagel", "challenger").version) == "3"
    assert client.get_model_version("bridgenet-bagel", "3").tags["promotion.decision"] == "rejected"

    # gating the champion against itself changes nothing
    client.set_registered_model_alias("bridgenet-bagel", "challenger", "2")
    unchanged = stages.promote(stages.resolve(good, "bagel"))
    assert unchanged["decision"] == "unchanged" and not unchanged["promoted"]
    assert str(client.get_model_version_by_alias("bridgenet-bagel", "champion").version) == "2"


def test_a_first_model_below_the_floor_is_registered_but_not_champion(tiny, constant_models, tmp_path):
    params = tiny.params(f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"eval.reports_dir={tmp_path / 'r'}",
                         f"train.models_dir={constant_models}", "promotion.min_image_auroc=0.6")
    client = MlflowClient(params.tracking.uri, params.tracking.uri)
    assert stages.register(stages.resolve(params, "bagel"), repo_root=tmp_path)["version"] == "1"
    report = stages.promote(stages.resolve(params, "bagel"))
    assert report["decision"] == "rejected" and report["champion_after"] is None
    assert "below the floor 0.6" in report["reason"] and report["floors"]["image_auroc"]["passed"] is False
    assert str(client.get_model_version_by_alias("bridgenet-bagel", "challenger").version) == "1"
    with pytest.raises(mlflow.exceptions.MlflowException, match="champion"):
        client.get_model_version_by_alias("bridgenet-bagel", "champion")
    assert client.get_model_version("bridgenet-bagel", "1").tags["promotion.decision"] == "rejected"


def test_promote_without_a_challenger_is_an_error(tiny, tmp_path):
    params = tiny.params(f"tracking.uri=sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(ValueError, match="no 'challenger' version"):
        stages.promote(stages.resolve(params, "bagel"))
