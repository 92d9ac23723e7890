"""The model card of a registered version (Markdown), logged with its run.

Holds provenance (run, git commit, DVC md5 of the data), the test metrics next
to the current champion's on the same data, image AUROC per defect type and
family, and the run's figures (heatmap sheet, training curves, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow.entities.model_registry import ModelVersion

from bridgenet.config import Params
from bridgenet.metrics import METRIC_KEYS
from bridgenet.tracking.registry import metric_text, model_name, set_version_tags
from bridgenet.tracking.runs import call_tracking, tracking_client

MODEL_CARD = "model_card.md"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def model_card_markdown(
    params: Params,
    category: str,
    version: ModelVersion,
    run_id: str,
    summary: Mapping[str, Any],
    evaluation: Any,
    lineage: Mapping[str, str],
    comparison: Mapping[str, Any] | None,
    champion: tuple[str, Mapping[str, float]] | None,
    figures: Mapping[str, str],
) -> str:
    """The model card (Markdown) of one registered version.

    ``evaluation`` has ``metrics``, ``per_defect``, ``per_family``, ``threshold`` and
    ``extras`` (a :class:`bridgenet.evaluate.CategoryEvaluation`); ``champion`` is the
    current champion's (version, metrics on the same data), ``comparison`` the
    promotion decision between the two. ``figures`` maps a title to a path relative
    to the card (the card and a ``figures/`` folder are artifacts of the same run).
    """
    name = model_name(params, category)
    m = params.model
    git = f"`{lineage.get('git.commit', 'unknown')}` (dirty: {lineage.get('git.dirty', 'unknown')})"
    data_md5 = lineage.get("dvc.data_root.md5", lineage.get("dvc.lock"))
    cache_md5 = lineage.get("dvc.cache_dir.md5", lineage.get("dvc.lock"))
    epochs = summary.get("epochs", len(summary.get("history") or []))
    threshold = metric_text(summary.get("threshold", evaluation.threshold))
    lines = [
        f"# Model card: {name}, version {version.version}",
        "",
        f"BridgeNet anomaly detector (RGB + point cloud) for the **{category}** category, "
        + "trained on defect-free samples only.",
        "",
        "## Provenance",
        "",
        f"- MLflow run: `{run_id}`; model: `{version.source}`",
        f"- git commit: {git}",
        f"- data (`{params.data.root}`) md5: `{data_md5}`",
        f"- preprocessed cache (`{params.data.cache_dir}`) md5: `{cache_md5}`",
        f"- backbone `{m.backbone}` (layers {list(m.layers)}), embed {m.embed_dim}, "
        + f"modalities {list(m.modalities)}, input {params.data.image_size} px",
        f"- scorer `{m.scorer}`" + (f" (discriminator weight {m.fusion_weight})" if m.scorer == "fused" else "")
        + f"; memory bank: coreset ratio {m.memory.coreset_ratio}, at most {m.memory.max_bank} per modality",
        f"- trained {epochs} epochs, selected epoch {summary.get('best_epoch')} on the validation "
        + f"split; decision threshold {threshold}",
        "",
        "## Test metrics",
        "",
    ]
    champion_version, champ_metrics = champion if champion else (None, None)
    head = ["metric", f"v{version.version} (this)"]
    if champion:
        head += [f"champion v{champion_version}", "change", "tolerance"]
    lines += [_row(head), _row(["---"] * len(head))]
    tolerances = params.promotion.tolerances
    for key in METRIC_KEYS:
        cells = [key, metric_text(evaluation.metrics.get(key))]
        if champ_metrics:
            change = float(evaluation.metrics[key]) - float(champ_metrics[key])
            cells += [
                metric_text(champ_metrics[key]),
                metric_text(change),
                str(tolerances[key]) if key in tolerances else "",
            ]
        lines.append(_row(cells))
    lines += ["", "## Comparison with the current champion", ""]
    if comparison is None or champion is None:
        lines.append("No champion yet: this version becomes the champion when promoted.")
    else:
        verdict = "would be promoted" if comparison["promote"] else "would NOT be promoted"
        lines.append(
            f"Evaluated on the same test split as champion v{champion_version}: "
            f"{verdict} ({comparison['reason']})."
        )
    lines += [
        "",
        "## Image AUROC per defect type",
        "",
        _row(["defect type", "family", "image AUROC"]),
        _row(["---"] * 3),
    ]
    families = evaluation.extras.get("families", {}) if getattr(evaluation, "extras", None) else {}
    for defect, value in sorted(evaluation.per_defect.items()):
        lines.append(_row([defect, families.get(defect, ""), metric_text(value)]))
    if evaluation.per_family:
        lines += ["", _row(["defect family", "image AUROC"]), _row(["---"] * 2)]
        lines += [_row([fam, metric_text(v)]) for fam, v in sorted(evaluation.per_family.items())]
    lines += ["", "## Figures", ""]
    for title, rel in figures.items():
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    lines += [
        "## Intended use and limits",
        "",
        (
            f"Flags samples whose image score exceeds the threshold (the "
            f"{params.train.threshold_quantile} quantile of good validation scores) and localises the "
            "defect with the anomaly map. Scores are comparable only within a category. Validated on "
            "the test split named above; data from another sensor, lighting or object pose needs "
            "re-validation."
        ),
        "",
    ]
    return "\n".join(lines)


def log_model_card(
    params: Params, category: str, version: ModelVersion, run_id: str, text: str
) -> str:
    """Log ``text`` as ``model_card.md`` of ``run_id`` and point the version's ``model_card`` tag at it."""
    client = tracking_client(params)
    call_tracking(params.tracking, client.log_text, run_id, text, MODEL_CARD)
    uri = f"runs:/{run_id}/{MODEL_CARD}"
    set_version_tags(params, model_name(params, category), version.version, {"model_card": uri})
    return uri
