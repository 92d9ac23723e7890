"""Promote stage: the promotion gate, challenger against champion on the same, current test data.

:func:`compare_metrics` is the decision, a pure comparison of two evaluations under
``promotion.tolerances``: the challenger is promoted when there is no champion or
when no gated metric is lower than the champion's by more than its tolerance.
:func:`promote_category` applies it to a category's registered versions: each
version's evaluation on the current test split is read from where it was stored
(:func:`evaluation_of_version`), so a model is scored again only when its stored
evaluation was made on other data. Numbers computed on other data are never compared.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridgenet.config import Params
from bridgenet.data.cache import CachedSplit
from bridgenet.evaluate import (
    EVALUATION_FILE,
    CategoryEvaluation,
    evaluate_category,
    keep_evaluation,
    load_evaluation,
    load_test_split,
    stored_evaluation,
)
from bridgenet.files import sha256_file, write_json

LOGGER = logging.getLogger(__name__)
MODEL_FINGERPRINT_TAG = "model.sha256"  # tag of a registered version: sha256 of its model.pt
EVALUATION_ARTIFACT = f"evaluation/{EVALUATION_FILE}"  # the stored evaluation in a version's run


def compare_metrics(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    tolerances: Mapping[str, float],
    floors: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The promotion decision on metrics computed on the same data.

    Never promote a challenger below one of ``floors`` (absolute minima, e.g.
    ``{"image_auroc": 0.5}``; an undefined metric is below any floor), not even the
    first model. Otherwise promote when there is no champion, or when no metric of
    ``tolerances`` drops (champion - challenger) by more than its tolerance. A
    metric the challenger leaves undefined (nan) while the champion has it blocks
    promotion; one undefined for both is skipped (the data cannot measure it).
    Returns ``{"promote", "reason", "metrics": {name: {challenger, champion,
    drop, tolerance, passed}}, "floors": {name: {challenger, floor, passed}}}``.
    """
    floor_rows = {key: {"challenger": float(challenger[key]), "floor": float(low),
                        "passed": not math.isnan(float(challenger[key])) and float(challenger[key]) >= low}
                  for key, low in (floors or {}).items()}
    below = [f"{key} {row['challenger']:.4f} is below the floor {row['floor']}"
             for key, row in floor_rows.items() if not row["passed"]]
    decision = _against_champion(challenger, champion, tolerances)
    decision["floors"] = floor_rows
    if below:
        decision.update(promote=False, reason="; ".join(below))
    return decision


