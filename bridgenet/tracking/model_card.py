"""The model card of a registered version (Markdown), and the gate's decision written above it.

The card reads top-down as a reviewer decides: one plain line with the decision (or, before
the gate ran, what it would decide), the deployed threshold's confusion counts, FPR, recall
and precision beside AUROC and AU-PRO, the comparison with the champion, image AUROC and
hits per defect type, the ROC and PRO curves and the other figures, the data (the training
folder's digest, the test split's name and full fingerprint), the model, and a checklist.

Figures are linked through the tracking server's ``get-artifact`` endpoint with the run's id
(:func:`artifact_url`), the URL form MLflow's UI itself uses for artifact previews, so they
show inline on the registry's version page served by ``mlflow ui`` or ``mlflow server``.
The same text is logged as the run's ``model_card.md`` and is the version's description,
which MLflow cuts at :data:`bridgenet.tracking.registry.DESCRIPTION_LIMIT` characters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np
from mlflow.entities.model_registry import ModelVersion

from bridgenet.config import Params
from bridgenet.metrics import METRIC_KEYS
from bridgenet.tracking.registry import model_name, set_version_tags
from bridgenet.tracking.retry import call_tracking
from bridgenet.tracking.runs import LoggedTrainingRun, TrainingRunRecord
from bridgenet.tracking.store import tracking_client

MODEL_CARD = "model_card.md"
CARD_HEADING = "# Model card: "  # everything above it in a description is the decision
DASH = "–"
THRESHOLD_KEYS = ("fpr_at_threshold", "recall_at_threshold", "precision_at_threshold")
_COUNT_KEYS = {"n_test", "n_anomalous"}
# the card's figures, in its order: a training run record's figure name -> its title
FIGURE_TITLES = {
    "roc": "ROC curve (test)",
    "pro": "PRO curve (test)",
    "heatmaps": "Heatmaps: best and worst scored test parts",
    "defect_auroc": "Image AUROC per defect type",
    "training_curves": "Training curves",
    "anomaly_preview": "Generated anomalies (validation)",
}


def number_text(value: Any, digits: int = 3) -> str:
    """A number for a reader: ``digits`` decimals, integers as they are, a dash when undefined."""
    if value is None or isinstance(value, bool):
        return DASH
    number = float(value)
    if math.isnan(number):
        return DASH
    if number.is_integer() and isinstance(value, (int, np.integer)):
        return str(int(number))
    return f"{number:.{digits}f}"


def artifact_url(run_id: str, path: str, base: str = "") -> str:
    """URL of a run's artifact as MLflow's UI serves it: ``get-artifact?path=...&run_uuid=...``,
    relative to the UI's root (``base`` empty: it holds under any host and ``--static-prefix``)
    or under ``base`` (``http://host:port/``)."""
    return f"{base}get-artifact?path={quote(path, safe='')}&run_uuid={quote(run_id, safe='')}"


def ui_url(params: Params) -> str:
    """Where the project's MLflow UI answers (ending in ``/``): the tracking server itself, or
    ``mlflow ui`` on ``tracking.host:tracking.ui_port`` (as ``bridgenet summary`` says to run it)."""
    uri = params.tracking.uri
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/") + "/"
    return f"http://{params.tracking.host}:{params.tracking.ui_port}/"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)]


def _gate_cell(key: str, decision: Mapping[str, Any]) -> str:
    """What the gate asks of ``key`` and whether it holds (✓ / ✗), or empty when not gated."""
    parts = []
    if key in decision.get("metrics", {}):
        row = decision["metrics"][key]
        parts.append(f"{'✓' if row['passed'] else '✗'} tolerance {row['tolerance']:g}")
    if key in decision.get("floors", {}):
        row = decision["floors"][key]
        parts.append(f"{'✓' if row['passed'] else '✗'} floor {row['floor']:g}")
    if key in decision.get("caps", {}):
        row = decision["caps"][key]
        parts.append(f"{'✓' if row['passed'] else '✗'} cap {row['cap']:g}")
    return "; ".join(parts)


