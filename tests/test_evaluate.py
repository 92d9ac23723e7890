"""The stored evaluation: a faithful record, found only for the model and the data it was made on."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from bridgenet.config import apply_overrides, params_from_dict
from bridgenet.evaluate import (
    CategoryEvaluation,
    keep_evaluation,
    load_evaluation,
    save_evaluation,
    stored_evaluation,
)
from bridgenet.paths import EVALUATION_FILE, evaluation_file


def evaluation(model: str = "m" * 64, data: str = "d" * 64) -> CategoryEvaluation:
    return CategoryEvaluation(
        category="bagel", metrics={"image_auroc": 0.75, "aupro_30": math.nan},
        per_defect={"crack": 0.5}, per_family={"geometric": 0.5},
        scores=np.array([0.2, 0.9, 0.4], dtype=np.float32), labels=np.array([0, 1, 1]),
        defects=["good", "crack", "crack"], roc=(np.array([0.0, 1.0]), np.array([0.5, 1.0])),
        pro=(np.array([0.0, 0.3]), np.array([0.0, 0.8])), threshold=0.5, display_range=(0.0, 1.0),
        extras={"scorer": "fused"}, model_fingerprint=model, data_fingerprint=data,
    )


def test_the_record_round_trips_with_its_decisions(tmp_path):
    original = evaluation()
    path = save_evaluation(original, tmp_path / EVALUATION_FILE)
    back = load_evaluation(path)
    assert back.metrics["image_auroc"] == 0.75 and math.isnan(back.metrics["aupro_30"])
    np.testing.assert_array_equal(back.scores, original.scores)
    np.testing.assert_array_equal(back.decisions, [False, True, False])
    np.testing.assert_array_equal(back.pro[1], original.pro[1])
    assert (back.threshold, back.defects, back.extras) == (0.5, original.defects, {"scorer": "fused"})
    path.write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match=str(path)):
        load_evaluation(path)


def test_a_stored_evaluation_is_found_only_for_its_model_and_data(tmp_path, caplog):
    params = params_from_dict(apply_overrides({}, [f"eval.reports_dir={tmp_path}"]))
    save_evaluation(evaluation(), evaluation_file(params, "bagel"))
    assert stored_evaluation(params, "bagel", "m" * 64, "d" * 64).threshold == 0.5
    assert stored_evaluation(params, "bagel", "m" * 64, "e" * 64) is None  # other data
    assert stored_evaluation(params, "bagel", "n" * 64, "d" * 64) is None  # other model file
    keep_evaluation(params, evaluation("n" * 64))  # a champion scored on this data
    assert stored_evaluation(params, "bagel", "n" * 64, "d" * 64).model_fingerprint == "n" * 64
    (evaluation_file(params, "bagel")).write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="bridgenet.evaluate"):
        assert stored_evaluation(params, "bagel", "m" * 64, "d" * 64) is None
    assert "not valid JSON" in caplog.text
