"""What every flow shares: retry policy, worker set-up, a small command line.

Flows load the params once (:func:`bridgenet.stages.load`) and hand each task the
resolved value it needs (:func:`bridgenet.stages.resolve`), never a path to re-read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from prefect.tasks import exponential_backoff

from bridgenet.config import DEFAULT_PARAMS, ConfigError

logger = logging.getLogger(__name__)

# Tasks retry what fails outside the tracking store (reading and writing data files) with
# exponential backoff, on transient errors only: a bad sample or a wrong parameter fails at
# once. Calls to the store retry on their own (tracking.retries); what they give up on is
# final here (bridgenet.tracking.retry says who retries what).
IO_RETRIES = 2
IO_BACKOFF = exponential_backoff(backoff_factor=2)


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: the project's one rule, :func:`bridgenet.tracking.retry.is_transient`."""
    from bridgenet.tracking.retry import is_transient

    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classified by the one rule
        return is_transient(exc)
    return False


# The module every Dask worker should preload (``dask worker ... --preload``).
WORKER_PRELOAD = "flows.dask_preload"


def restore_malloc_defaults() -> bool:
    """Undo, inside a Dask worker, what Dask's ``MALLOC_TRIM_THRESHOLD_`` does to glibc.

    Distributed's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``; glibc
    then stops adapting its mmap threshold, so every tensor above 128 KiB is a fresh
    ``mmap`` paid for in page faults. A training epoch took 10.9 s in a worker against
    4.2 s in a plain process (one thread, 40 samples). Fixed heap thresholds of 32 MiB
    (mmap) and 512 MiB (trim) bring it back to 3.9 s. No-op outside glibc or Dask.
    Workers run it at start-up through the preload module ``flows.dask_preload``.
    """
    import ctypes
    import os

    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 32 * 1024**2) and libc.mallopt(m_trim_threshold, 512 * 1024**2))


def bind_worker_resources(n_workers: int) -> str:
    """Share this machine between ``n_workers`` concurrent category tasks.

    With CUDA, each Dask worker takes one device (by worker index); on the CPU the
    cores are split so that workers do not oversubscribe them. Returns a description.
    """
    import os

    import torch

    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not inside a Dask worker
        return "in-process"
    worker_name = str(worker.name)
    preloaded = any(preload.name == WORKER_PRELOAD for preload in worker.preloads)
    # A remote worker started without the preload: fix it now, and say how to start it.
    if not preloaded and restore_malloc_defaults():
        logger.warning("Dask worker %s was started without '--preload %s'; its malloc setting was "
                       "undone only now, after the tasks it ran before", worker_name, WORKER_PRELOAD)
    if torch.cuda.is_available():
        index = (int(worker_name) if worker_name.isdigit() else abs(hash(worker_name))) % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return f"worker {worker_name}: cuda:{index}"
    threads = max(1, (os.cpu_count() or 1) // max(1, n_workers))
    torch.set_num_threads(threads)
    return f"worker {worker_name}: {threads} CPU threads"


def cli(flow: Callable[..., Any], with_category: bool = False, argv: Sequence[str] | None = None) -> None:
    """``python -m flows.X [--params FILE] [--set k=v ...] [--category C ...]`` runs the flow."""
    parser = argparse.ArgumentParser(prog=f"python -m {flow.__module__}", description=flow.__doc__)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    if with_category:
        parser.add_argument("--category", "-c", action="append", default=None)
    args = parser.parse_args(argv)
    kwargs: dict[str, Any] = {"params_file": args.params, "overrides": args.overrides}
    if with_category:
        kwargs["categories"] = args.category
    try:
        result = flow(**kwargs)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    print(json.dumps(result, indent=2, default=str))