def comparison_table(
    metrics: Mapping[str, float], champion: Mapping[str, float] | None, champion_version: str | None,
    decision: Mapping[str, Any] | None,
) -> list[str]:
    """Every test metric and the threshold's rates: this version, the champion, the change and the gate."""
    head = ["metric", "this version", f"champion v{champion_version}" if champion_version else "champion",
            "change", "gate"]
    rows = []
    for key in (*METRIC_KEYS[:7], *THRESHOLD_KEYS, *sorted(_COUNT_KEYS)):
        if key not in metrics:
            continue
        mine = metrics[key]
        theirs = None if champion is None else champion.get(key)
        change = None
        if theirs is not None and not (math.isnan(float(mine)) or math.isnan(float(theirs))):
            difference = float(mine) - float(theirs)
            change = f"{int(difference):+d}" if key in _COUNT_KEYS else f"{difference:+.3f}"
        value = int(mine) if key in _COUNT_KEYS else mine
        other = int(theirs) if key in _COUNT_KEYS and theirs is not None else theirs
        rows.append([key, number_text(value), number_text(other), change or DASH,
                     _gate_cell(key, decision or {})])
    return _table(head, rows)


def decision_line(decision: Mapping[str, Any], champion_version: str | None, gated: bool,
                  version: str, when: str = "") -> str:
    """The decision in one plain line (no Markdown: lists show a description's first characters)."""
    outcome, reason = decision.get("outcome") or ("promoted" if decision["promote"] else "rejected"), decision["reason"]
    against = f"champion v{champion_version}" if champion_version else "no champion yet"
    if not gated:
        verdict = "would be promoted" if decision["promote"] else "would NOT be promoted"
        return f"Challenger, not gated yet: against {against} it {verdict}. Reason: {reason}."
    stamp = f" on {when.replace('T', ' ').replace('Z', ' UTC')}" if when else ""
    if outcome == "promoted":
        return f"PROMOTED{stamp}: v{version} is the champion (was: {against}). Reason: {reason}."
    if outcome == "unchanged":
        return f"UNCHANGED{stamp}: v{version} is already the champion."
    kept = f"v{champion_version} stays the champion" if champion_version else "there is no champion"
    return f"REJECTED{stamp}: v{version} stays challenger, {kept}. Reason: {reason}."


def decision_markdown(report: Mapping[str, Any]) -> str:
    """The top of a version's description after the gate ran (``report`` as :mod:`bridgenet.promote` writes it)."""
    before = report.get("champion_before") or {}
    version = str(report["challenger"]["version"])
    line = decision_line({"outcome": report["decision"], "promote": report["promoted"], "reason": report["reason"]},
                         before.get("version"), True, version, report.get("time", ""))
    at = report["challenger"].get("at_threshold") or {}
    counts = (f"At the threshold: {at['fp']} of {at['fp'] + at['tn']} good test parts rejected, "
              f"{at['tp']} of {at['tp'] + at['fn']} defective ones found." if at else "")
    return f"{line} {counts} {line_defects_sentence(report.get('line_defects'))}".rstrip() + "\n\n"


def line_defects_sentence(line: Mapping[str, Any] | None) -> str:
    """The gate's result on the line's own defects in one sentence ("" when there were none)."""
    if not line:
        return ""
    new, old = line["challenger"], line.get("champion")
    against = f" (champion {number_text(old['image_auroc'])})" if old else ""
    verdict = "." if line["passed"] else ("; this blocks the promotion." if line["blocks"] else "; reported only.")
    return (f"On the line's own {line['n_defects']} confirmed defects ({line['n_defects_with_mask']} with a mask) "
            f"and the {line['n_good']} good test parts: image AUROC {number_text(new['image_auroc'])}{against}, "
            f"{new['found_at_threshold']} found at the threshold{verdict}")


