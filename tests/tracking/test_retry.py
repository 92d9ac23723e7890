"""The retry policy: the one transient-error rule, the tracking calls' retries, and Prefect's use of the rule."""

from __future__ import annotations

import errno
import sqlite3
from types import SimpleNamespace

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from bridgenet.config import TrackingConfig
from bridgenet.tracking import retry
from bridgenet.tracking.retry import TrackingUnavailableError, call_tracking, is_transient


class Flaky:
    """Raises ``error`` on the first ``failures`` calls, then returns "ok"."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", recorded.append)
    return recorded


def test_transient_failures_are_retried_with_exponential_backoff(sleeps):
    cfg = TrackingConfig(uri="http://127.0.0.1:9", retries=3, retry_delay_s=0.5)
    flaky = Flaky(2, requests.ConnectionError("refused"))
    assert call_tracking(cfg, flaky) == "ok"
    assert flaky.calls == 3
    assert sleeps == [0.5, 1.0]


def test_gives_up_after_the_configured_tries_naming_the_uri(sleeps):
    cfg = TrackingConfig(uri="http://127.0.0.1:9", retries=2, retry_delay_s=0.1)
    flaky = Flaky(100, requests.ConnectionError("refused"))
    with pytest.raises(
        TrackingUnavailableError,
        match=r"MLflow tracking server at http://127\.0\.0\.1:9 unreachable after 3 tries",
    ):
        call_tracking(cfg, flaky)
    assert flaky.calls == 3
    assert sleeps == pytest.approx([0.1, 0.2])


@pytest.mark.parametrize(
    "error",
    [ValueError("bad value"), MlflowException("no such model", error_code=RESOURCE_DOES_NOT_EXIST),
     PermissionError(errno.EACCES, "denied"), FileNotFoundError(errno.ENOENT, "no such file")],
)
def test_other_errors_are_not_retried(sleeps, error):
    flaky = Flaky(1, error)
    with pytest.raises(type(error)):
        call_tracking(TrackingConfig(retries=5), flaky)
    assert flaky.calls == 1 and sleeps == []


def test_transient_classification():
    wrapped = MlflowException(
        "API request to http://127.0.0.1:9/api/2.0/mlflow/runs/create failed with "
        "exception HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded"
    )
    assert is_transient(wrapped)
    assert is_transient(MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE))
    assert is_transient(MlflowException("(sqlite3.OperationalError) database is locked"))
    assert is_transient(sqlite3.OperationalError("database table is locked"))
    assert is_transient(TimeoutError("read timed out"))
    try:
        raise RuntimeError("outer") from ConnectionRefusedError("refused")
    except RuntimeError as exc:
        assert is_transient(exc)
    assert not is_transient(MlflowException("bad param", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(sqlite3.OperationalError("no such table: runs"))


def test_io_errors_are_transient_by_kind_not_by_class():
    assert is_transient(OSError(errno.EIO, "Input/output error"))
    assert is_transient(OSError(errno.ESTALE, "Stale file handle"))
    assert is_transient(BlockingIOError(errno.EAGAIN, "try again"))
    # what another try cannot fix: a missing file, a refused permission, a full disk, a bad file
    assert not is_transient(FileNotFoundError(errno.ENOENT, "No such file or directory"))
    assert not is_transient(PermissionError(errno.EACCES, "Permission denied"))
    assert not is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_transient(OSError("cannot identify image file"))


def test_given_up_tracking_calls_are_final(sleeps):
    """The store's retries are spent once TrackingUnavailableError is raised: no layer retries it again."""
    cfg = TrackingConfig(uri="http://127.0.0.1:9", retries=1, retry_delay_s=0.1)
    with pytest.raises(TrackingUnavailableError) as raised:
        call_tracking(cfg, Flaky(100, requests.ConnectionError("refused")))
    assert is_transient(raised.value.__cause__)  # what it gave up on ...
    assert not is_transient(raised.value)  # ... is not retried again
    try:
        raise RuntimeError("register failed") from raised.value
    except RuntimeError as exc:
        assert not is_transient(exc)


class _State:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def result(self):
        if self.error is not None:
            raise self.error
        return "done"


def test_prefect_tasks_retry_by_the_same_rule():
    from flows.common import retry_transient

    cfg = TrackingConfig(uri="http://127.0.0.1:9")
    given_up = TrackingUnavailableError(f"MLflow tracking server at {cfg.uri} unreachable after 4 tries")
    given_up.__cause__ = requests.ConnectionError("refused")
    task = run = SimpleNamespace()
    errors = [OSError(errno.EIO, "Input/output error"), sqlite3.OperationalError("database is locked"),
              ConnectionResetError("reset"), given_up, FileNotFoundError(errno.ENOENT, "gone"),
              PermissionError(errno.EACCES, "denied"), ValueError("bad sample")]
    for error in errors:
        assert retry_transient(task, run, _State(error)) is is_transient(error), error
    assert not retry_transient(task, run, _State(given_up))  # the tracking calls retried it already
    assert not retry_transient(task, run, _State(None))
