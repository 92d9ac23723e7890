"""The retry policy: which failures are transient, and the one layer that retries them.

:func:`is_transient` is the project's only rule for "worth trying again": no
connection, a timeout, an I/O error of a kind that passes (``EIO``, ``EAGAIN``,
``ESTALE`` ...), a SQLite store busy with another writer, or a tracking server's
429 / 503 / 504 answer. A missing file, a refused permission, a bad parameter or a
damaged sample are not.

Who retries what, so that no failure is retried by two layers at once:

- Calls to the tracking store retry here, in :func:`call_tracking`: ``tracking.retries``
  more tries with exponential backoff (``tracking.retry_delay_s * 2**k``), only the call
  that failed is repeated (a retried registration would log a second run and version),
  and then :class:`TrackingUnavailableError` names the URI. MLflow's own HTTP retries are
  turned off (:func:`only_our_http_retries`), so this is the only policy for the store.
- Prefect tasks (``flows/``) retry with the same rule (``flows.common.retry_transient``)
  for what fails outside the store: reading and writing data files. A
  :class:`TrackingUnavailableError` is final for them: :func:`is_transient` says False
  for it, since the tries it stands for were already spent here.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, TypeVar

from mlflow.exceptions import MlflowException

from bridgenet.config import TrackingConfig

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

# MLflow's own HTTP layer retries 7 times with backoff (minutes against a dead server)
HTTP_RETRY_ENV = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
# 503, 429 and 504 answers map to these; also a server's own "try later" codes
_TRANSIENT_CODES = frozenset({
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "DEADLINE_EXCEEDED",
})
# I/O errors that pass on their own: a busy or stale network file system, an interrupted call
_TRANSIENT_ERRNOS = frozenset({
    errno.EAGAIN,
    errno.EBUSY,
    errno.EINTR,
    errno.EIO,
    errno.ESTALE,
    errno.ETIMEDOUT,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EHOSTUNREACH,
})


class TrackingUnavailableError(RuntimeError):
    """The tracking store did not answer after every configured try."""


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it was raised from) may pass if the same call is made again.

    Transient: connection errors and timeouts (``requests``' too), an ``OSError`` whose errno
    is one of :data:`_TRANSIENT_ERRNOS`, MLflow's "try later" codes and its wrapped failed
    HTTP requests, a locked or busy SQLite database. Never a :class:`TrackingUnavailableError`
    (its retries are spent), nor anything that has one in its chain.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, TrackingUnavailableError):
            return False
        if _transient_alone(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _transient_alone(exc: BaseException) -> bool:
    """:func:`is_transient` for ``exc`` itself, not the errors it was raised from."""
    import requests

    if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    if isinstance(exc, MlflowException):
        if exc.error_code in _TRANSIENT_CODES:
            return True
        # rest_utils wraps a failed HTTP request in a plain MlflowException
        if "failed with exception" in exc.message and (
            "Connection" in exc.message or "Max retries exceeded" in exc.message
        ):
            return True
    # SQLite under concurrent writers (parallel category tasks), raw or as SQLAlchemy wraps it
    if "database is locked" in str(exc):
        return True
    return _is_operational_error(exc) and ("locked" in str(exc) or "busy" in str(exc))


def _is_operational_error(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return True
    try:
        from sqlalchemy.exc import OperationalError
    except ImportError:  # an MLflow without SQL stores
        return False
    return isinstance(exc, OperationalError)


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
                    f"{what}: {error_text(exc)}"
                ) from exc
            delay = cfg.retry_delay_s * 2**attempt
            LOGGER.warning(
                "MLflow %s failed (try %d/%d): %s; retrying in %.2f s",
                what,
                attempt + 1,
                tries,
                error_text(exc),
                delay,
            )
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def only_our_http_retries(uri: str) -> None:
    """Turn MLflow's own HTTP request retries off for an ``http(s)://`` ``uri``
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` unless already set in the environment)."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault(HTTP_RETRY_ENV, "0")


def error_text(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, cut to ``limit`` characters (for logs, tags and journals)."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
