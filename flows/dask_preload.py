"""Dask worker preload: undo the nanny's glibc malloc setting once, when the worker starts.

The local cluster of ``bridgenet pipeline`` loads it by itself; workers of a remote
cluster need ``dask worker ADDRESS --preload flows.dask_preload``. See
:func:`flows.common.restore_malloc_defaults` for why.
"""

from __future__ import annotations

from typing import Any

from flows.common import restore_malloc_defaults


def dask_setup(worker: Any) -> None:
    """Called by distributed in the worker process before it takes tasks."""
    restore_malloc_defaults()
