"""Register stage: log a category's trained model to MLflow and register it as challenger.

Per category: take the evaluate stage's stored evaluation of ``models/<cat>/model.pt``
on the current test split (scoring it only when there is none for this model and
data), log one MLflow run (params, per-epoch curves from ``train_summary.json``, test
metrics, the evaluate stage's figures, the stored evaluation, the pyfunc model, the
training data and test split as inputs), register it as a new version of
``<registry.prefix>-<cat>`` with the challenger alias and a few tags, describe the
registered model, and log a model card (:mod:`bridgenet.tracking.model_card`) that says
what the gate would decide against the current champion on the same data. When a step after the run fails (registration, alias, card), the run is
marked FAILED with the reason, so a finished run always means a registered version; a
version already created is kept.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from bridgenet.config import Params
from bridgenet.data.cache import CachedSplit
from bridgenet.evaluate import (
    EVALUATION_FILE,
    CategoryEvaluation,
    category_dir,
    category_figures,
    evaluate_to_folder,
    load_test_split,
    model_path,
    stored_evaluation,
)
from bridgenet.files import sha256_file
from bridgenet.promote import MODEL_FINGERPRINT_TAG, decide, evaluation_of_version, gate_metrics

LOGGER = logging.getLogger(__name__)


def trained_evaluation(params: Params, category: str, split: CachedSplit) -> CategoryEvaluation:
    """The evaluate stage's result for the current ``model.pt`` on ``split``; evaluated now if absent or stale."""
    path = model_path(params, category)
    found = stored_evaluation(params, category, sha256_file(path), split.fingerprint())
    if found is not None and all(p.is_file() for p in category_figures(params, category).values()):
        return found
    LOGGER.info("%s: no evaluation of %s on the current test split in %s; evaluating it now",
                category, path, category_dir(params, category))
    return evaluate_to_folder(params, category, split)


def register_category(
    params: Params, category: str, repo_root: Path | str = ".", lineage: dict[str, str] | None = None
) -> dict[str, Any]:
    """Log, register and document ``category``'s model; returns what was created (JSON-able).

    ``params`` are the category's resolved params (:func:`bridgenet.stages.resolve`).
    """
    from bridgenet import reports
    from bridgenet.model.io import load_model
    from bridgenet.model.summary import load_train_summary
    from bridgenet.paths import PREVIEW_FILE
    from bridgenet.serving.spec import pyfunc_spec
    from bridgenet.tracking.lineage import lineage_tags
    from bridgenet.tracking.runs import end_run_as, log_training_run
    from bridgenet.training.validation import write_anomaly_preview

    path = model_path(params, category)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist; run `bridgenet train -c {category}`")
    model = load_model(path)
    if model.category != category:
        raise ValueError(f"{path}: holds a model of category {model.category!r}, expected {category!r}")
    if model.params.data != params.data:
        LOGGER.warning("%s was trained with other data settings than the current params; it is "
                       "evaluated on the current test split", path)
    summary = load_train_summary(path.parent)
    lineage = lineage if lineage is not None else lineage_tags(repo_root, params)
    split = load_test_split(params, category)
    evaluation = trained_evaluation(params, category, split)
    datasets = input_datasets(params, category, training_data_digest(params, category), evaluation)
    figures = category_figures(params, category)
    with tempfile.TemporaryDirectory(prefix=f"bridgenet-register-{category}-") as tmp:
        out = Path(tmp)
        figures["training_curves"] = reports.write_training_curves(
            out / f"training_curves_{category}.png", summary.get("history") or [],
            f"{category}: training", summary.get("best_epoch"),
        )
        for curve, y_name, title, limit in (("roc", "tpr", "image ROC", None), ("pro", "pro", "PRO curve", 0.3)):
            figures[curve] = out / f"{curve}_{category}.png"
            reports.plot_curves(figures[curve], {category: getattr(evaluation, curve)}, y_name,
                                f"{category}: {title} (test)", limit=limit)
        preview = path.parent / PREVIEW_FILE
        preview = (_renamed_copy(preview, out / f"anomaly_preview_{category}.png") if preview.is_file()
                   else write_anomaly_preview(model.params, category, out / f"anomaly_preview_{category}.png"))
        logged = log_training_run(
            params, category, summary, evaluation, figures, path, pyfunc_spec(params.data, category),
            preview_path=preview, repo_root=repo_root, trained_params=model.params, lineage=lineage,
            records=[category_dir(params, category) / EVALUATION_FILE],
            datasets=datasets,
        )
    try:
        return _register_logged(params, category, model, summary, evaluation, figures, preview,
                                split, lineage, datasets, logged)
    except BaseException as exc:
        end_run_as(params, logged.run_id, "FAILED",
                   f"registration failed after the run was logged: {type(exc).__name__}: {exc}")
        raise


