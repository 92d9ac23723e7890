"""Model registry: register a challenger, write its model card, and the promotion gate.

Each category has one registered model ``<registry.prefix>-<category>``. A
newly registered version gets the alias ``registry.challenger_alias``; the
gate (:func:`promote`) moves ``registry.champion_alias`` to it only if, on the
*current* test split, no metric of ``promotion.tolerances`` is lower than the
champion's by more than its tolerance. Both models are fetched from MLflow and
evaluated in the same call on the same data, so numbers computed on other data
are never compared. The first model of a category becomes champion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from bridgenet.config import Params
from bridgenet.tracking.runs import call_tracking, configure_tracking, tracking_client

LOGGER = logging.getLogger(__name__)
_MISSING_CODES = {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}


def model_name(params: Params, category: str) -> str:
    """Registered model name of ``category``: ``<registry.prefix>-<category>``."""
    return f"{params.registry.prefix}-{category}"


def alias_version(params: Params, category: str, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when the model or the alias does not exist."""
    client = tracking_client(params)
    try:
        return call_tracking(
            params.tracking, client.get_model_version_by_alias, model_name(params, category), alias
        )
    except MlflowException as exc:
        if exc.error_code in _MISSING_CODES:
            return None
        raise


def metric_text(value: Any) -> str:
    """A metric as a tag value: 6 significant digits, ``nan`` when undefined."""
    return (
        "nan"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{float(value):.6g}"
    )


