"""Serve the scheduled retraining (schedule.cron) and the drift monitor (schedule.monitor_cron).

Start a local Prefect server first (it binds 127.0.0.1):

    prefect server start --host 127.0.0.1 &
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    bridgenet schedule                 # or: python -m flows.deploy; serves until stopped

The deployment runs :func:`flows.scheduled.scheduled_retrain_flow`: ``dvc repro`` in
this checkout, so that ``dvc.lock`` and the registered models' lineage tags describe the
data the models saw. At most one run at a time (the deployment's concurrency limit
is 1: a run due while one is still going waits); each run fails past
``schedule.timeout_minutes``.

Beside it, ``drift-monitor`` runs :func:`flows.monitor.monitor_flow` on
``schedule.monitor_cron``: a pass over the prediction log per category. When a pass
crosses a limit it emits ``bridgenet.drift.detected``; the retraining deployment holds a
trigger on that event (:func:`drift_trigger`), so drift starts a retraining run (queued
behind one in progress). Both run in ``--repo`` (the served process works there).
"""

from __future__ import annotations

import argparse
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS, Params
from bridgenet.monitor.events import DRIFT_EVENT, RESOURCE_PREFIX
from flows.monitor import monitor_flow
from flows.scheduled import scheduled_retrain_flow

DEPLOYMENT = "scheduled-retrain"
MONITOR_DEPLOYMENT = "drift-monitor"


def drift_trigger() -> DeploymentEventTrigger:
    """Run the deployment that holds it on each ``bridgenet.drift.detected`` of any category."""
    return DeploymentEventTrigger(
        name="retrain on drift",
        expect={DRIFT_EVENT},
        match={"prefect.resource.id": f"{RESOURCE_PREFIX}*"},
        posture="Reactive",
        threshold=1,
        within=timedelta(0),
    )


def deployments(repo: Path, params_file: str, params: Params, name: str = DEPLOYMENT,
                monitor_name: str = MONITOR_DEPLOYMENT) -> list[Any]:
    """The retraining deployment (schedule.cron, one run at a time, triggered by drift) and the
    drift monitor's (schedule.monitor_cron), for the checkout ``repo`` and its ``params_file``."""
    timezone = params.schedule.timezone
    retrain = scheduled_retrain_flow.to_deployment(
        name=name,
        schedule=Cron(params.schedule.cron, timezone=timezone),
        parameters={"repo": str(repo), "params_file": params_file},
        concurrency_limit=1,
        triggers=[drift_trigger()],
    )
    monitor = monitor_flow.to_deployment(
        name=monitor_name,
        schedule=Cron(params.schedule.monitor_cron, timezone=timezone),
        parameters={"params_file": str(repo / params_file)},
    )
    return [retrain, monitor]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".", help="the checkout whose DVC pipeline runs (default: here)")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file inside --repo (dvc repro reads it)")
    parser.add_argument("--name", default=DEPLOYMENT)
    parser.add_argument("--monitor-name", default=MONITOR_DEPLOYMENT)
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    params = stages.load(str(repo / args.params), [])  # refuses a broken params file before serving
    os.chdir(repo)  # the monitor's paths (monitor.log, reports) are the checkout's
    serve(*deployments(repo, args.params, params, args.name, args.monitor_name))


if __name__ == "__main__":
    main()
