"""MLflow set-up, retries against the tracking server, and the training run.

``configure_tracking`` points MLflow (tracking and registry) at ``tracking.uri``:
a SQLite file by default, whose artifacts go to ``mlartifacts/`` next to the
database (absolute path, so the store does not depend on the working
directory), or an ``http://`` server that manages its own artifacts. Every
call to the store goes through :func:`call_tracking`, which retries transient
failures ``tracking.retries`` times with exponential backoff and then raises
:class:`TrackingUnavailableError` naming the URI.

A SQLite store is only created when ``tracking.create`` is true (a mistyped
path is refused rather than silently starting an empty store), and is
initialised under a file lock beside the database, so that two processes
starting on a new store do not both run MLflow's schema set-up. A run that
could not be marked as ended (the server went away) is written to a journal,
``<eval.reports_dir>/registry/unfinished_runs.json``, and marked FAILED by the
next :func:`configure_tracking` that reaches the same store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import yaml
from filelock import FileLock
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bridgenet.config import Params, TrackingConfig
from bridgenet.files import write_json
from bridgenet.tracking.lineage import lineage_tags
from bridgenet.tracking.pyfunc import PyfuncSpec

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow's own HTTP layer retries 7 times with backoff (minutes against a dead
# server); our retry policy is tracking.retries, so it is the only one.
_HTTP_RETRY_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
_MAX_BATCH = 1000  # MLflow's limit on metrics + params + tags per log_batch call
# 503, 429 and 504 answers map to these; also a server's own "try later" codes
_TRANSIENT_CODES = {
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
}


class TrackingUnavailableError(RuntimeError):
    """The tracking store did not answer after every configured try."""


_LOCK_TIMEOUT_S = 600  # MLflow's schema set-up on a fresh SQLite file takes seconds, not minutes
JOURNAL = "unfinished_runs.json"


# ----------------------------------------------------------------- retries
def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying: no connection, timeouts, a locked SQLite file, 429/503/504."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(
            current, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)
        ):
            return True
        if isinstance(current, MlflowException):
            if current.error_code in _TRANSIENT_CODES:
                return True
            # rest_utils wraps a failed HTTP request in a plain MlflowException
            if "failed with exception" in current.message and (
                "Connection" in current.message or "Max retries exceeded" in current.message
            ):
                return True
        # SQLite under concurrent writers (parallel category tasks)
        if "database is locked" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def call_tracking(cfg: TrackingConfig, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``func(*args, **kwargs)``, retried on transient failures.

    Tries ``cfg.retries + 1`` times, sleeping ``cfg.retry_delay_s * 2**k`` after
    the k-th failure; other errors propagate at once. Raises
    :class:`TrackingUnavailableError` ("MLflow tracking server at URI unreachable
    after N tries: ...") when every try failed.
    """
    tries = cfg.retries + 1
    what = getattr(func, "__qualname__", repr(func))
    for attempt in range(tries):
        try:
            return func(*args, **kwargs)
        except Exception as exc:  # classified below; non-transient errors re-raised unchanged
            if not is_transient(exc):
                raise
            if attempt + 1 == tries:
                raise TrackingUnavailableError(
                    f"MLflow tracking server at {cfg.uri} unreachable after {tries} tries: "
                    f"{what}: {_short(exc)}"
                ) from exc
            delay = cfg.retry_delay_s * 2**attempt
            LOGGER.warning(
                "MLflow %s failed (try %d/%d): %s; retrying in %.2f s",
                what,
                attempt + 1,
                tries,
                _short(exc),
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _short(exc: BaseException, limit: int = 300) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."


# ------------------------------------------------------------------ set-up
def sqlite_artifact_location(uri: str) -> str | None:
    """``file://`` URI of ``mlartifacts/`` next to a ``sqlite:///`` database; None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    if not str(db) or str(db) == ":memory:":
        raise ValueError(f"tracking.uri {uri!r}: a SQLite tracking store needs a database file")
    return (db.expanduser().resolve().parent / "mlartifacts").as_uri()


def sqlite_database(uri: str) -> Path | None:
    """Absolute path of a ``sqlite:///`` URI's database file; None for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    sqlite_artifact_location(uri)  # refuses :memory: and an empty path
    return Path(uri[len("sqlite:///") :]).expanduser().resolve()


def check_sqlite_store(cfg: TrackingConfig) -> Path | None:
    """The database of a SQLite ``tracking.uri``, refused when missing unless ``tracking.create``."""
    db = sqlite_database(cfg.uri)
    if db is None or db.is_file() or cfg.create:
        return db
    where = "its folder" if db.parent.is_dir() else f"its folder {db.parent} does not exist and"
    raise ValueError(
        f"tracking.uri {cfg.uri!r}: no tracking store at {db} ({where} a new, empty store would be "
        "created: a mistyped path?); to start a new store set tracking.create=true"
    )


def tracking_client(params: Params) -> MlflowClient:
    """A client on ``tracking.uri`` for both tracking and the model registry."""
    uri = params.tracking.uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def configure_tracking(params: Params) -> str:
    """Point MLflow at ``tracking.uri``, get or create ``tracking.experiment``; return its id.

    SQLite stores get their experiment's artifacts in ``mlartifacts/`` beside the
    database; an existing experiment keeps the location it was created with.
    For an HTTP server, MLflow's own request retries are turned off
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` unless already set in the
    environment) so that ``tracking.retries`` is the only retry policy.
    """
    cfg = params.tracking
    if cfg.uri.startswith(("http://", "https://")):
        os.environ.setdefault(_HTTP_RETRY_ENV, "0")
    db = check_sqlite_store(cfg)
    if db is None:
        experiment_id = _get_or_create_experiment(params)
    else:
        created = not db.is_file()
        db.parent.mkdir(parents=True, exist_ok=True)
        # MLflow creates its tables when a store object is first made; two processes
        # doing so on a new file race (OperationalError: table ... already exists).
        with FileLock(str(db) + ".lock", timeout=_LOCK_TIMEOUT_S):
            experiment_id = _get_or_create_experiment(params)
            call_tracking(cfg, tracking_client(params).search_registered_models, max_results=1)
        if created:
            LOGGER.warning("created a new, empty tracking store %s (tracking.create=true)", db)
    finish_unfinished_runs(params)
    return experiment_id


def _get_or_create_experiment(params: Params) -> str:
    cfg = params.tracking
    mlflow.set_tracking_uri(cfg.uri)
    mlflow.set_registry_uri(cfg.uri)
    client = tracking_client(params)
    experiment = call_tracking(cfg, client.get_experiment_by_name, cfg.experiment)
    if experiment is not None:
        if experiment.lifecycle_stage != "active":
            raise ValueError(
                f"tracking.experiment {cfg.experiment!r} is deleted in {cfg.uri}; "
                "restore it or choose another name"
            )
        return experiment.experiment_id
    location = sqlite_artifact_location(cfg.uri)
    try:
        experiment_id = call_tracking(
            cfg, client.create_experiment, cfg.experiment, artifact_location=location
        )
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        experiment_id = call_tracking(
            cfg, client.get_experiment_by_name, cfg.experiment
        ).experiment_id
    LOGGER.info(
        "created MLflow experiment %r (%s) in %s, artifacts at %s",
        cfg.experiment,
        experiment_id,
        cfg.uri,
        location or "the server's default",
    )
    return experiment_id


# ------------------------------------------------------- unfinished runs
def journal_path(params: Params) -> Path:
    """Where runs that could not be marked as ended are noted (see the module docstring)."""
    return Path(params.eval.reports_dir) / "registry" / JOURNAL


def _update_journal(params: Params, change: Callable[[list[dict[str, str]]], list[dict[str, str]]]) -> None:
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


def end_run_as(params: Params, run_id: str, status: str, reason: str) -> bool:
    """Mark ``run_id`` ended with ``status`` (tag ``bridgenet.end_reason``); journal it if unreachable."""
    cfg, client = params.tracking, tracking_client(params)
    try:
        if reason:
            call_tracking(cfg, client.set_tag, run_id, "bridgenet.end_reason", reason[:5000])
        call_tracking(cfg, _finish_run, client, run_id, status)
    except (TrackingUnavailableError, MlflowException) as exc:
        note_unfinished_run(params, run_id, status, f"{reason} (then: {_short(exc)})" if reason else _short(exc))
        return False
    return True


def finish_unfinished_runs(params: Params) -> list[str]:
    """Mark the journal's runs of ``tracking.uri`` as they should have ended; return their ids."""
    path = journal_path(params)
    if not path.is_file():
        return []
    done: list[str] = []

    def settle(entries: list[dict[str, str]]) -> list[dict[str, str]]:
        left = []
        client = tracking_client(params)
        for entry in entries:
            if entry.get("uri") != params.tracking.uri:
                left.append(entry)
                continue
            try:
                run = call_tracking(params.tracking, client.get_run, entry["run_id"])
                if run.info.status == "RUNNING":
                    call_tracking(params.tracking, client.set_tag, entry["run_id"],
                                  "bridgenet.end_reason", entry.get("reason", "")[:5000])
                    call_tracking(params.tracking, client.set_terminated, entry["run_id"],
                                  entry.get("status", "FAILED"))
                done.append(entry["run_id"])
            except TrackingUnavailableError:
                left.append(entry)
            except MlflowException as exc:
                LOGGER.warning("journalled run %s: %s; dropped from %s", entry["run_id"], exc, path)
        return left

    _update_journal(params, settle)
    for run_id in done:
        LOGGER.warning("marked run %s as it should have ended (noted in %s)", run_id, path)
    return done


# ------------------------------------------------------------ training run
@dataclass(frozen=True)
class LoggedTrainingRun:
    """What :func:`log_training_run` created: the run and its logged pyfunc model."""

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str
    name: str = ""  # the run's readable name (:func:`run_name`)
    user: str = ""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def epoch_metrics(history: list[Mapping[str, Any]], timestamp_ms: int) -> list[Metric]:
    """One MLflow metric per numeric history entry, ``step`` = epoch (losses and validation metrics)."""
    out = []
    for record in history:
        step = int(record["epoch"])
        out.extend(
            Metric(key, float(value), timestamp_ms, step)
            for key, value in record.items()
            if key != "epoch" and _finite(value)
        )
    return out


def evaluation_metrics(evaluation: Any, timestamp_ms: int, model_id: str | None = None,
                       dataset: Mapping[str, str] | None = None) -> list[Metric]:
    """Test metrics ``test_<key>``, ``test_auroc_defect_<type>``, ``test_auroc_family_<family>`` and
    ``test_at_threshold_<count or rate>``; of logged model ``model_id``, measured on ``dataset``."""
    values = {f"test_{k}": v for k, v in evaluation.metrics.items()}
    values.update({f"test_auroc_defect_{k}": v for k, v in evaluation.per_defect.items()})
    values.update({f"test_auroc_family_{k}": v for k, v in evaluation.per_family.items()})
    if hasattr(evaluation, "at_threshold"):  # the deployed decision's confusion counts and rates
        values.update({f"test_at_threshold_{k}": v for k, v in evaluation.at_threshold().items()})
    name, digest = (dataset["name"], _stored_digest(dataset)) if dataset else (None, None)
    # nan (undefined, e.g. no anomalous pixel) is stored as nan rather than dropped
    return [Metric(k, float(v), timestamp_ms, 0, model_id=model_id, dataset_name=name, dataset_digest=digest)
            for k, v in values.items() if v is not None]


def _log_in_batches(
    cfg: TrackingConfig,
    client: MlflowClient,
    run_id: str,
    metrics: list[Metric] = (),
    params: list[Param] = (),
    tags: list[RunTag] = (),
) -> None:
    for start in range(0, len(metrics), _MAX_BATCH):
        call_tracking(cfg, client.log_batch, run_id, metrics=metrics[start : start + _MAX_BATCH])
    for start in range(0, len(params), 100):
        call_tracking(cfg, client.log_batch, run_id, params=params[start : start + 100])
    for start in range(0, len(tags), 100):
        call_tracking(cfg, client.log_batch, run_id, tags=tags[start : start + 100])


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:6000]


