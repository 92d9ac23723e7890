"""Flow: train one model per category (CUDA when present, CPU otherwise)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS
from flows.common import bind_worker_resources, cli


@task
def train_task(run: stages.CategoryParams, resume: bool = False, n_workers: int = 1) -> dict[str, Any]:
    """Train one category; its model, summary and generated-anomaly preview land in its model folder."""
    logger = get_run_logger()
    logger.info("%s: %s", run.category, bind_worker_resources(n_workers))
    summary = stages.train(run, resume=resume)
    logger.info("%s: best epoch %s, validation %s, %.1f s/epoch", run.category, summary.best_epoch,
                summary.validation, summary.seconds_per_epoch)
    return {k: v for k, v in summary.to_dict().items() if k != "history"}  # it stays in train_summary.json


@flow(name="train")
def train_flow(
    params_file: str = str(DEFAULT_PARAMS),
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train each category; also renders its generated-anomaly preview next to the model."""
    params = stages.load(params_file, overrides or [])
    return {c: train_task(stages.resolve(params, c), resume) for c in stages.categories(params, categories)}


if __name__ == "__main__":
    cli(train_flow, with_category=True)
