"""Serve the scheduled retraining on the cron schedule of params.yaml (schedule.cron, schedule.timezone).

Start a local Prefect server first (it binds 127.0.0.1):

    prefect server start --host 127.0.0.1 &
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    bridgenet schedule                 # or: python -m flows.deploy; serves until stopped

The deployment runs :func:`flows.scheduled.scheduled_retrain_flow`: ``dvc repro`` in
this checkout, so that ``dvc.lock`` and the registered models' lineage tags describe the
data the models saw. At most one run at a time (the deployment's concurrency limit
is 1: a run due while one is still going waits); each run fails past
``schedule.timeout_minutes``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect.schedules import Cron

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS
from flows.scheduled import scheduled_retrain_flow

DEPLOYMENT = "scheduled-retrain"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=".", help="the checkout whose DVC pipeline runs (default: here)")
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params file inside --repo (dvc repro reads it)")
    parser.add_argument("--name", default=DEPLOYMENT)
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve()
    params = stages.load(str(repo / args.params), [])  # refuses a broken params file before serving
    scheduled_retrain_flow.serve(
        name=args.name,
        schedule=Cron(params.schedule.cron, timezone=params.schedule.timezone),
        parameters={"repo": str(repo), "params_file": args.params},
        global_limit=1,
    )


if __name__ == "__main__":
    main()
