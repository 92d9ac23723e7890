"""Flow: data.root -> cached network-ready arrays in data.cache_dir."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS, Params
from flows.common import IO_BACKOFF, IO_RETRIES, cli, retry_transient


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def preprocess_task(params: Params, category: str | None = None) -> dict[str, Any]:
    """Preprocess every category of data.categories, or only ``category``."""
    summary = stages.preprocess(params, category)
    get_run_logger().info("preprocess: %s", {k: summary[k] for k in ("written", "reused", "failed", "removed")})
    return summary


@flow(name="preprocess")
def preprocess_flow(params_file: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict[str, Any]:
    """Preprocess every sample of data.root once (re-runs reuse unchanged entries)."""
    return preprocess_task(stages.load(params_file, overrides or []))


if __name__ == "__main__":
    cli(preprocess_flow)
