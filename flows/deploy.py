"""Serve the retrain flow on the cron schedule of params.yaml (schedule.cron, schedule.timezone).

Start a local Prefect server first (it binds 127.0.0.1):

    prefect server start --host 127.0.0.1 &
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.deploy            # serves 'retrain/scheduled-retrain' until stopped
"""

from __future__ import annotations

import argparse

from prefect.schedules import Cron

from bridgenet import stages
from flows.retrain import retrain_flow, task_runner_for


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.deploy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="scheduled-retrain")
    args = parser.parse_args(argv)
    params = stages.load(args.params, args.overrides)
    retrain_flow.with_options(task_runner=task_runner_for(params.dask.n_workers, params.dask.address)).serve(
        name=args.name,
        schedule=Cron(params.schedule.cron, timezone=params.schedule.timezone),
        parameters={"params_file": args.params, "overrides": args.overrides},
    )


if __name__ == "__main__":
    main()
