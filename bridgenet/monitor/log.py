"""The prediction log: one SQLite table, ``predictions``, one row per scored (or refused) sample.

Written by ``bridgenet predict`` and by the served pyfunc model (``monitor.log``), read by
the drift monitor (:func:`read`). Several writers at once (serving workers, a CLI predict)
are safe: the database runs in WAL mode with a busy timeout, and :func:`append` writes its
records in one transaction. Each process keeps one connection per log file (a forked
child opens its own). Columns:

==============  =====  =========================================================
id              int    insertion order (AUTOINCREMENT)
time            text   UTC, ISO 8601 with microseconds (``2025-01-31T08:00:00.000000+00:00``)
category        text   the model's category
model, version  text   registered name and version (``models:/`` URIs), else NULL
model_digest    text   sha256 of the model file
rgb_digest      text   sha256 of the RGB file (or of the served array's bytes); NULL if unread
xyz_digest      text   the same for the point cloud
score           real   the image score; NULL when nothing was scored
verdict         text   ``defect`` or ``good``; NULL when nothing was decided
status          text   ``ok``, ``no_object`` (no object found: flagged, or refused with a message)
                       or ``error`` (input refused; ``message`` says why)
message         text   the refusal's message, else NULL
threshold       real   the model's image threshold
source          text   ``predict`` (the CLI) or ``serve`` (the REST model)
brightness      real   the part's mean brightness in [0, 1] as the network saw it (ok records;
                       :func:`bridgenet.monitor.drift.part_brightness`), else NULL
missing_points  real   the share of the part's pixels without a measured 3D point (ok records;
                       :func:`bridgenet.data.depth.missing_share`), else NULL
==============  =====  =========================================================

A log written before ``brightness`` (schema 1) or ``missing_points`` (schema 2) existed gains
the columns, empty for its old records, when a writer opens it; :func:`read` reads any.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import astuple, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

LOGGER = logging.getLogger(__name__)
TABLE = "predictions"
SCHEMA_VERSION = 3  # PRAGMA user_version of a log this module wrote (2: brightness, 3: missing_points)
BUSY_TIMEOUT_S = 30.0  # how long a writer waits for another's transaction before giving up
STATUSES = ("ok", "no_object", "error")
VERDICTS = ("defect", "good")
SOURCES = ("predict", "serve")
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    category TEXT NOT NULL,
    model TEXT,
    version TEXT,
    model_digest TEXT,
    rgb_digest TEXT,
    xyz_digest TEXT,
    score REAL,
    verdict TEXT,
    status TEXT NOT NULL,
    message TEXT,
    threshold REAL,
    source TEXT NOT NULL,
    brightness REAL,
    missing_points REAL
);
CREATE INDEX IF NOT EXISTS {TABLE}_category_time ON {TABLE} (category, time);
PRAGMA user_version = {SCHEMA_VERSION};
"""


@dataclass(frozen=True)
class PredictionRecord:
    """One row of the log (without its ``id``); the module docstring says what each field holds."""

    time: str
    category: str
    model: str | None
    version: str | None
    model_digest: str | None
    rgb_digest: str | None
    xyz_digest: str | None
    score: float | None
    verdict: str | None
    status: str
    message: str | None
    threshold: float | None
    source: str
    brightness: float | None = None
    missing_points: float | None = None

    def __post_init__(self) -> None:
        for name, value, allowed in (("status", self.status, STATUSES), ("source", self.source, SOURCES),
                                     ("verdict", self.verdict, (*VERDICTS, None))):
            if value not in allowed:
                raise ValueError(f"prediction record: {name} must be one of {list(allowed)}, got {value!r}")


COLUMNS = ("id", *(f.name for f in fields(PredictionRecord)))
ADDED_COLUMNS = ("brightness", "missing_points")  # real columns added after schema 1, in order


def utc_now() -> str:
    """The current time as the log writes it (fixed width: text order is time order)."""
    return format_time(datetime.now(timezone.utc))


def format_time(moment: datetime | str) -> str:
    """``moment`` (an aware datetime or an ISO 8601 text with an offset) in the log's UTC format."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    if moment.tzinfo is None:
        raise ValueError(f"time {moment.isoformat()} has no time zone; give it in UTC (+00:00) or with an offset")
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")


# One connection per (process, log file): a connection must not cross a fork.
_CONNECTIONS: dict[tuple[int, str], sqlite3.Connection] = {}
_LOCK = threading.Lock()  # a connection serves one thread at a time (threaded servers)


def _connection(path: Path) -> sqlite3.Connection:
    key = (os.getpid(), str(path.resolve()))
    connection = _CONNECTIONS.get(key)
    if connection is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            # WAL + NORMAL: a committed record survives a crash of the process, not a power cut
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(SCHEMA)
            present = _columns(connection)
            for column in ADDED_COLUMNS:  # a log of an earlier schema: add what it lacks
                if column not in present:
                    connection.execute(f"ALTER TABLE {TABLE} ADD COLUMN {column} REAL")
        except sqlite3.Error:
            connection.close()
            raise
        _CONNECTIONS[key] = connection
    return connection


def _columns(connection: sqlite3.Connection) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({TABLE})")}


def append(path: str | Path, records: Iterable[PredictionRecord]) -> int:
    """Add ``records`` to the log at ``path`` (created with its folder if missing) in one
    transaction; returns how many. Raises ``sqlite3.Error`` or ``OSError`` if it cannot be written."""
    rows = [astuple(r) for r in records]
    if not rows:
        return 0
    names = COLUMNS[1:]
    sql = f"INSERT INTO {TABLE} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
    path = Path(path)
    with _LOCK:
        connection = _connection(path)
        try:
            connection.execute("BEGIN IMMEDIATE")  # take the write lock now: waits, never deadlocks
            connection.executemany(sql, rows)
            connection.execute("COMMIT")
        except sqlite3.Error:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
    return len(rows)


def close_all() -> None:
    """Close this process's log connections (tests, or before the log file is moved)."""
    with _LOCK:
        for key in [k for k in _CONNECTIONS if k[0] == os.getpid()]:
            _CONNECTIONS.pop(key).close()


def read(path: str | Path, category: str | None = None, since: datetime | str | None = None,
         limit: int | None = None) -> pd.DataFrame:
    """The log's records in insertion order, one column each (:data:`COLUMNS`; ``time`` as
    UTC timestamps): of ``category`` only, at or after ``since`` (an aware datetime or ISO
    text), the last ``limit`` of them. A missing file is an error naming it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prediction log {path} does not exist (monitor.log; written by "
                                "bridgenet predict and the served model)")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    where, args = [], []
    if category is not None:
        where.append("category = ?")
        args.append(category)
    if since is not None:
        where.append("time >= ?")
        args.append(format_time(since))
    if limit is not None:
        args.append(limit)
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    try:
        present = _columns(connection)  # an earlier schema's log read before any writer added its columns
        names = ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS)
        sql = f"SELECT {names} FROM {TABLE}" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY id DESC" + (" LIMIT ?" if limit is not None else "")
        rows = connection.execute(sql, args).fetchall()
    except sqlite3.Error as exc:
        raise ValueError(f"{path}: not a readable prediction log ({exc})") from None
    finally:
        connection.close()
    table = pd.DataFrame(rows[::-1], columns=list(COLUMNS))
    table["time"] = pd.to_datetime(table["time"], utc=True, format="ISO8601")
    return table.astype({"score": float, "threshold": float, **{column: float for column in ADDED_COLUMNS}})
