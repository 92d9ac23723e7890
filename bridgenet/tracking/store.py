"""The tracking store: where ``tracking.uri`` points, and setting it up once per process.

:func:`configure_tracking` points MLflow (tracking and registry) at ``tracking.uri``:
a SQLite file by default, whose artifacts go to ``mlartifacts/`` next to the database
(absolute path, so the store does not depend on the working directory), or an
``http://`` server that manages its own artifacts. Every call it makes goes through
:func:`bridgenet.tracking.retry.call_tracking`.

A SQLite store is only created when ``tracking.create`` is true (a mistyped path is
refused rather than silently starting an empty store), and is initialised under a file
lock beside the database, so that two processes starting on a new store do not both run
MLflow's schema set-up. Set-up ends by marking the runs the journal
(:mod:`bridgenet.tracking.journal`) holds for this store.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bridgenet.config import Params, TrackingConfig
from bridgenet.tracking.journal import finish_unfinished_runs
from bridgenet.tracking.retry import call_tracking, only_our_http_retries

LOGGER = logging.getLogger(__name__)
_SQLITE = "sqlite:///"
_LOCK_TIMEOUT_S = 600  # MLflow's schema set-up on a fresh SQLite file takes seconds, not minutes


def sqlite_artifact_location(uri: str) -> str | None:
    """``file://`` URI of ``mlartifacts/`` next to a ``sqlite:///`` database; None for other stores."""
    if not uri.startswith(_SQLITE):
        return None
    db = Path(uri[len(_SQLITE) :])
    if not str(db) or str(db) == ":memory:":
        raise ValueError(f"tracking.uri {uri!r}: a SQLite tracking store needs a database file")
    return (db.expanduser().resolve().parent / "mlartifacts").as_uri()


def sqlite_database(uri: str) -> Path | None:
    """Absolute path of a ``sqlite:///`` URI's database file; None for other stores."""
    if not uri.startswith(_SQLITE):
        return None
    sqlite_artifact_location(uri)  # refuses :memory: and an empty path
    return Path(uri[len(_SQLITE) :]).expanduser().resolve()


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
    (:func:`bridgenet.tracking.retry.only_our_http_retries`) so that ``tracking.retries``
    is the only retry policy. Ends by marking the journal's unfinished runs of this store.
    """
    cfg = params.tracking
    only_our_http_retries(cfg.uri)
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
    finish_unfinished_runs(params, tracking_client(params))
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