def with_decision(description: str, decision_text: str) -> str:
    """``description`` with ``decision_text`` on top, in place of whatever stood above the card."""
    at = description.find(CARD_HEADING)
    card = description[at:] if at >= 0 else description
    return f"{decision_text.rstrip()}\n\n{card.lstrip()}"


def gate_limits(promotion: Any) -> str:
    """The gate's absolute limits in one sentence (``promotion``: a :class:`bridgenet.config.PromotionConfig`)."""
    names = {"fpr_at_threshold": "FPR", "recall_at_threshold": "recall", "image_auroc": "image AUROC",
             "aupro_30": "AU-PRO@0.3"}
    limits = [f"{names.get(k, k)} ≤ {v:g}" for k, v in promotion.caps().items()]
    limits += [f"{names.get(k, k)} ≥ {v:g}" for k, v in promotion.floors().items()]
    tolerances = ", ".join(f"{k} {v:g}" for k, v in promotion.tolerances.items())
    return (f"Gate: {', '.join(limits) or 'no absolute limits'}; largest loss against the champion: "
            f"{tolerances}.")


def per_defect_rows(evaluation: Any) -> list[list[str]]:
    """Defect type, family, image AUROC and how many of its parts the deployed threshold flags."""
    families = (getattr(evaluation, "extras", None) or {}).get("families", {})
    defects = np.asarray(evaluation.defects)
    decided = np.asarray(evaluation.decisions)
    rows = []
    for defect in sorted((set(evaluation.per_defect) | set(defects.tolist())) - {"good"}):
        mask = defects == defect
        flagged = f"{int(decided[mask].sum())} of {int(mask.sum())}"
        rows.append([defect, families.get(defect, DASH), number_text(evaluation.per_defect.get(defect)), flagged])
    good = defects == "good"
    rows.append(["good (for reference)", DASH, DASH, f"{int(decided[good].sum())} of {int(good.sum())} rejected"])
    return rows


