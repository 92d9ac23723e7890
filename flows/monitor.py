"""Flow: the drift monitor, one pass per category over the prediction log (what ``python -m flows.deploy``
serves as ``drift-monitor`` on ``schedule.monitor_cron``).

Each pass judges the last ``monitor.window`` ok records of its category against the watched
model's validation goods (:func:`bridgenet.monitor.watch.monitor_category`) and, when a
limit is crossed, emits ``bridgenet.drift.detected`` for the category, which triggers the
retraining deployment. A category without enough data is reported, not failed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS
from flows.common import cli


@task(name="drift-pass")
def monitor_task(run: stages.CategoryParams, model: str | None = None) -> dict[str, Any]:
    """One monitoring pass of ``run.category``; emits the drift event when a limit is crossed."""
    from bridgenet.monitor.drift import DRIFT
    from bridgenet.monitor.events import emit_drift_event
    from bridgenet.monitor.watch import monitor_category

    logger = get_run_logger()
    summary = monitor_category(run.params, run.category, model)
    logger.info("%s: %s (flagged %s, PSI %s, KS p %s, no object %s)", run.category, summary["status"],
                summary["flag_rate"], summary["psi"], summary["ks_pvalue"], summary["no_object_rate"])
    if summary["status"] == DRIFT:
        event = emit_drift_event(summary)
        summary["event_id"] = None if event is None else str(event.id)
        logger.warning("%s: drift (%s): emitted %s", run.category, ", ".join(summary["crossed"]),
                       "the drift event" if event is not None else "nothing (no Prefect API)")
    return summary


@flow(name="drift-monitor")
def monitor_flow(
    params_file: str = str(DEFAULT_PARAMS),
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """A monitoring pass per category (default: all); ``model`` (one category only) overrides the champion."""
    params = stages.load(params_file, overrides or [])
    names = stages.categories(params, categories)
    if model is not None and len(names) != 1:
        raise ValueError(f"model={model!r} watches one category; got {names}")
    return {c: monitor_task(stages.resolve(params, c), model) for c in names}


if __name__ == "__main__":
    cli(monitor_flow, with_category=True)
