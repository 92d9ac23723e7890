"""Promote stage: the promotion gate, challenger against champion on the same, current test data.

:func:`decide` is the decision, a pure comparison of two evaluations (:func:`compare_metrics`):
the challenger is promoted when it is within the absolute floors and caps of ``promotion``
(AUROC, AU-PRO, and the FPR and recall of the deployed threshold) and there is no champion
or no gated metric is worse than the champion's by more than its tolerance.
:func:`promote_category` applies it to a category's registered versions: each
version's evaluation on the current test split is read from where it was stored
(:func:`evaluation_of_version`), so a model is scored again only when its stored
evaluation was made on other data. Numbers computed on other data are never compared.
Where operators confirmed defects on the line (:mod:`bridgenet.line_defects`), both models are
also scored on those with the test split's goods, and compared there under the same tolerances.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridgenet.config import Params, PromotionConfig
from bridgenet.data.cache import CachedSplit
from bridgenet.evaluate import (
    CategoryEvaluation,
    evaluate_category,
    keep_evaluation,
    load_evaluation,
    load_test_split,
    stored_evaluation,
)
from bridgenet.files import sha256_file, write_json
from bridgenet.line_defects import line_counts, line_numbers, line_tags, load_line_split
from bridgenet.paths import EVALUATION_FILE, promotion_report_file

LOGGER = logging.getLogger(__name__)
MODEL_FINGERPRINT_TAG = "model.sha256"  # tag of a registered version: sha256 of its model.pt
EVALUATION_ARTIFACT = f"evaluation/{EVALUATION_FILE}"  # the stored evaluation in a version's run


THRESHOLD_METRICS = ("fpr", "recall", "precision")  # of the deployed decision, gated as <name>_at_threshold
LOWER_IS_BETTER = frozenset({"fpr_at_threshold"})  # for these a rise, not a drop, is the loss


def gate_metrics(evaluation: CategoryEvaluation) -> dict[str, float]:
    """What the gate reads of an evaluation: its test metrics, and the FPR, recall and precision of
    the deployed decision (the model's own validation threshold) as ``<name>_at_threshold``."""
    at = evaluation.at_threshold()
    return {**evaluation.metrics, **{f"{k}_at_threshold": float(at[k]) for k in THRESHOLD_METRICS}}


def compare_metrics(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    tolerances: Mapping[str, float],
    floors: Mapping[str, float] | None = None,
    caps: Mapping[str, float] | None = None,
    notes: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The promotion decision on metrics computed on the same data.

    Never promote a challenger below one of ``floors`` (absolute minima, e.g.
    ``{"image_auroc": 0.5}``) or above one of ``caps`` (absolute maxima, e.g.
    ``{"fpr_at_threshold": 0.2}``); an undefined metric fails both. That holds for the
    first model too. Otherwise promote when there is no champion, or when no metric of
    ``tolerances`` loses (champion - challenger, or the rise for :data:`LOWER_IS_BETTER`
    metrics) more than its tolerance. A metric the challenger leaves undefined (nan) while
    the champion has it blocks promotion; one undefined for both is skipped (the data
    cannot measure it). ``notes`` adds a word to a failing limit's reason (e.g. the counts).
    Returns ``{"promote", "reason", "metrics": {name: {challenger, champion, drop,
    tolerance, passed}}, "floors": {name: {challenger, floor, passed}}, "caps": {name:
    {challenger, cap, passed}}}``.
    """
    notes = notes or {}

    def limit_rows(limits: Mapping[str, float] | None, kind: str) -> dict[str, dict[str, Any]]:
        rows = {}
        for key, bound in (limits or {}).items():
            value = float(challenger[key])
            inside = value >= bound if kind == "floor" else value <= bound
            rows[key] = {"challenger": value, kind: float(bound), "passed": not math.isnan(value) and inside}
        return rows

    floor_rows, cap_rows = limit_rows(floors, "floor"), limit_rows(caps, "cap")
    broken = [f"{key} {row['challenger']:.4f} is below the floor {row['floor']}{notes.get(key, '')}"
              for key, row in floor_rows.items() if not row["passed"]]
    broken += [f"{key} {row['challenger']:.4f} is above the cap {row['cap']}{notes.get(key, '')}"
               for key, row in cap_rows.items() if not row["passed"]]
    decision = _against_champion(challenger, champion, tolerances)
    decision.update(floors=floor_rows, caps=cap_rows)
    if broken:
        decision.update(promote=False, reason="; ".join(broken))
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
            drop = new - old if key in LOWER_IS_BETTER else old - new
            passed = drop <= tol
            if not passed:
                moved = "rose" if key in LOWER_IS_BETTER else "dropped"
                failures.append(f"{key} {moved} by {drop:.4f} ({old:.4f} -> {new:.4f}; tolerance {tol})")
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
        reason += f" (undefined on this data for both: {', '.join(skipped)})"
    return {"promote": True, "reason": reason, "metrics": rows}


def decide(
    challenger: CategoryEvaluation, champion: CategoryEvaluation | None, promotion: PromotionConfig,
    challenger_is_champion: bool = False,
    line: tuple[CategoryEvaluation, CategoryEvaluation | None] | None = None,
) -> dict[str, Any]:
    """The gate's decision between two evaluations on the same test split (no I/O).

    ``outcome`` is ``promoted``, ``rejected``, or ``unchanged`` when the challenger already
    holds the champion alias (``challenger_is_champion``; ``champion`` is then None). The
    rest is :func:`compare_metrics`'s document under ``promotion``'s tolerances, floors and caps.
    ``line``: the challenger's and the champion's evaluations on the line's defects, compared
    under the same tolerances (no floors: the test split has them) and reported under
    ``line_defects``; a loss beyond a tolerance there rejects the challenger when
    ``promotion.line_defects`` is ``block``.
    """
    new = gate_metrics(challenger)
    tolerances = dict(promotion.tolerances)
    if challenger_is_champion:
        same = compare_metrics(new, new, tolerances)
        return {**same, "promote": False, "outcome": "unchanged",
                "reason": "this version is already the champion", "floors": {}, "caps": {}}
    at = challenger.at_threshold()
    notes = {"fpr_at_threshold": f" ({at['fp']} of {at['fp'] + at['tn']} good test parts rejected)",
             "recall_at_threshold": f" ({at['tp']} of {at['tp'] + at['fn']} defective test parts found)"}
    decision = compare_metrics(new, None if champion is None else gate_metrics(champion), tolerances,
                               promotion.floors(), promotion.caps(), notes)
    if line is not None:
        decision["line_defects"] = _line_decision(*line, promotion)
        if decision["line_defects"]["blocks"]:
            stated = "" if decision["promote"] else f"{decision['reason']}; "
            decision.update(promote=False, reason=f"{stated}on the line's own defects: "
                                                  f"{decision['line_defects']['reason']}")
    decision["outcome"] = "promoted" if decision["promote"] else "rejected"
    return decision


def _line_decision(
    challenger: CategoryEvaluation, champion: CategoryEvaluation | None, promotion: PromotionConfig
) -> dict[str, Any]:
    """Challenger against champion on the line's defects: ``{policy, passed, blocks, reason, compared,
    challenger, champion}`` (a first model always passes)."""
    compared = compare_metrics(gate_metrics(challenger), None if champion is None else gate_metrics(champion),
                               dict(promotion.tolerances))
    passed = champion is None or compared["promote"]
    return {"policy": promotion.line_defects, "passed": passed,
            "blocks": not passed and promotion.line_defects == "block", "reason": compared["reason"],
            "compared": compared["metrics"], "challenger": line_numbers(challenger),
            "champion": None if champion is None else line_numbers(champion)}


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
    In this order: :func:`decide`; write ``<eval.reports_dir>/promotion_<category>.json``
    (``applied: false``); tag the challenger (``promotion.decision``, ``promotion.reason``)
    and put the decision on top of its description, mark a replaced champion
    (``promotion.superseded_by``); move the champion alias last, then mark the report
    ``applied``. A failure before the alias moved leaves the old champion in place (a
    retry decides again, on the same numbers), writes the failure into the report, tries
    to tag it on the challenger, and is raised. Returns the report. Raises ValueError when
    the category has no challenger. A rejected challenger is a normal outcome
    (``decision == "rejected"``), not an error.
    """
    from bridgenet.tracking import registry
    from bridgenet.tracking.store import configure_tracking

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
    line_split, line = load_line_split(params, category, split), None
    if line_split is not None and (old is not None or champion is None):
        line = (evaluation_of_version(params, category, challenger, line_split).evaluation,
                None if old is None else evaluation_of_version(params, category, champion, line_split).evaluation)
    decision = decide(new.evaluation, old.evaluation if old else None, params.promotion,
                      challenger_is_champion=champion is not None and old is None, line=line)
    report = promotion_report(params, category, decision, new, old, champion, len(split), int(split.labels.sum()))
    if line is not None:
        report["line_defects"] = {**line_counts(line_split), **decision["line_defects"],
                                  "fingerprint": line[0].data_fingerprint}
    path = promotion_report_file(params, category)
    write_json(path, report)  # the decision and its reasons are kept before the registry is touched
    try:
        _record_decision(params, name, report)
        if report["decision"] == "promoted":  # last: the champion moves once the registry says why
            registry.set_alias(params, category, reg.champion_alias, challenger.version)
    except Exception as exc:  # recorded, then raised: the old champion stays until a retry succeeds
        report["failure"] = f"{type(exc).__name__}: {exc}"[:2000]
        write_json(path, report)
        _note_failure(params, name, report)
        raise
    report.update(applied=True, champion_after=report["champion_planned"])
    write_json(path, report)
    report["report_path"] = str(path)
    LOGGER.info("%s: challenger v%s %s (%s)", name, challenger.version, report["decision"], report["reason"])
    return report


def promotion_report(
    params: Params, category: str, decision: Mapping[str, Any], new: VersionEvaluation,
    old: VersionEvaluation | None, champion: Any, n_test: int, n_anomalous: int,
) -> dict[str, Any]:
    """The JSON-able record of one gate decision (``reports/promotion_<category>.json``)."""
    from bridgenet.tracking import registry

    outcome = decision["outcome"]
    before = None if champion is None else str(champion.version)
    compared = old or (new if champion is not None else None)
    return {
        "category": category,
        "model_name": registry.model_name(params, category),
        "decision": outcome,
        "promoted": outcome == "promoted",
        "reason": decision["reason"],
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tracking_uri": params.tracking.uri,
        "applied": False,  # true once tags, description and alias are written
        "failure": None,
        "tolerances": dict(params.promotion.tolerances),
        "floors": decision["floors"],
        "caps": decision["caps"],
        "compared": decision["metrics"],
        "challenger": {"version": new.version, "run_id": new.run_id, "metrics": gate_metrics(new.evaluation),
                       "at_threshold": new.evaluation.at_threshold(), "threshold": new.evaluation.threshold},
        "champion_before": None if compared is None else {
            "version": before, "run_id": compared.run_id, "metrics": gate_metrics(compared.evaluation),
            "at_threshold": compared.evaluation.at_threshold()},
        "champion_after": before,
        "champion_planned": new.version if outcome == "promoted" else before,
        "test_data": {"cache_dir": params.data.cache_dir, "n_test": n_test, "n_anomalous": n_anomalous,
                      "fingerprint": new.evaluation.data_fingerprint},
    }


def _record_decision(params: Params, name: str, report: Mapping[str, Any]) -> None:
    """The decision as tags and on top of the challenger's description; the replaced champion marked."""
    from bridgenet.tracking import registry
    from bridgenet.tracking.model_card import decision_markdown, with_decision

    version = report["challenger"]["version"]
    registry.set_version_tags(params, name, version, {"promotion.decision": report["decision"],
                                                      "promotion.reason": report["reason"], **line_tags(report)})
    if report.get("line_defects"):
        line = report["line_defects"]["challenger"]
        registry.log_run_metrics(params, report["challenger"]["run_id"],
                                 {f"line_{k}": v for k, v in line.items() if isinstance(v, float)})
    registry.set_version_description(params, name, version, with_decision(
        registry.version_description(params, name, version), decision_markdown(report)))
    before = report["champion_before"]
    if report["decision"] == "promoted" and before is not None:
        registry.set_version_tags(params, name, before["version"], {"promotion.superseded_by": version})


def _note_failure(params: Params, name: str, report: Mapping[str, Any]) -> None:
    """Best effort: say on the challenger that its decision was not applied, and why."""
    from mlflow.exceptions import MlflowException

    from bridgenet.tracking import registry
    from bridgenet.tracking.retry import TrackingUnavailableError

    try:
        registry.set_version_tags(params, name, report["challenger"]["version"], {
            "promotion.decision": f"{report['decision']}, not applied",
            "promotion.reason": f"{report['reason']} (not applied: {report['failure']})"})
    except (MlflowException, TrackingUnavailableError, OSError) as exc:
        LOGGER.error("%s v%s: could not tag the failed promotion either (%s); see its report",
                      name, report["challenger"]["version"], exc)