def model_card_markdown(
    params: Params,
    record: TrainingRunRecord,
    logged: LoggedTrainingRun,
    version: ModelVersion,
    gate: Mapping[str, Any],
    champion: tuple[str, Mapping[str, float]] | None,
    figure_base: str = "",
) -> str:
    """The model card (Markdown) of one registered version, a decision-line preview on top.

    ``record``: what the version's run logged (summary, evaluation, lineage, the training
    and test datasets, figures); ``logged``: that run (id, name, user). ``gate``: the gate's
    decision for this version now (:func:`bridgenet.promote.decide`); ``champion``: (version,
    its gate metrics on the same test split) or None. The figures of :data:`FIGURE_TITLES`
    the run logged are linked as its ``figures/<file>`` artifacts under ``figure_base``
    (:func:`artifact_url`): empty for the version's description, which the registry page
    renders relative to the UI; :func:`ui_url` for ``model_card.md``, whose viewer in the
    UI shows only images with an absolute URL.
    """
    category, summary, evaluation, lineage = record.category, record.summary, record.evaluation, record.lineage
    train, test = record.dataset("training"), record.dataset("test")
    figures = {title: f"figures/{record.figures[key].name}"
               for key, title in FIGURE_TITLES.items() if key in record.figures}
    name = model_name(params, category)
    m = record.trained_params.model  # what the model was trained with (RGB alone where scans hold no object)
    at = evaluation.at_threshold()
    metrics = {**evaluation.metrics, **{f"{k}_at_threshold": at[k] for k in ("fpr", "recall", "precision")}}
    champion_version, champ = champion if champion else (None, None)
    threshold = number_text(evaluation.threshold)  # the model file's: what it deploys
    n_good, n_bad = at["fp"] + at["tn"], at["tp"] + at["fn"]
    commit = lineage.get("git.commit", "")
    commit = commit[:12] if commit[:12].isalnum() else "unknown"
    lines = [
        decision_line(gate, champion_version, False, str(version.version)),
        "",
        f"{CARD_HEADING}{name}, version {version.version}",
        "",
        (f"Anomaly detector for **{category}** parts (RGB + point cloud, trained on good parts only); "
        f"registered by {logged.user} from run `{logged.name}`."),
        "",
        f"## The deployed decision on the test split (threshold {threshold})",
        "",
        f"- **false rejects: {at['fp']} of {n_good} good parts** (FPR {number_text(at['fpr'])})",
        (f"- **defects found: {at['tp']} of {n_bad} defective parts** (recall {number_text(at['recall'])}), "
        f"precision {number_text(at['precision'])}"),
        f"- image AUROC {number_text(metrics['image_auroc'])}, AU-PRO@0.3 {number_text(metrics['aupro_30'])}",
        "",
        *_table(["", "flagged defective", "passed as good"],
                [[f"defective parts ({n_bad})", f"TP {at['tp']}", f"FN {at['fn']}"],
                 [f"good parts ({n_good})", f"FP {at['fp']}", f"TN {at['tn']}"]]),
        "",
        gate_limits(params.promotion),
        "",
        "## Against the champion (same test split)",
        "",
        *comparison_table(metrics, champ, champion_version, gate),
        "",
        "## Per defect type",
        "",
        *_table(["defect type", "family", "image AUROC", "flagged at threshold"], per_defect_rows(evaluation)),
        "",
    ]
    lines += ["## Curves and figures", ""]
    for title, path in figures.items():
        lines += [f"**{title}**", "", f"![{title}]({artifact_url(logged.run_id, path, figure_base)})", ""]
    lines += [
        "## Data and model",
        "",
        f"- training data: `{train['source']}`, sha256 `{train['digest']}`",
        (f"- test split: `{test['name']}` (`{test['source']}`, {n_good + n_bad} parts), "
        f"fingerprint `{evaluation.data_fingerprint}`"),
        (f"- git `{commit}` (dirty: {lineage.get('git.dirty', DASH)}); "
        f"DVC md5 of `{params.data.root}`: `{lineage.get('dvc.data_root.md5', lineage.get('dvc.lock', DASH))}`"),
        (f"- `{m.backbone}` layers {list(m.layers)}, {' + '.join(m.modalities)}, scorer `{m.scorer}`, "
        f"{summary.n_epochs} epochs, selected epoch "
        f"{summary.best_epoch}; threshold = {params.train.threshold_quantile} quantile of "
        "validation goods"),
        "",
        "## Reviewer's checklist",
        "",
        "- [ ] false rejects (FP) acceptable for the line's scrap rate",
        "- [ ] recall per defect type: no type the line cares about is missed",
        "- [ ] heatmaps: hot spots sit on the defects, not on the background or edges",
        "- [ ] same test fingerprint as the champion's card; training data digest as expected",
        "- [ ] git not dirty; run FINISHED",
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


def registered_model_description(params: Params, category: str) -> str:
    """What the models list and the model page say about ``<prefix>-<category>``."""
    reg = params.registry
    name = model_name(params, category)
    return (
        f"Anomaly detector for {category} parts: an RGB image and an organised point cloud in, an image "
        f"score, an anomaly map and a good/defective decision out. Trained on good parts only.\n\n"
        f"- data: `{params.data.root}/{category}` ({params.data.format}); test split with labelled defects\n"
        f"- `@{reg.champion_alias}` is what serves (`bridgenet predict --model models:/{name}@{reg.champion_alias}`),"
        f" `@{reg.challenger_alias}` the latest registration\n"
        f"- review a version: its description opens with the gate's decision, then the card (false "
        f"rejects and recall at the deployed threshold, the comparison with the champion, per-defect "
        f"hits, ROC / PRO, heatmaps, data digests, a checklist); `bridgenet promote -c {category}` gates\n"
        "- input: `rgb` (H, W, 3) uint8 and `xyz` (H, W, 3) float metres, or `rgb_png` / `xyz_tiff` "
        "base64 files: the schema lists the outputs only, as the model takes either form\n"
    )
