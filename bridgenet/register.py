"""Register stage: log each category's trained model to MLflow and register it as challenger.

Per category: evaluate ``models/<cat>/model.pt`` on the test split, log one
MLflow run (params, per-epoch curves from ``train_summary.json``, test
metrics, figures, the pyfunc model), register it as a new version of
``<registry.prefix>-<cat>`` with the challenger alias and lineage tags, and
log a model card comparing it with the current champion on the same data.
When a step after the run fails (registration, alias, card), the run is
marked FAILED with the reason, so a finished run always means a registered
version; a version already created is kept.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from bridgenet.config import Params

LOGGER = logging.getLogger(__name__)


def register_category(
    params: Params,
    category: str,
    repo_root: Path | str = ".",
    lineage: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Log, register and document ``category``'s model; returns what was created (JSON-able)."""
    from bridgenet.evaluate import evaluate_category, load_test_split, write_category_figures
    from bridgenet.model.io import load_model
    from bridgenet.tracking.figures import anomaly_preview_png, training_curves_png
    from bridgenet.tracking.lineage import lineage_tags
    from bridgenet.tracking.pyfunc import example_from_data
    from bridgenet.tracking.runs import log_training_run
    from bridgenet.tracking.summary import load_train_summary

    model_dir = Path(params.train.models_dir) / category
    model_path = model_dir / "model.pt"
    if not model_path.is_file():
        raise FileNotFoundError(
            f"model file {model_path} does not exist; run `bridgenet train -c {category}`"
        )
    model = load_model(model_path)
    if model.category != category:
        raise ValueError(
            f"{model_path}: holds a model of category {model.category!r}, expected {category!r}"
        )
    if model.params.data != params.data:
        LOGGER.warning(
            "%s was trained with other data settings than the current params; it is "
            "evaluated on the current test split",
            model_path,
        )
    summary = load_train_summary(model_dir)
    lineage = lineage if lineage is not None else lineage_tags(repo_root, params)
    split = load_test_split(params, category)
    evaluation, small_maps = evaluate_category(params, model, split)
    with tempfile.TemporaryDirectory(prefix=f"bridgenet-register-{category}-") as tmp:
        out = Path(tmp)
        figures = write_category_figures(
            evaluation, split, small_maps, out, params.eval.heatmap_samples
        )
        figures["training_curves"] = training_curves_png(
            summary.get("history") or [],
            out / f"training_curves_{category}.png",
            f"{category}: training",
            summary.get("best_epoch"),
        )
        preview = anomaly_preview_png(
            model.params, category, out / f"anomaly_preview_{category}.png"
        )
        logged = log_training_run(
            params,
            category,
            summary,
            evaluation,
            figures,
            model_path,
            preview_path=preview,
            repo_root=repo_root,
            input_example=example_from_data(params.data, category),
            trained_params=model.params,
            lineage=lineage,
        )
    try:
        return _register_logged(params, category, model, summary, evaluation, figures, preview,
                                split, lineage, logged)
    except BaseException as exc:
        from bridgenet.tracking.runs import end_run_as

        end_run_as(params, logged.run_id, "FAILED",
                   f"registration failed after the run was logged: {type(exc).__name__}: {exc}")
        raise


def _register_logged(
    params: Params,
    category: str,
    model: Any,
    summary: dict[str, Any],
    evaluation: Any,
    figures: dict[str, Path],
    preview: Path | None,
    split: Any,
    lineage: dict[str, str],
    logged: Any,
) -> dict[str, Any]:
    """Register the logged run's model as challenger and log its model card."""
    from bridgenet.tracking.model_card import log_model_card, model_card_markdown
    from bridgenet.tracking.registry import (
        alias_version,
        compare_metrics,
        evaluate_version,
        register_challenger,
    )

    version = register_challenger(
        params,
        category,
        logged.model_uri,
        logged.run_id,
        evaluation.metrics,
        lineage,
        extra_tags={
            "threshold": model.threshold,
            "best_epoch": model.epoch,
            "model_id": logged.model_id,
        },
    )
    champion = alias_version(params, category, params.registry.champion_alias)
    champion_eval = None
    if champion is not None and champion.version != version.version:
        champion_eval = evaluate_version(params, category, champion.version, split)
    comparison = (
        compare_metrics(
            evaluation.metrics, champion_eval.evaluation.metrics, params.promotion.tolerances
        )
        if champion_eval
        else None
    )
    card_figures = {
        "Heatmaps (best and worst scored test samples)": f"figures/{figures['heatmaps'].name}",
        "Training curves": f"figures/{figures['training_curves'].name}",
        "Image AUROC per defect type": f"figures/{figures['defect_auroc'].name}",
    }
    if preview is not None:
        card_figures["Generated anomalies (validation)"] = f"figures/{preview.name}"
    card = model_card_markdown(
        params,
        category,
        version,
        logged.run_id,
        summary,
        evaluation,
        lineage,
        comparison,
        champion_eval,
        card_figures,
    )
    card_uri = log_model_card(params, category, version, logged.run_id, card)
    return {
        "category": category,
        "run_id": logged.run_id,
        "model_uri": logged.model_uri,
        "model_name": version.name,
        "version": str(version.version),
        "alias": params.registry.challenger_alias,
        "model_card": card_uri,
        "metrics": {k: float(v) for k, v in evaluation.metrics.items()},
        "champion_version": str(champion.version) if champion else None,
        "would_promote": None if comparison is None else bool(comparison["promote"]),
    }


def run_register(
    params: Params, categories: list[str] | None = None, repo_root: Path | str = "."
) -> dict[str, dict[str, Any]]:
    """Register every category's model (default: all categories of ``data.root``); category -> result."""
    from bridgenet.data.readers import discover_categories
    from bridgenet.tracking.lineage import lineage_tags
    from bridgenet.tracking.runs import configure_tracking

    categories = list(categories or discover_categories(params.data))
    configure_tracking(params)
    lineage = lineage_tags(repo_root, params)
    results = {}
    for category in categories:
        results[category] = register_category(params, category, repo_root, lineage)
        LOGGER.info(
            "%s: registered %s version %s",
            category,
            results[category]["model_name"],
            results[category]["version"],
        )
    return results
