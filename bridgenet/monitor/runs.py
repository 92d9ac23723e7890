"""A monitoring pass as an MLflow run, in the experiment ``<tracking.experiment>-monitoring``.

The run holds the pass's numbers as metrics, its limits as params, the summary
(``drift.json``) and the figure (``drift.png``); tags name the category, the status and
the model's file digest; its description (:func:`describe_pass`) is each check against its
limit in one table, what a reviewer reads first. Every call goes through :func:`bridgenet.tracking.retry.call_tracking`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param

from bridgenet.config import Params
from bridgenet.files import json_safe
from bridgenet.tracking.retry import call_tracking
from bridgenet.tracking.runs import end_run_as
from bridgenet.tracking.store import configure_tracking, tracking_client

LOGGER = logging.getLogger(__name__)
METRIC_KEYS = ("n_ok", "n_no_object", "n_error", "n_reference", "flag_rate", "expected_flag_rate",
               "flag_rate_limit", "flag_rate_ratio", "psi", "psi_bins", "ks_statistic", "ks_pvalue",
               "no_object_rate", "score_median", "reference_median", "n_brightness", "brightness_median",
               "reference_brightness_median", "brightness_shift", "brightness_ks_pvalue", "n_missing_points",
               "missing_points_median", "reference_missing_points_median", "missing_points_increase",
               "missing_points_ks_pvalue")


def describe_pass(summary: Mapping[str, Any]) -> str:
    """The run's description: the verdict, then each check's value against its limit (markdown)."""
    limits = summary["limits"]

    def row(check: str, value: Any, limit: str, key: str, fmt: str) -> str:
        shown = "not judged" if value is None else format(value, fmt)
        verdict = "**crossed**" if key in summary["crossed"] else ("-" if value is None else "ok")
        return f"| {check} | {shown} | {limit} | {verdict} |"

    crossed = f" ({', '.join(summary['crossed'])})" if summary["crossed"] else ""
    window = summary.get("window") or {}
    span = " to ".join(_minute(window.get(k)) for k in ("first", "last")) if window.get("first") else "no records"
    headline = (f"**{summary['category']}: {summary['status'].replace('_', ' ')}**{crossed}: {summary['n_ok']} ok "
                f"records of the watched model (at least {limits['min_samples']} needed; {span}), against "
                f"{summary['n_reference']} validation goods.")
    lines = [
        headline,
        "",
        "| check | window | limit | |",
        "|---|---:|---:|---|",
        row("flagged rate", summary["flag_rate"], f"{summary['flag_rate_limit']:.3g}", "flag_rate", ".3g"),
        row("PSI of the scores", summary["psi"], f"{limits['psi_limit']:g}", "psi", ".3f"),
        row("KS p-value of the scores", summary["ks_pvalue"], f"{limits['ks_pvalue']:g}", "ks_pvalue", ".2g"),
        row("no-object rate", summary["no_object_rate"], f"{limits['max_no_object_rate']:g}", "no_object_rate",
            ".3g"),
        row("brightness vs validation goods", summary.get("brightness_shift"),
            f"± {limits['max_brightness_shift']:.0%}", "brightness", "+.1%"),
        row("part without a 3D point vs validation goods", summary.get("missing_points_increase"),
            f"+ {limits['max_missing_points_increase']:.0%}", "missing_points", "+.1%"),
        "",
        ("The distributions of scores, brightness and missing points: artifact `drift.png`; every number: "
        "`drift.json`."),
    ]
    return "\n".join(lines)


def _minute(moment: str | None) -> str:
    """A log time as ``YYYY-MM-DD HH:MM UTC``."""
    return "?" if not moment else datetime.fromisoformat(str(moment)).astimezone(timezone.utc).strftime(
        "%Y-%m-%d %H:%M UTC")


def monitoring_experiment(params: Params) -> str:
    """The monitoring runs' experiment: ``<tracking.experiment>-monitoring``."""
    return f"{params.tracking.experiment}-monitoring"


def log_monitoring_run(params: Params, summary: Mapping[str, Any]) -> str:
    """Log one pass (``summary`` of :func:`bridgenet.monitor.watch.monitor_category`, whose figure
    is written) as a run of :func:`monitoring_experiment`; returns its run id."""
    cfg = params.tracking
    watched = params.model_copy(update={"tracking": cfg.model_copy(update={"experiment": monitoring_experiment(params)})})
    experiment_id = configure_tracking(watched)
    client = tracking_client(params)
    category = summary["category"]
    tags = {"category": category, "bridgenet.stage": "monitor", "drift.status": summary["status"],
            "drift.crossed": ",".join(summary["crossed"]), "model.digest": summary["model"]["digest"],
            "model.ref": summary["model"]["ref"], "mlflow.note.content": describe_pass(summary),
            "mlflow.runName": f"{category} drift {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}"}
    run_id = call_tracking(cfg, client.create_run, experiment_id, tags=tags).info.run_id
    status = "FAILED"
    try:
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(summary[key]), now, 0) for key in METRIC_KEYS
                   if isinstance(summary.get(key), (int, float)) and math.isfinite(summary[key])]
        params_ = [Param(f"monitor.{key}", str(value)) for key, value in summary["limits"].items()]
        call_tracking(cfg, client.log_batch, run_id, metrics=metrics, params=params_)
        call_tracking(cfg, client.log_artifact, run_id, str(Path(summary["files"]["figure"])))
        call_tracking(cfg, client.log_dict, run_id, json_safe(summary), "drift.json")
        status = "FINISHED"
    finally:
        end_run_as(params, run_id, status, "" if status == "FINISHED" else "logging the monitoring run failed")
    LOGGER.info("%s: monitoring run %s in experiment %s", category, run_id, monitoring_experiment(params))
    return run_id
