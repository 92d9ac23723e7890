"""Flow: render the embedded synthetic MVTec 3D-AD data set (synth.*)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS, SynthConfig
from flows.common import IO_BACKOFF, IO_RETRIES, cli, retry_transient


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def synthesize_task(synth: SynthConfig) -> dict[str, Any]:
    from bridgenet.data.synth.dataset import synthesize

    summary = synthesize(synth, Path(synth.out))
    get_run_logger().info("synthetic data in %s (%.1f s)", synth.out, summary.get("seconds", 0))
    return summary


@flow(name="synthesize")
def synthesize_flow(params_file: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None) -> dict[str, Any]:
    """Render the synthetic data set into synth.out."""
    return synthesize_task(stages.load(params_file, overrides or []).synth)


if __name__ == "__main__":
    cli(synthesize_flow)
