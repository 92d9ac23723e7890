"""Where the pipeline's files are, derived from the params in one place.

    <train.models_dir>/<category>/model.pt                  the trained model (train stage)
                                 /checkpoint.pt             last epoch's state (train --resume)
                                 /train_summary.json        the training summary
                                 /anomaly_preview.png       generated validation anomalies
    <train.models_dir>/bank_updates/<category>/<UTC time>/  ``bridgenet bank add``: model.pt, its
                                                            bank_update.json and train_summary.json
    <eval.reports_dir>/categories/<category>/               the evaluate stage: evaluation.json,
                                                            report files, figures
    <eval.reports_dir>/evaluations/<category>/<model>-<data>.json   evaluations by fingerprint
    <eval.reports_dir>/metrics.json, metrics.md, ...        the report stage (:func:`report_files`)
    <eval.reports_dir>/promotion_<category>.json            the promotion gate's decision
    <eval.reports_dir>/registry/<category>.json             the register stage's result
    <eval.reports_dir>/registry/unfinished_runs.json        MLflow runs not yet ended
    <monitor.log>                                           the prediction log (predict, serving)
    <feedback.root>/<category>/train/good/, test/<kind>/    the operator's confirmed parts
                          /feedback.csv                     ``bridgenet feedback``'s record of them

Pass a category's resolved params (:func:`bridgenet.stages.resolve`): a category
override of ``train.models_dir`` or ``eval.reports_dir`` moves its files. ``dvc.yaml``
spells the same layout for DVC's stage outputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

MLFLOW_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:/")  # model references MLflow resolves

if TYPE_CHECKING:
    from bridgenet.config import Params

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
SUMMARY_FILE = "train_summary.json"
PREVIEW_FILE = "anomaly_preview.png"
EVALUATION_FILE = "evaluation.json"
UNFINISHED_RUNS_FILE = "unfinished_runs.json"


# ------------------------------------------------------------------ train stage
def model_dir(params: Params, category: str) -> Path:
    """``<train.models_dir>/<category>``: the train stage's output folder."""
    return Path(params.train.models_dir) / category


def model_file(params: Params, category: str) -> Path:
    """The trained model the stages after training use: ``<train.models_dir>/<category>/model.pt``."""
    return model_dir(params, category) / MODEL_FILE


def checkpoint_file(params: Params, category: str) -> Path:
    """The last epoch's training state beside the model, for ``bridgenet train --resume``."""
    return model_dir(params, category) / CHECKPOINT_FILE


def train_summary_file(params: Params, category: str) -> Path:
    """The training summary beside the model (``train_summary.json``)."""
    return model_dir(params, category) / SUMMARY_FILE


def anomaly_preview_file(params: Params, category: str) -> Path:
    """The sheet of generated validation anomalies beside the model."""
    return model_dir(params, category) / PREVIEW_FILE


def bank_updates_dir(params: Params, category: str) -> Path:
    """``<train.models_dir>/bank_updates/<category>``: the models ``bridgenet bank add`` writes, one
    folder each. Outside ``<train.models_dir>/<category>``, the train stage's DVC output, which
    ``dvc repro`` replaces whole."""
    return Path(params.train.models_dir) / "bank_updates" / category


# ------------------------------------------------------------------ evaluate and report stages
def reports_dir(params: Params) -> Path:
    """``<eval.reports_dir>``: the report stage's folder, above every other report."""
    return Path(params.eval.reports_dir)


def category_reports_dir(params: Params, category: str) -> Path:
    """``<eval.reports_dir>/categories/<category>``: the evaluate stage's output folder."""
    return reports_dir(params) / "categories" / category


def evaluation_file(params: Params, category: str) -> Path:
    """The evaluate stage's record of the current model on the test split."""
    return category_reports_dir(params, category) / EVALUATION_FILE


def stored_evaluation_file(params: Params, category: str, model_fingerprint: str, data_fingerprint: str) -> Path:
    """Where an evaluation of a model file (by fingerprint) on a test split (by fingerprint) is kept."""
    name = f"{model_fingerprint[:16]}-{data_fingerprint[:16]}.json"
    return reports_dir(params) / "evaluations" / category / name


def category_figures(params: Params, category: str) -> dict[str, Path]:
    """The figures the evaluate stage draws for ``category`` (heatmap sheet, per-defect chart)."""
    folder = category_reports_dir(params, category)
    return {"heatmaps": folder / f"heatmaps_{category}.png",
            "defect_auroc": folder / f"defect_auroc_{category}.png"}


def report_files(folder: Path) -> dict[str, Path]:
    """The report files in ``folder`` (a category's evaluate folder, or ``reports_dir`` for the
    report stage, which alone writes the table and the PNG curves)."""
    folder = Path(folder)
    return {"metrics": folder / "metrics.json", "details": folder / "details.json",
            "table": folder / "metrics.md", "roc_csv": folder / "roc.csv", "pro_csv": folder / "pro.csv",
            "roc_png": folder / "roc.png", "pro_png": folder / "pro.png"}


def metrics_table(params: Params) -> Path:
    """The report stage's metrics table, ``<eval.reports_dir>/metrics.md``."""
    return report_files(reports_dir(params))["table"]


# ------------------------------------------------------------------ register and promote stages
def promotion_report_file(params: Params, category: str) -> Path:
    """The promotion gate's decision, ``<eval.reports_dir>/promotion_<category>.json``."""
    return reports_dir(params) / f"promotion_{category}.json"


def registry_result_file(params: Params, category: str) -> Path:
    """The register stage's result, ``<eval.reports_dir>/registry/<category>.json``."""
    return reports_dir(params) / "registry" / f"{category}.json"


def unfinished_runs_journal(params: Params) -> Path:
    """The journal of MLflow runs started and not yet ended, ``<eval.reports_dir>/registry/``."""
    return reports_dir(params) / "registry" / UNFINISHED_RUNS_FILE


# ------------------------------------------------------------------ operator feedback
FEEDBACK_RECORD_FILE = "feedback.csv"


def feedback_dir(params: Params, category: str) -> Path:
    """``<feedback.root>/<category>``: the operator's confirmed parts of a category, MVTec 3D-AD layout."""
    return Path(params.feedback.root) / category


def feedback_record(params: Params, category: str) -> Path:
    """``<feedback.root>/<category>/feedback.csv``: one row per part ``bridgenet feedback`` took in."""
    return feedback_dir(params, category) / FEEDBACK_RECORD_FILE


# ------------------------------------------------------------------ predict and serving
NO_LOG_ENV = "BRIDGENET_NO_PREDICTION_LOG"  # set (to 1) where predictions are not the line's


def prediction_log(params: Params) -> Path | None:
    """The prediction log ``monitor.log`` (:mod:`bridgenet.monitor.log`); None when it is off: ``""``,
    or :data:`NO_LOG_ENV` set, as while MLflow scores a model's input example to log it (not a
    prediction of the line, so it must not reach the line's log or its drift monitor)."""
    if os.environ.get(NO_LOG_ENV, "") not in ("", "0"):
        return None
    return Path(params.monitor.log) if params.monitor.log else None