def training_data_digest(params: Params, category: str) -> str:
    """sha256 of ``<data.root>/<category>`` (:func:`bridgenet.tracking.lineage.folder_digest`),
    or ``unknown (...)`` saying why when the folder is not there (a registry fed from the cache)."""
    from bridgenet.tracking.lineage import folder_digest

    try:
        return folder_digest(Path(params.data.root) / category)
    except FileNotFoundError as exc:
        LOGGER.warning("%s: training data digest unknown: %s", category, exc)
        return f"unknown ({exc})"


def input_datasets(params: Params, category: str, train_digest: str,
                   evaluation: CategoryEvaluation) -> list[dict[str, str]]:
    """The data the model was trained and tested on, as the run's inputs: the category's folder
    under ``data.root`` with its digest (:func:`training_data_digest`), and the test split
    with its fingerprint (the preprocessed test samples the evaluation scored)."""
    folder = Path(params.data.root) / category
    return [
        {"name": f"{category}/train", "source": str(folder), "digest": train_digest, "context": "training"},
        {"name": f"{category}/test", "source": str(folder / "test"),
         "digest": evaluation.data_fingerprint or "unknown", "context": "test"},
    ]


def _renamed_copy(source: Path, target: Path) -> Path:
    import shutil

    return Path(shutil.copyfile(source, target))


def _register_logged(
    params: Params,
    category: str,
    model: Any,
    summary: dict[str, Any],
    evaluation: CategoryEvaluation,
    figures: dict[str, Path],
    preview: Path | None,
    split: CachedSplit,
    lineage: dict[str, str],
    datasets: list[dict[str, str]],
    logged: Any,
) -> dict[str, Any]:
    """Register the logged run's model as challenger, describe the registered model, log the model card."""
    from bridgenet.tracking import registry
    from bridgenet.tracking.model_card import (
        log_model_card,
        model_card_markdown,
        registered_model_description,
        ui_url,
    )

    version = registry.register_challenger(
        params, category, logged.model_uri, logged.run_id, gate_metrics(evaluation), lineage,
        extra_tags={"threshold": registry.metric_text(model.threshold),
                    MODEL_FINGERPRINT_TAG: evaluation.model_fingerprint},
    )
    promotion = params.promotion
    registry.describe_registered_model(params, category, registered_model_description(params, category), {
        "category": category,
        "data": str(Path(params.data.root) / category),
        "modalities": "+".join(params.model.modalities),
        "gate": f"FPR <= {promotion.max_fpr_at_threshold:g}, recall >= {promotion.min_recall_at_threshold:g}, "
                f"image AUROC >= {promotion.min_image_auroc:g}",
    })
    champion = registry.alias_version(params, category, params.registry.champion_alias)
    champion_eval = None
    if champion is not None and champion.version != version.version:
        champion_eval = evaluation_of_version(params, category, champion, split)
    gate = decide(evaluation, champion_eval.evaluation if champion_eval else None, promotion)
    card_figures = {
        "ROC curve (test)": f"figures/{figures['roc'].name}",
        "PRO curve (test)": f"figures/{figures['pro'].name}",
        "Heatmaps: best and worst scored test parts": f"figures/{figures['heatmaps'].name}",
        "Image AUROC per defect type": f"figures/{figures['defect_auroc'].name}",
        "Training curves": f"figures/{figures['training_curves'].name}",
    }
    if preview is not None:
        card_figures["Generated anomalies (validation)"] = f"figures/{preview.name}"
    train, test = datasets
    def card(figure_base: str) -> str:
        return model_card_markdown(
            params, category, version, {"id": logged.run_id, "name": logged.name, "user": logged.user},
            summary, evaluation, lineage,
            {"train_path": train["source"], "train_digest": train["digest"], "test_name": test["name"],
             "test_path": test["source"]},
            gate,
            (champion_eval.version, gate_metrics(champion_eval.evaluation)) if champion_eval else None,
            card_figures, figure_base,
        )

    card_uri = log_model_card(params, category, version, logged.run_id, card(ui_url(params)))
    registry.set_version_description(params, version.name, version.version, card(""))
    return {
        "category": category,
        "run_id": logged.run_id,
        "run_name": logged.name,
        "model_uri": logged.model_uri,
        "model_name": version.name,
        "version": str(version.version),
        "alias": params.registry.challenger_alias,
        "model_card": card_uri,
        "metrics": {k: float(v) for k, v in evaluation.metrics.items()},
        "champion_version": str(champion.version) if champion else None,
        "would_promote": None if champion_eval is None else bool(gate["promote"]),
    }
