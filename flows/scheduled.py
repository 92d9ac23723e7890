"""Flow: the scheduled retraining, as ``dvc repro`` (what ``python -m flows.deploy`` serves).

Going through the DVC pipeline keeps the lineage true: every stage's inputs are
hashed into ``dvc.lock`` before the register stage reads them, so the
``dvc.data_root.md5`` / ``dvc.cache_dir.md5`` tags of a registered model are the
hashes of the data that model was trained and tested on (a flow run outside DVC
would leave ``dvc.lock`` describing earlier data). ``dvc repro`` runs each stage's
own flow (``python -m flows.<stage>``), so their tasks, retries and logs are in
Prefect as a manual run's are; stages whose inputs did not change are skipped.

The run has a timeout (``schedule.timeout_minutes``); a ``dvc repro`` that fails or
times out fails the flow run with the end of its output, and DVC's own lock
refuses a second ``dvc repro`` in the same checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS


class ReproFailed(RuntimeError):
    """``dvc repro`` exited non-zero or ran past its timeout; the message holds its last output."""


@task(name="dvc-repro")
def dvc_repro(repo: str, timeout_s: float) -> dict[str, Any]:
    """``dvc repro`` in ``repo``; its output goes to the run's log. Returns the stages it ran."""
    logger = get_run_logger()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    try:
        done = subprocess.run(["dvc", "repro"], cwd=repo, env=env, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-3000:]
        raise ReproFailed(f"dvc repro in {repo} ran past schedule.timeout_minutes ({timeout_s / 60:g} min): "
                          f"{tail if isinstance(tail, str) else tail.decode(errors='replace')}") from None
    for line in done.stdout.splitlines():
        logger.info("%s", line)
    if done.returncode != 0:
        raise ReproFailed(f"dvc repro in {repo} failed (exit {done.returncode}): "
                          f"{(done.stdout + done.stderr)[-3000:]}")
    ran = [line.split("'")[1] for line in done.stdout.splitlines()
           if line.startswith("Running stage '") and "'" in line[15:]]
    return {"stages_run": ran, "lock": str(Path(repo) / "dvc.lock")}


@flow(name="scheduled-retrain")
def scheduled_retrain_flow(repo: str = ".", params_file: str = str(DEFAULT_PARAMS)) -> dict[str, Any]:
    """Retrain every category through ``dvc repro`` in ``repo`` (reading ``repo/params_file``)."""
    params = stages.load(str(Path(repo) / params_file), [])
    timeout_s = params.schedule.timeout_minutes * 60
    return dvc_repro.with_options(timeout_seconds=timeout_s + 60)(str(Path(repo).resolve()), timeout_s)
