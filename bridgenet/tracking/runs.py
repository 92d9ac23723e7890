"""MLflow set-up, retries against the tracking server, and the training run.

``configure_tracking`` points MLflow (tracking and registry) at ``tracking.uri``:
a SQLite file by default, whose artifacts go to ``mlartifacts/`` next to the
database (absolute path, so the store does not depend on the working
directory), or an ``http://`` server that manages its own artifacts. Every
call to the store goes through :func:`call_tracking`, which retries transient
failures ``tracking.retries`` times with exponential backoff and then raises
:class:`TrackingUnavailableError` naming the URI.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bridgenet.config import Params, TrackingConfig
from bridgenet.tracking.lineage import lineage_tags

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
    elif cfg.uri.startswith("sqlite:///"):
        Path(cfg.uri[len("sqlite:///") :]).expanduser().resolve().parent.mkdir(
            parents=True, exist_ok=True
        )
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


# ------------------------------------------------------------ training run
@dataclass(frozen=True)
class LoggedTrainingRun:
    """What :func:`log_training_run` created: the run and its logged pyfunc model."""

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str


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


def evaluation_metrics(evaluation: Any, timestamp_ms: int) -> list[Metric]:
    """Test metrics ``test_<key>``, ``test_auroc_defect_<type>`` and ``test_auroc_family_<family>``."""
    values = {f"test_{k}": v for k, v in evaluation.metrics.items()}
    values.update({f"test_auroc_defect_{k}": v for k, v in evaluation.per_defect.items()})
    values.update({f"test_auroc_family_{k}": v for k, v in evaluation.per_family.items()})
    # nan (undefined, e.g. no anomalous pixel) is stored as nan rather than dropped
    return [Metric(k, float(v), timestamp_ms, 0) for k, v in values.items() if v is not None]


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
    preview_path: Path | None = None,
    repo_root: Path | str = ".",
    input_example: Mapping[str, Any] | None = None,
    trained_params: Params | None = None,
    lineage: Mapping[str, str] | None = None,
) -> LoggedTrainingRun:
    """One MLflow run for one category's training, with its evaluation and model.

    Logs: the flattened resolved params (``model.embed_dim`` ...) and the full
    ``params.yaml``; per-epoch metrics of ``summary["history"]`` with
    ``step=epoch``; the final validation metrics (``best_<key>``) and timings
    of the summary, and the summary itself (``training/train_summary.json``);
    test metrics of ``evaluation`` (a
    :class:`~bridgenet.evaluate.CategoryEvaluation`); the PNG ``figures``
    (name -> path, e.g. the heatmap sheet) and ``preview_path`` under
    ``figures/``; lineage tags; the pyfunc model (``name="model"``) built from
    ``model_path`` with ``input_example``.

    ``trained_params`` (default ``params``) are the params the model was
    trained with, logged as the run's params; ``params`` gives the tracking
    settings. ``lineage`` defaults to ``lineage_tags(repo_root, params)``. A
    failed run is marked FAILED and the error re-raised; tracking failures
    raise :class:`TrackingUnavailableError` after the configured retries.
    """
    from bridgenet.tracking.pyfunc import log_pyfunc_model

    cfg = params.tracking
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(f"model file {model_path} does not exist")
    for name, path in {**figures, **({"preview": preview_path} if preview_path else {})}.items():
        if not Path(path).is_file():
            raise FileNotFoundError(f"figure {name!r}: file {path} does not exist")
    experiment_id = configure_tracking(params)
    client = tracking_client(params)
    tags = {
        "category": category,
        "bridgenet.stage": "train",
        "mlflow.runName": f"{category}",
        **(lineage if lineage is not None else lineage_tags(repo_root, params)),
    }
    if summary.get("device"):
        tags["device"] = str(summary["device"])
    run = call_tracking(cfg, client.create_run, experiment_id, run_name=category, tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        call_tracking(cfg, mlflow.start_run, run_id=run_id, nested=mlflow.active_run() is not None)
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
        metrics += [Metric(k, float(v), now, 0) for k, v in scalars.items() if _finite(v)]
        metrics += evaluation_metrics(evaluation, now)
        logged_params = trained_params or params
        flat = [Param(k, _param_value(v)) for k, v in sorted(logged_params.flat().items())]
        _log_in_batches(cfg, client, run_id, metrics=metrics, params=flat)
        with tempfile.TemporaryDirectory(prefix="bridgenet-run-") as tmp:
            config = Path(tmp) / "params.yaml"
            config.write_text(yaml.safe_dump(logged_params.to_dict(), sort_keys=False))
            call_tracking(cfg, client.log_artifact, run_id, str(config))
            record = Path(tmp) / "train_summary.json"
            record.write_text(json.dumps(dict(summary), indent=1, default=str))
            call_tracking(cfg, client.log_artifact, run_id, str(record), "training")
        for path in [*figures.values(), *([preview_path] if preview_path else [])]:
            call_tracking(cfg, client.log_artifact, run_id, str(path), "figures")
        info = call_tracking(cfg, log_pyfunc_model, model_path, input_example=input_example)
        status = "FINISHED"
    finally:
        try:
            call_tracking(cfg, _finish_run, client, run_id, status)
        except (TrackingUnavailableError, MlflowException) as exc:
            LOGGER.error("could not mark run %s as %s: %s", run_id, status, exc)
    LOGGER.info("logged %s training run %s, model %s", category, run_id, info.model_uri)
    return LoggedTrainingRun(run_id, experiment_id, info.model_uri, info.model_id)


def _finish_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End the fluent run ``run_id`` if it is active (popped even when this fails), else terminate it."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)
