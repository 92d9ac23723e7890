"""The gate on the line's own defects: both models scored there, reported beside the test split,
logged to MLflow, and a loss beyond the tolerances blocks the promotion (promotion.line_defects)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from bridgenet import stages
from bridgenet.promote import decide
from tests.test_evaluate import evaluation
from tests.tracking.test_registry import scorer_copy


def line_evaluation(auroc: float):
    record = evaluation(data="l" * 64)
    record.metrics.update(image_auroc=auroc, image_ap=auroc, pixel_auroc=math.nan)
    return record


@pytest.mark.parametrize("policy, line_auroc, outcome", [
    ("block", 0.90, "promoted"),  # as good on the line as the champion
    ("block", 0.80, "rejected"),  # 0.1 worse on the line's defects: beyond the 0.005 tolerance
    ("report", 0.80, "promoted"),  # reported, not gated
])
def test_a_loss_on_the_line_s_defects_blocks_only_under_block(tiny, policy, line_auroc, outcome):
    promotion = tiny.params(f"promotion.line_defects={policy}").promotion
    test = evaluation()
    test.metrics.update(aupro_30=0.4)
    decision = decide(test, test, promotion, line=(line_evaluation(line_auroc), line_evaluation(0.90)))
    assert decision["outcome"] == outcome
    line = decision["line_defects"]
    assert line["challenger"]["image_auroc"] == line_auroc and line["champion"]["image_auroc"] == 0.90
    assert line["passed"] is (line_auroc == 0.90) and line["blocks"] is (outcome == "rejected")
    if outcome == "rejected":
        assert decision["reason"].startswith("on the line's own defects: image_auroc dropped by 0.1000")
    assert decision["metrics"]["image_auroc"]["passed"]  # the test split itself was fine


def test_a_first_model_is_never_stopped_by_the_line(tiny):
    decision = decide(evaluation(), None, tiny.params().promotion, line=(line_evaluation(0.2), None))
    assert decision["outcome"] == "promoted" and decision["line_defects"]["champion"] is None


def test_the_gate_scores_both_models_on_the_line_s_defects(tiny, good_models, constant_models, tmp_path):
    """Confirmed defects (one with a mask, one without) in the feedback root, preprocessed; the
    constant model is champion, the good one challenges it: both are scored on the line's set."""
    from bridgenet.feedback import Part, add_feedback

    store = [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", f"eval.reports_dir={tmp_path / 'reports'}",
             f"data.cache_dir={tmp_path / 'cache'}", f"feedback.root={tmp_path / 'feedback'}"]
    test = tiny.root / "data" / "bagel" / "test"
    kind = min(p.name for p in test.iterdir() if p.name != "good")
    parts = [Part(test / kind / "rgb" / f"{stem}.png", test / kind / "xyz" / f"{stem}.tiff", "defect",
                  mask=test / kind / "gt" / f"{stem}.png" if stem == "000" else None, kind="dent")
             for stem in ("000", "001")]
    add_feedback(tiny.params(*store), "bagel", parts)
    stages.preprocess(tiny.params(*store), "bagel")

    constant = tiny.params(*store, f"train.models_dir={constant_models}")
    good_memory = scorer_copy(good_models / "bagel", tmp_path / "models_memory" / "bagel")
    good = tiny.params(*store, f"train.models_dir={good_memory.parent}")
    stages.register(stages.resolve(constant, "bagel"), repo_root=tmp_path)
    first = stages.promote(stages.resolve(constant, "bagel"))
    assert first["decision"] == "promoted" and first["line_defects"]["champion"] is None
    assert first["line_defects"]["challenger"]["image_auroc"] == pytest.approx(0.5)  # a constant score

    stages.register(stages.resolve(good, "bagel"), repo_root=tmp_path)
    report = stages.promote(stages.resolve(good, "bagel"))
    line = report["line_defects"]
    n_good = report["test_data"]["n_test"] - report["test_data"]["n_anomalous"]
    assert (line["n_good"], line["n_defects"], line["n_defects_with_mask"]) == (n_good, 2, 1)
    assert line["champion"]["image_auroc"] == pytest.approx(0.5)
    assert line["challenger"]["image_auroc"] != line["champion"]["image_auroc"]
    assert not math.isnan(line["challenger"]["aupro_30"])  # pixel metrics: from the masked defect
    assert set(line["compared"]) == {"image_auroc", "aupro_30"} and line["policy"] == "block"
    assert line["fingerprint"] != report["test_data"]["fingerprint"]
    on_disk = json.loads((tmp_path / "reports" / "promotion_bagel.json").read_text())
    assert on_disk["line_defects"]["challenger"]["image_auroc"] == pytest.approx(line["challenger"]["image_auroc"])

    client = MlflowClient(good.tracking.uri, good.tracking.uri)
    version = client.get_model_version("bridgenet-bagel", report["challenger"]["version"])
    assert version.tags["line.n_defects"] == "2"
    assert float(version.tags["line.image_auroc"]) == pytest.approx(line["challenger"]["image_auroc"], abs=1e-4)
    run = client.get_run(report["challenger"]["run_id"])
    assert run.data.metrics["line_image_auroc"] == pytest.approx(line["challenger"]["image_auroc"])
    assert "On the line's own 2 confirmed defects (1 with a mask)" in version.description
    assert np.isfinite(report["challenger"]["metrics"]["image_auroc"])  # the test split, reported beside