def set_version_tags(params: Params, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set each of ``tags`` on version ``version`` of ``name`` (values as text, at most 5000 chars)."""
    client = tracking_client(params)
    for key, value in tags.items():
        call_tracking(
            params.tracking, client.set_model_version_tag, name, version, key, str(value)[:5000]
        )


def register_challenger(
    params: Params,
    category: str,
    model_uri: str,
    run_id: str,
    test_metrics: Mapping[str, float],
    lineage: Mapping[str, str],
    extra_tags: Mapping[str, Any] | None = None,
) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``<prefix>-<category>`` with the challenger alias.

    The version is tagged with ``lineage`` (git commit, DVC md5 of the data),
    the test metrics (``test.<metric>``), ``category``, ``run_id`` and
    ``extra_tags``.
    """
    configure_tracking(params)
    cfg, name = params.tracking, model_name(params, category)
    tags = {"category": category, "run_id": run_id, **dict(lineage)}
    tags.update({f"test.{k}": metric_text(v) for k, v in test_metrics.items()})
    tags.update(extra_tags or {})
    version = call_tracking(
        cfg,
        mlflow.register_model,
        model_uri,
        name,
        tags={k: str(v)[:5000] for k, v in tags.items()},
    )
    client = tracking_client(params)
    call_tracking(
        cfg,
        client.set_registered_model_alias,
        name,
        params.registry.challenger_alias,
        version.version,
    )
    LOGGER.info(
        "registered %s version %s (%s) as %r",
        name,
        version.version,
        model_uri,
        params.registry.challenger_alias,
    )
    return version


# --------------------------------------------------------------- comparison
def compare_metrics(
    challenger: Mapping[str, float],
    champion: Mapping[str, float] | None,
    tolerances: Mapping[str, float],
) -> dict[str, Any]:
    """The promotion decision on metrics computed on the same data.

    Promote when there is no champion, or when no metric of ``tolerances``
    drops (champion - challenger) by more than its tolerance. A metric the
    challenger leaves undefined (nan) while the champion has it blocks
    promotion; one undefined for both is skipped (the data cannot measure it).
    Returns ``{"promote", "reason", "metrics": {name: {challenger, champion,
    drop, tolerance, passed}}}``.
    """
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


def split_fingerprint(split: Any) -> str:
    """sha256 over the test split's sample names, labels and network inputs: names the evaluation data."""
    digest = hashlib.sha256()
    digest.update(json.dumps([split.category, split.defects, split.stems]).encode())
    for array in (split.labels, split.rgb, split.depth):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass
class EvaluatedVersion:
    """A registered version evaluated on the current test split."""

    version: str
    run_id: str | None
    evaluation: Any  # bridgenet.evaluate.CategoryEvaluation
    small_maps: np.ndarray


def evaluate_version(params: Params, category: str, version: str, split: Any) -> EvaluatedVersion:
    """Fetch version ``version``'s ``model.pt`` from MLflow and evaluate it on ``split``."""
    from bridgenet.evaluate import evaluate_category
    from bridgenet.model.io import load_model
    from bridgenet.tracking.pyfunc import download_model_file

    name = model_name(params, category)
    uri = f"models:/{name}/{version}"
    path = call_tracking(params.tracking, download_model_file, uri, params.tracking.uri)
    try:
        model = load_model(path)
    except (RuntimeError, ValueError) as exc:  # weights that this bridgenet cannot rebuild
        raise ValueError(f"{uri}: cannot be loaded by this version of bridgenet ({exc})") from exc
    if model.category != category:
        raise ValueError(
            f"{uri}: holds a model of category {model.category!r}, expected {category!r}"
        )
    evaluation, small_maps = evaluate_category(params, model, split)
    mv = call_tracking(params.tracking, tracking_client(params).get_model_version, name, version)
    return EvaluatedVersion(str(version), mv.run_id, evaluation, small_maps)


# ------------------------------------------------------------------ promote
def promote(params: Params, category: str, reports_dir: Path | str | None = None) -> dict[str, Any]:
    """Promotion gate of ``category``: challenger vs champion on the current test split.

    Writes the decision and the compared numbers as tags on the challenger
    version (``promotion.*``) and, when it is promoted, on the replaced
    champion; writes ``<reports_dir>/promotion_<category>.json`` (default
    ``eval.reports_dir``); returns the same document. Raises ValueError when
    the category has no challenger.
    """
    from bridgenet.evaluate import load_test_split

    configure_tracking(params)
    reg, cfg = params.registry, params.tracking
    name = model_name(params, category)
    challenger = alias_version(params, category, reg.challenger_alias)
    if challenger is None:
        raise ValueError(
            f"registered model {name!r} has no {reg.challenger_alias!r} version in "
            f"{cfg.uri}; run `bridgenet register` first"
        )
    champion = alias_version(params, category, reg.champion_alias)
    split = load_test_split(params, category)
    fingerprint = split_fingerprint(split)
    new = evaluate_version(params, category, challenger.version, split)
    old = None
    if champion is not None and champion.version != challenger.version:
        old = evaluate_version(params, category, champion.version, split)
    tolerances = dict(params.promotion.tolerances)
    if champion is not None and old is None:
        decision = {
            "promote": False,
            "reason": f"version {challenger.version} is already the champion",
            "metrics": compare_metrics(new.evaluation.metrics, new.evaluation.metrics, tolerances)[
                "metrics"
            ],
        }
        outcome = "unchanged"
    else:
        decision = compare_metrics(
            new.evaluation.metrics, old.evaluation.metrics if old else None, tolerances
        )
        outcome = "promoted" if decision["promote"] else "rejected"
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if outcome == "promoted":
        call_tracking(
            cfg,
            tracking_client(params).set_registered_model_alias,
            name,
            reg.champion_alias,
            challenger.version,
        )
    report = {
        "category": category,
        "model_name": name,
        "decision": outcome,
        "promoted": outcome == "promoted",
        "reason": decision["reason"],
        "time": when,
        "tracking_uri": cfg.uri,
        "tolerances": tolerances,
        "compared": decision["metrics"],
        "challenger": {
            "version": str(challenger.version),
            "run_id": new.run_id,
            "metrics": dict(new.evaluation.metrics),
        },
        "champion_before": None
        if champion is None
        else {
            "version": str(champion.version),
            "run_id": old.run_id if old else new.run_id,
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
        tags[f"promotion.challenger.{key}"] = metric_text(row["challenger"])
        tags[f"promotion.champion.{key}"] = metric_text(row["champion"])
    set_version_tags(params, name, challenger.version, tags)
    if outcome == "promoted" and champion is not None:
        set_version_tags(
            params,
            name,
            champion.version,
            {
                "promotion.superseded_by": challenger.version,
                "promotion.superseded_at": when,
                **{
                    f"promotion.superseded.{k}": metric_text(r["champion"])
                    for k, r in decision["metrics"].items()
                },
            },
        )
    out_dir = Path(reports_dir or params.eval.reports_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"promotion_{category}.json"
    path.write_text(json.dumps(_json_ready(report), indent=2) + "\n")
    report["report_path"] = str(path)
    LOGGER.info("%s: challenger v%s %s (%s)", name, challenger.version, outcome, decision["reason"])
    return report


def _json_ready(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
