"""bridgenet.paths: the project's file layout, derived from the params in one place."""

from __future__ import annotations

from pathlib import Path

from bridgenet import paths
from bridgenet.config import params_from_dict

PARAMS = params_from_dict({"train": {"models_dir": "m"}, "eval": {"reports_dir": "r"},
                           "category_overrides": {"cable": {"eval": {"reports_dir": "r2"}}}})


def test_train_outputs_sit_in_the_category_model_folder() -> None:
    assert paths.model_dir(PARAMS, "bagel") == Path("m/bagel")
    assert paths.model_file(PARAMS, "bagel") == Path("m/bagel/model.pt")
    assert paths.checkpoint_file(PARAMS, "bagel") == Path("m/bagel/checkpoint.pt")
    assert paths.train_summary_file(PARAMS, "bagel") == Path("m/bagel/train_summary.json")
    assert paths.anomaly_preview_file(PARAMS, "bagel") == Path("m/bagel/anomaly_preview.png")


def test_report_layout() -> None:
    assert paths.reports_dir(PARAMS) == Path("r")
    assert paths.category_reports_dir(PARAMS, "bagel") == Path("r/categories/bagel")
    assert paths.evaluation_file(PARAMS, "bagel") == Path("r/categories/bagel/evaluation.json")
    assert paths.stored_evaluation_file(PARAMS, "bagel", "a" * 64, "b" * 64) == Path(
        f"r/evaluations/bagel/{'a' * 16}-{'b' * 16}.json")
    assert paths.category_figures(PARAMS, "bagel") == {
        "heatmaps": Path("r/categories/bagel/heatmaps_bagel.png"),
        "defect_auroc": Path("r/categories/bagel/defect_auroc_bagel.png")}
    assert paths.metrics_table(PARAMS) == Path("r/metrics.md")
    assert {p.name for p in paths.report_files(Path("r")).values()} == {
        "metrics.json", "details.json", "metrics.md", "roc.csv", "pro.csv", "roc.png", "pro.png"}
    assert paths.promotion_report_file(PARAMS, "bagel") == Path("r/promotion_bagel.json")
    assert paths.registry_result_file(PARAMS, "bagel") == Path("r/registry/bagel.json")
    assert paths.unfinished_runs_journal(PARAMS) == Path("r/registry/unfinished_runs.json")


def test_a_category_override_moves_its_files() -> None:
    cable = PARAMS.for_category("cable")
    assert paths.category_reports_dir(cable, "cable") == Path("r2/categories/cable")