def log_training_run(
    params: Params,
    category: str,
    summary: Mapping[str, Any],
    evaluation: Any,
    figures: Mapping[str, Path],
    model_path: Path,
    pyfunc: PyfuncSpec,
    preview_path: Path | None = None,
    repo_root: Path | str = ".",
    trained_params: Params | None = None,
    lineage: Mapping[str, str] | None = None,
    records: Sequence[Path] = (),
    datasets: Sequence[Mapping[str, str]] = (),
) -> LoggedTrainingRun:
    """One MLflow run for one category's training, with its evaluation and model.

    Logs: the flattened resolved params (``model.embed_dim`` ...) and the full
    ``params.yaml``; per-epoch metrics of ``summary["history"]`` with
    ``step=epoch``; the final validation metrics (``best_<key>``) and timings
    of the summary, and the summary itself (``training/train_summary.json``);
test metrics of ``evaluation`` (anything with ``metrics``, ``per_defect`` and
    ``per_family`` mappings, such as :class:`bridgenet.evaluate.CategoryEvaluation`);
    the PNG ``figures`` (name -> path, e.g. the heatmap sheet) and ``preview_path``
    under ``figures/``; the ``records`` files (the stored evaluation) under
    ``evaluation/``; lineage tags; the pyfunc model, named ``<registry.prefix>-<category>``,
    built from ``model_path`` as ``pyfunc`` describes it and holding the model file's
    validation metrics (``best_*``: the selected epoch, scored as the file scores), its
    threshold and the test metrics (with the test data set); the ``datasets`` it
    read (``name``, ``source``, ``digest``, ``context``: training or test; the full digest
    as the input's ``sha256`` tag) as the run's inputs; the user and the command as the
    run's source; a readable name (:func:`run_name`) and a description.

    ``trained_params`` (default ``params``) are the params the model was
    trained with, logged as the run's params; ``params`` gives the tracking
    settings. ``lineage`` defaults to ``lineage_tags(repo_root, params)``. A
    failed run is marked FAILED and the error re-raised; tracking failures
    raise :class:`TrackingUnavailableError` after the configured retries.
    """
    from bridgenet.tracking import pyfunc as pyfunc_module

    cfg = params.tracking
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {model_path} does not exist")
    for name, path in {**figures, **({"preview": preview_path} if preview_path else {})}.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"figure {name!r}: file {path} does not exist")
    experiment_id = configure_tracking(params)
    client = tracking_client(params)
    lineage = lineage if lineage is not None else lineage_tags(repo_root, params)
    name = run_name(category, lineage)
    tags = {
        "category": category,
        "bridgenet.stage": "register",  # the stage that logs it (the model was trained before)
        "mlflow.runName": name,
        "mlflow.note.content": run_description(category, registered_name(params, category), summary, datasets),
        **lineage,
    }
    if summary.get("device"):
        tags["device"] = str(summary["device"])
    tags.setdefault("mlflow.user", _user())
    tags.setdefault("mlflow.source.name", Path(sys.argv[0]).name or "python")
    tags.setdefault("mlflow.source.type", "LOCAL")
    run = call_tracking(cfg, client.create_run, experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        call_tracking(cfg, mlflow.start_run, run_id=run_id, nested=mlflow.active_run() is not None)
        # before any metric: MLflow links every metric already logged at the model's step (epoch 0's)
        # to it; the model file's validation metrics and the test metrics are linked to it below
        info = call_tracking(cfg, pyfunc_module.log_pyfunc_model, model_path, pyfunc,
                             registered_name(params, category))
        # the test split first: the run page shows the first input and "+1" for the others
        for dataset in sorted(datasets, key=lambda d: d["context"] != "test"):
            call_tracking(cfg, mlflow.log_input, _meta_dataset(dataset), context=dataset["context"],
                          tags={"sha256": str(dataset["digest"])})
        test_set = next((d for d in datasets if d["context"] == "test"), None)
        now = int(time.time() * 1000)
        scalars = {f"best_{k}": v for k, v in (summary.get("validation") or {}).items()}
        scalars.update(
            {
                k: summary[k]
                for k in (
                    "best_epoch",
                    "threshold",
                    "seconds_per_epoch",
                    "setup_seconds",
                    "train_samples",
                )
                if k in summary
            }
        )
        metrics = epoch_metrics(list(summary.get("history") or []), now)
        # the model file's own numbers (the selected epoch, scored as the file scores): the model's too
        metrics += [Metric(k, float(v), now, 0, model_id=info.model_id) for k, v in scalars.items() if _finite(v)]
        metrics += evaluation_metrics(evaluation, now, info.model_id, test_set)
        logged_params = trained_params or params
        flat = [Param(k, _param_value(v)) for k, v in sorted(logged_params.flat().items())]
        _log_in_batches(cfg, client, run_id, metrics=metrics, params=flat)
        with tempfile.TemporaryDirectory(prefix="bridgenet-run-") as tmp:
            config = Path(tmp) / "params.yaml"
            config.write_text(yaml.safe_dump(logged_params.to_dict(), sort_keys=False))
            call_tracking(cfg, client.log_artifact, run_id, str(config))
            record = write_json(Path(tmp) / "train_summary.json", summary, indent=1)
            call_tracking(cfg, client.log_artifact, run_id, str(record), "training")
        for path in [*figures.values(), *([preview_path] if preview_path else [])]:
            call_tracking(cfg, client.log_artifact, run_id, str(path), "figures")
        for path in records:
            call_tracking(cfg, client.log_artifact, run_id, str(path), "evaluation")
        status = "FINISHED"
    finally:
        end_run_as(params, run_id, status, "" if status == "FINISHED" else "logging the run failed")
    LOGGER.info("logged %s training run %s, model %s", category, run_id, info.model_uri)
    return LoggedTrainingRun(run_id, experiment_id, info.model_uri, info.model_id, name, tags["mlflow.user"])


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown"


def _stored_digest(dataset: Mapping[str, str]) -> str:
    """The digest as MLflow keeps it (36 characters); the full one is the input's ``sha256`` tag."""
    return str(dataset["digest"])[:36]


def _meta_dataset(dataset: Mapping[str, str]) -> Any:
    """A dataset as MLflow records it (name, source, digest cut to what MLflow keeps)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "can be interpreted in multiple ways": a local path
        source = resolve_dataset_source(str(Path(dataset["source"]).resolve()))
    return MetaDataset(source, name=dataset["name"], digest=_stored_digest(dataset))


def registered_name(params: Params, category: str) -> str:
    """The name of a category's logged model and registered model: ``<registry.prefix>-<category>``."""
    return f"{params.registry.prefix}-{category}"


def run_name(category: str, lineage: Mapping[str, str], when: float | None = None) -> str:
    """A run's readable name: category, UTC date and time, short commit (``bagel 2025-06-01 14:03 1a2b3c4``)."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(when))
    commit = lineage.get("git.commit", "")
    short = commit[:7] if len(commit) >= 7 and all(c in "0123456789abcdef" for c in commit[:7]) else "no-git"
    dirty = "+dirty" if lineage.get("git.dirty") == "true" else ""
    return f"{category} {stamp} {short}{dirty}"


def _rounded(value: Any) -> Any:
    return f"{value:.3f}" if _finite(value) else value


def run_description(category: str, model: str, summary: Mapping[str, Any],
                    datasets: Sequence[Mapping[str, str]]) -> str:
    """The run's description (its page's first text): what it holds and where its data came from."""
    data = "; ".join(f"{d['context']}: `{d['source']}`" for d in datasets) or "not recorded"
    return (
        f"BridgeNet model of **{category}**, trained by the train stage and logged by `bridgenet register`: "
        f"{summary.get('epochs', len(summary.get('history') or []))} epochs (metrics per epoch, step = epoch), "
        f"the model file of the selected epoch {summary.get('best_epoch')} as logged model "
        f"`{model}` with its validation and test metrics, test metrics (`test_*`, "
        f"`test_at_threshold_*` at the deployed threshold {_rounded(summary.get('threshold'))}), figures and the "
        f"model card (`model_card.md`). Data: {data}."
    )


def _finish_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End the fluent run ``run_id`` if it is active (popped even when this fails), else terminate it."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)
