"""The prediction log: schema, append and read, concurrent writers, failures that never fail a prediction."""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from bridgenet.config import DEFAULT_PARAMS, load_params
from bridgenet.monitor import log
from bridgenet.monitor.records import ModelOrigin, array_digest, prediction_record, write_records

ORIGIN = ModelOrigin("bridgenet-bagel", "3", "d" * 64)


def record(category: str = "bagel", score: float = 0.2, status: str = "ok", source: str = "predict"):
    anomalous = None if status == "error" else score > 0.5
    return prediction_record(category, 0.5, ORIGIN, ("r" * 64, "x" * 64), source, status,
                             None if status == "error" else score, anomalous,
                             "refused" if status == "error" else None)


def test_the_table_has_the_documented_columns_in_wal_mode(tmp_path):
    path = tmp_path / "monitor" / "log.sqlite"
    assert log.append(path, [record()]) == 1
    with sqlite3.connect(path) as db:
        columns = [(row[1], row[2]) for row in db.execute("PRAGMA table_info(predictions)")]
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert columns == [("id", "INTEGER"), ("time", "TEXT"), ("category", "TEXT"), ("model", "TEXT"),
                       ("version", "TEXT"), ("model_digest", "TEXT"), ("rgb_digest", "TEXT"),
                       ("xyz_digest", "TEXT"), ("score", "REAL"), ("verdict", "TEXT"), ("status", "TEXT"),
                       ("message", "TEXT"), ("threshold", "REAL"), ("source", "TEXT"), ("brightness", "REAL"),
                       ("missing_points", "REAL")]
    assert [t for t in tables if not t.startswith("sqlite_")] == ["predictions"]


V1_SCHEMA = """CREATE TABLE predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, category TEXT NOT NULL, model TEXT, version TEXT,
    model_digest TEXT, rgb_digest TEXT, xyz_digest TEXT, score REAL, verdict TEXT, status TEXT NOT NULL,
    message TEXT, threshold REAL, source TEXT NOT NULL); PRAGMA user_version = 1;"""


def test_a_log_from_before_brightness_is_read_and_gains_the_columns_when_written(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA)
        db.execute("INSERT INTO predictions (time, category, score, verdict, status, threshold, source) "
                   "VALUES ('2026-01-01T00:00:00.000000+00:00', 'bagel', 0.3, 'good', 'ok', 0.5, 'predict')")
    old = log.read(path)  # read as it is: no writer has opened it yet
    assert list(old.columns) == list(log.COLUMNS) and old[["brightness", "missing_points"]].isna().all(axis=None)
    with sqlite3.connect(path) as db:
        assert "brightness" not in {row[1] for row in db.execute("PRAGMA table_info(predictions)")}
    new = prediction_record("bagel", 0.5, ORIGIN, (None, None), "predict", "ok", 0.2, False, brightness=0.42,
                            missing_points=0.03)
    log.append(path, [new])
    log.close_all()
    table = log.read(path)
    assert len(table) == 2 and np.isnan(table["brightness"].iloc[0]) and table["brightness"].iloc[1] == 0.42
    assert np.isnan(table["missing_points"].iloc[0]) and table["missing_points"].iloc[1] == pytest.approx(0.03)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == log.SCHEMA_VERSION == 3


def test_a_log_with_brightness_but_not_missing_points_keeps_its_values_and_gains_the_column(tmp_path):
    path = tmp_path / "v2.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(V1_SCHEMA.replace("source TEXT NOT NULL)", "source TEXT NOT NULL, brightness REAL)")
                         .replace("user_version = 1", "user_version = 2"))
        db.execute("INSERT INTO predictions (time, category, score, verdict, status, threshold, source, brightness) "
                   "VALUES ('2026-01-01T00:00:00.000000+00:00', 'bagel', 0.3, 'good', 'ok', 0.5, 'predict', 0.4)")
    assert log.read(path)["brightness"].tolist() == [0.4]
    log.append(path, [prediction_record("bagel", 0.5, ORIGIN, (None, None), "serve", "ok", 0.2, False,
                                        brightness=0.5, missing_points=0.1)])
    log.close_all()
    table = log.read(path)
    assert table["brightness"].tolist() == [0.4, 0.5]
    assert np.isnan(table["missing_points"].iloc[0]) and table["missing_points"].iloc[1] == pytest.approx(0.1)