def _against_champion(
    challenger: Mapping[str, float], champion: Mapping[str, float] | None, tolerances: Mapping[str, float]
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    if champion is None:
        for key, tol in tolerances.items():
            rows[key] = {
                "challenger": float(challenger[key]),
                "champion": None,
                "drop": None,
                "tolerance": float(tol),
                "passed": True,
            }
        return {"promote": True, "reason": "first model: no champion yet", "metrics": rows}
    failures, skipped = [], []
    for key, tol in tolerances.items():
        new, old = float(challenger[key]), float(champion[key])
        if math.isnan(new) and math.isnan(old):
            passed, drop = True, None
            skipped.append(key)
        elif math.isnan(new):
            passed, drop = False, None
            failures.append(f"{key} is undefined for the challenger but {old:.4f} for the champion")
        elif math.isnan(old):
            passed, drop = True, None
        else:
            drop = old - new
            passed = drop <= tol
            if not passed:
                failures.append(
                    f"{key} dropped by {drop:.4f} ({old:.4f} -> {new:.4f}; tolerance {tol})"
                )
        rows[key] = {
            "challenger": new,
            "champion": old,
            "drop": drop,
            "tolerance": float(tol),
            "passed": passed,
        }
    if failures:
        return {"promote": False, "reason": "; ".join(failures), "metrics": rows}
    reason = "no gated metric dropped by more than its tolerance"
    if skipped:
        reason += f" (undefined on this data for both: {skipped})"
    return {"promote": True, "reason": reason, "metrics": rows}


@dataclass
class VersionEvaluation:
    """A registered version's evaluation on the current test split."""

    version: str
    run_id: str | None
    evaluation: CategoryEvaluation


def evaluation_of_version(params: Params, category: str, version: Any, split: CachedSplit) -> VersionEvaluation:
    """The evaluation of registered ``version`` (a ModelVersion) on ``split``, scored only if need be.

    Looked up by the version's model fingerprint (tag ``model.sha256``, else the hash of
    its downloaded ``model.pt``) and the split's: in the local stores of
    :func:`bridgenet.evaluate.stored_evaluation`, then in the version's run
    (``evaluation/evaluation.json``). Without one for this data the model is fetched,
    scored once and its evaluation kept for the stages after this one.
    """
    from bridgenet.model.io import load_model
    from bridgenet.tracking import registry

    data_fingerprint = split.fingerprint()
    model_file = None
    model_fingerprint = version.tags.get(MODEL_FINGERPRINT_TAG)
    if not model_fingerprint:  # registered before the tag existed
        model_file = registry.download_version_model(params, category, version.version)
        model_fingerprint = sha256_file(model_file)
    found = stored_evaluation(params, category, model_fingerprint, data_fingerprint)
    if found is None:
        artifact = registry.run_artifact(params, version.run_id, EVALUATION_ARTIFACT)
        if artifact is not None:
            logged = load_evaluation(artifact)
            if (logged.model_fingerprint, logged.data_fingerprint) == (model_fingerprint, data_fingerprint):
                found = logged
    if found is not None:
        return VersionEvaluation(str(version.version), version.run_id, found)
    uri = f"models:/{registry.model_name(params, category)}/{version.version}"
    LOGGER.info("%s: no stored evaluation on the current test split; scoring it", uri)
    model_file = model_file or registry.download_version_model(params, category, version.version)
    try:
        model = load_model(model_file)
    except (RuntimeError, ValueError) as exc:  # weights that this bridgenet cannot rebuild
        raise ValueError(f"{uri}: cannot be loaded by this version of bridgenet ({exc})") from exc
    if model.category != category:
        raise ValueError(f"{uri}: holds a model of category {model.category!r}, expected {category!r}")
    evaluation, _ = evaluate_category(params, model, split, model_fingerprint=model_fingerprint)
    keep_evaluation(params, evaluation)
    return VersionEvaluation(str(version.version), version.run_id, evaluation)


def promote_category(params: Params, category: str) -> dict[str, Any]:
    """Promotion gate of ``category``: challenger vs champion on the current test split.

    ``params`` are the category's resolved params (:func:`bridgenet.stages.resolve`).
    Writes the decision and the compared numbers as tags on the challenger version
    (``promotion.*``) and, when it is promoted, on the replaced champion; writes
    ``<eval.reports_dir>/promotion_<category>.json``; returns the same document.
    Raises ValueError when the category has no challenger. A rejected challenger is
    a normal outcome (``decision == "rejected"``), not an error.
    """
    from bridgenet.tracking import registry
    from bridgenet.tracking.runs import configure_tracking

    configure_tracking(params)
    reg, cfg = params.registry, params.tracking
    name = registry.model_name(params, category)
    challenger = registry.alias_version(params, category, reg.challenger_alias)
    if challenger is None:
        raise ValueError(
            f"registered model {name!r} has no {reg.challenger_alias!r} version in "
            f"{cfg.uri}; run `bridgenet register` first"
        )
    champion = registry.alias_version(params, category, reg.champion_alias)
    split = load_test_split(params, category)
    new = evaluation_of_version(params, category, challenger, split)
    old = None
    if champion is not None and champion.version != challenger.version:
        old = evaluation_of_version(params, category, champion, split)
    tolerances = dict(params.promotion.tolerances)
    if champion is not None and old is None:
        decision = {
            "promote": False,
            "reason": f"version {challenger.version} is already the champion",
            "metrics": compare_metrics(new.evaluation.metrics, new.evaluation.metrics, tolerances)["metrics"],
        }
        outcome = "unchanged"
    else:
        decision = compare_metrics(new.evaluation.metrics, old.evaluation.metrics if old else None, tolerances,
                                   params.promotion.floors())
        outcome = "promoted" if decision["promote"] else "rejected"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if outcome == "promoted":
        registry.set_alias(params, category, reg.champion_alias, challenger.version)
    fingerprint = new.evaluation.data_fingerprint
    report = {
        "category": category,
        "model_name": name,
        "decision": outcome,
        "promoted": outcome == "promoted",
        "reason": decision["reason"],
        "time": when,
        "tracking_uri": cfg.uri,
        "tolerances": tolerances,
        "floors": decision.get("floors", {}),
        "compared": decision["metrics"],
        "challenger": {"version": new.version, "run_id": new.run_id, "metrics": dict(new.evaluation.metrics)},
        "champion_before": None
        if champion is None
        else {
            "version": str(champion.version),
            "run_id": (old or new).run_id,
            "metrics": dict((old or new).evaluation.metrics),
        },
        "champion_after": str(challenger.version)
        if outcome == "promoted"
        else (str(champion.version) if champion else None),
        "test_data": {
            "cache_dir": params.data.cache_dir,
            "n_test": len(split),
            "n_anomalous": int(split.labels.sum()),
            "fingerprint": fingerprint,
        },
    }
    tags = {
        "promotion.decision": outcome,
        "promotion.reason": decision["reason"],
        "promotion.time": when,
        "promotion.test_data": fingerprint,
        "promotion.compared_with": str(champion.version) if champion else "none",
    }
    for key, row in decision["metrics"].items():
        tags[f"promotion.challenger.{key}"] = registry.metric_text(row["challenger"])
        tags[f"promotion.champion.{key}"] = registry.metric_text(row["champion"])
    registry.set_version_tags(params, name, challenger.version, tags)
    registry.set_version_description(params, name, challenger.version, _with_decision(
        registry.version_description(params, name, challenger.version), report))
    if outcome == "promoted" and champion is not None:
        registry.set_version_tags(
            params,
            name,
            champion.version,
            {
                "promotion.superseded_by": challenger.version,
                "promotion.superseded_at": when,
                **{
                    f"promotion.superseded.{k}": registry.metric_text(r["champion"])
                    for k, r in decision["metrics"].items()
                },
            },
        )
    path = write_json(Path(params.eval.reports_dir) / f"promotion_{category}.json", report)
    report["report_path"] = str(path)
    LOGGER.info("%s: challenger v%s %s (%s)", name, challenger.version, outcome, decision["reason"])
    return report


def _with_decision(description: str, report: Mapping[str, Any]) -> str:
    """The version's description with the latest promotion decision and its reasons (replacing an earlier one)."""
    # the decision goes first (the store cuts long descriptions at the end), above the card
    card = description.split(_DECISION_END, 1)[1] if description.startswith(_DECISION_HEADING) else description
    rows = "\n".join(f"| {key} | {row['challenger']} | {row['champion']} | {row['tolerance']} | {row['passed']} |"
                     for key, row in report["compared"].items())
    floors = "".join(f"\n- floor {key} {row['floor']}: {'met' if row['passed'] else 'NOT met'}"
                     for key, row in report.get("floors", {}).items())
    text = (f"{_DECISION_HEADING}\n\n**{report['decision']}** ({report['time']}, against "
            f"{'champion v' + report['champion_before']['version'] if report['champion_before'] else 'no champion'}"
            f"): {report['reason']}{floors}\n\n| metric | this version | champion | tolerance | passed |\n"
            f"|---|---|---|---|---|\n{rows}\n")
    return f"{text}{_DECISION_END}{card.lstrip()}"


_DECISION_HEADING = "## Promotion decision"
_DECISION_END = "\n---\n\n"
