"""The journal of runs that could not be marked as ended.

A run whose end could not be written (the tracking server went away) is noted in
``<eval.reports_dir>/registry/unfinished_runs.json`` with the status it should have
ended with (:func:`note_unfinished_run`); the next set-up of the same store
(:func:`bridgenet.tracking.store.configure_tracking`) marks it so
(:func:`finish_unfinished_runs`). The file is read and rewritten under a file lock
beside it, so that parallel category tasks do not lose each other's entries.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bridgenet import paths
from bridgenet.config import Params
from bridgenet.files import write_json
from bridgenet.tracking.retry import TrackingUnavailableError, call_tracking

LOGGER = logging.getLogger(__name__)
END_REASON_TAG = "bridgenet.end_reason"
_LOCK_TIMEOUT_S = 600  # held while journalled runs are marked, each call with its retries

Entries = list[dict[str, str]]


def journal_path(params: Params) -> Path:
    """Where runs that could not be marked as ended are noted (see the module docstring)."""
    return paths.unfinished_runs_journal(params)


def _update_journal(params: Params, change: Callable[[Entries], Entries]) -> None:
    """Replace the journal's entries by ``change(entries)`` under its lock; no entry left: no file."""
    path = journal_path(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S):
        try:
            entries = json.loads(path.read_text()) if path.is_file() else []
        except json.JSONDecodeError as exc:
            LOGGER.warning("%s: unreadable (%s); starting it afresh", path, exc)
            entries = []
        entries = change(entries if isinstance(entries, list) else [])
        if entries:
            write_json(path, entries, indent=1)
        else:
            path.unlink(missing_ok=True)


def note_unfinished_run(params: Params, run_id: str, status: str, reason: str) -> None:
    """Journal ``run_id`` of ``tracking.uri`` to be marked ``status`` by the next set-up."""
    entry = {"uri": params.tracking.uri, "run_id": run_id, "status": status, "reason": reason[:1000]}
    _update_journal(params, lambda entries: [e for e in entries if e.get("run_id") != run_id] + [entry])
    LOGGER.error("run %s could not be marked %s (%s); noted in %s for the next run",
                 run_id, status, reason, journal_path(params))


def finish_unfinished_runs(params: Params, client: MlflowClient) -> list[str]:
    """Mark the journal's runs of ``tracking.uri`` as they should have ended; return their ids.

    A run still RUNNING gets the journalled reason (tag ``bridgenet.end_reason``) and status;
    one the store does not answer for stays in the journal; one the store refuses (deleted,
    unknown) is dropped with a warning.
    """
    path = journal_path(params)
    if not path.is_file():
        return []
    cfg = params.tracking
    done: list[str] = []

    def settle(entries: Entries) -> Entries:
        left = []
        for entry in entries:
            if entry.get("uri") != cfg.uri:
                left.append(entry)
                continue
            run_id = entry["run_id"]
            try:
                run = call_tracking(cfg, client.get_run, run_id)
                if run.info.status == "RUNNING":
                    call_tracking(cfg, client.set_tag, run_id, END_REASON_TAG, entry.get("reason", "")[:5000])
                    call_tracking(cfg, client.set_terminated, run_id, entry.get("status", "FAILED"))
                done.append(run_id)
            except TrackingUnavailableError:
                left.append(entry)
            except MlflowException as exc:
                LOGGER.warning("journalled run %s: %s; dropped from %s", run_id, exc, path)
        return left

    _update_journal(params, settle)
    for run_id in done:
        LOGGER.warning("marked run %s as it should have ended (noted in %s)", run_id, path)
    return done