def test_read_filters_by_category_time_and_count(tmp_path):
    path = tmp_path / "log.sqlite"
    log.append(path, [record("bagel", 0.1), record("cookie", 0.9), record("bagel", 0.7),
                      record("bagel", status="error", source="serve")])
    table = log.read(path)
    assert list(table.columns) == list(log.COLUMNS) and len(table) == 4
    assert list(table["id"]) == sorted(table["id"]) and str(table["time"].dt.tz) == "UTC"
    assert list(table["verdict"].fillna("-")) == ["good", "defect", "defect", "-"]
    bagel = log.read(path, category="bagel")
    assert list(bagel["score"].fillna(-1)) == [0.1, 0.7, -1] and set(bagel["category"]) == {"bagel"}
    assert list(log.read(path, category="bagel", limit=2)["status"]) == ["ok", "error"]
    error = table.iloc[-1]
    assert error["message"] == "refused" and np.isnan(error["score"]) and error["source"] == "serve"
    later = datetime.now(timezone.utc) + timedelta(seconds=1)
    assert log.read(path, since=later).empty
    assert len(log.read(path, since=(later - timedelta(hours=1)).isoformat())) == 4
    with pytest.raises(ValueError, match="no time zone"):
        log.read(path, since=datetime(2025, 1, 1))
    with pytest.raises(FileNotFoundError, match="missing.sqlite"):
        log.read(tmp_path / "missing.sqlite")


def test_a_record_refuses_unknown_statuses_and_sources():
    with pytest.raises(ValueError, match="status must be one of"):
        record(status="fine")
    with pytest.raises(ValueError, match="source must be one of"):
        record(source="batch")


def _append_many(path: str, tag: str, n: int, start) -> None:
    start.wait()
    for i in range(n):  # one transaction each: the most contention
        log.append(path, [prediction_record(tag, 0.5, ORIGIN, (str(i), None), "serve", "ok", i / n, False)])


def test_two_processes_appending_at_once_lose_no_record(tmp_path):
    path = tmp_path / "log.sqlite"
    log.append(path, [record("warm-up")])  # this process's connection must not leak into the children
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=_append_many, args=(str(path), tag, 200, start)) for tag in ("a", "b")]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0, 0]
    table = log.read(path)
    for tag in ("a", "b"):
        assert sorted(table.loc[table["category"] == tag, "rgb_digest"].astype(int)) == list(range(200))
    assert len(table) == 401 and table["id"].is_unique


def test_an_unwritable_log_warns_once_naming_it_and_the_error(tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    path = blocker / "log.sqlite"
    with caplog.at_level(logging.DEBUG, logger="bridgenet.monitor.records"):
        assert write_records(path, [record()]) is False
        assert write_records(path, [record()]) is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0].getMessage()
    assert "NotADirectoryError" in warnings[0].getMessage() or "FileExistsError" in warnings[0].getMessage()
    not_a_database = tmp_path / "junk.sqlite"
    not_a_database.write_bytes(b"junk" * 1000)
    with caplog.at_level(logging.WARNING, logger="bridgenet.monitor.records"):
        assert write_records(not_a_database, [record()]) is False
    assert "DatabaseError" in caplog.records[-1].getMessage()
    assert write_records(None, [record()]) is True  # logging off


def test_array_digests_are_of_the_bytes():
    import hashlib

    rgb = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    assert array_digest(rgb) == hashlib.sha256(rgb.tobytes()).hexdigest()
    assert array_digest(rgb[:, ::-1]) == hashlib.sha256(rgb[:, ::-1].tobytes()).hexdigest()


def test_write_cost_is_well_under_a_millisecond_per_record(tmp_path):
    import time

    path = tmp_path / "log.sqlite"
    log.append(path, [record()])
    start = time.perf_counter()
    for _ in range(100):
        log.append(path, [record()])
    assert (time.perf_counter() - start) / 100 < 0.02  # measured ~0.2 ms on a busy 2-core machine


def test_logging_a_model_keeps_mlflow_s_input_example_out_of_the_log(tmp_path, monkeypatch):
    """MLflow scores the input example while a model is logged: not a prediction of the line."""
    from types import SimpleNamespace

    import mlflow

    from bridgenet.paths import NO_LOG_ENV, prediction_log
    from bridgenet.tracking import pyfunc

    params = load_params(DEFAULT_PARAMS)

    def logging_off() -> bool:
        return prediction_log(params) is None

    seen = []
    monkeypatch.setattr(pyfunc, "_log_model", lambda *args: seen.append(logging_off()))
    monkeypatch.setattr(mlflow, "active_run", lambda: SimpleNamespace(info=SimpleNamespace(run_id="run")))
    model = tmp_path / "model.pt"
    model.write_bytes(b"weights")
    monkeypatch.delenv(NO_LOG_ENV, raising=False)
    pyfunc.log_pyfunc_model(model, pyfunc.PyfuncSpec(code=tmp_path / "serve.py", signature=None, pip_requirements=[]))
    assert seen == [True] and not logging_off()
