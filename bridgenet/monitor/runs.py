"""A monitoring pass as an MLflow run, in the experiment ``<tracking.experiment>-monitoring``.

The run holds the pass's numbers as metrics, its limits as params, the summary
(``drift.json``) and the figure (``drift.png``); tags name the category, the status and
the model's file digest. Every call goes through :func:`bridgenet.tracking.retry.call_tracking`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
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
               "reference_brightness_median", "brightness_shift", "brightness_ks_pvalue")


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
            "model.ref": summary["model"]["ref"],
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
