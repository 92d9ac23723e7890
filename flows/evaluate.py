"""Flows: evaluate categories on their test split, and aggregate the reports."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS, Params
from flows.common import IO_BACKOFF, IO_RETRIES, cli, retry_transient


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def evaluate_task(run: stages.CategoryParams) -> dict[str, float]:
    metrics = stages.evaluate(run)
    get_run_logger().info("%s: %s", run.category, metrics)
    return metrics


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def report_task(params: Params, categories: list[str]) -> dict[str, Any]:
    doc = stages.report(params, categories)
    get_run_logger().info("mean over %d categories: %s", len(categories), doc["mean"])
    return doc


@flow(name="evaluate")
def evaluate_flow(
    params_file: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None, categories: list[str] | None = None
) -> dict[str, Any]:
    """Score each category's test split at the ground truth's resolution (reports/categories/<cat>)."""
    params = stages.load(params_file, overrides or [])
    return {c: evaluate_task(stages.resolve(params, c)) for c in stages.categories(params, categories)}


@flow(name="report")
def report_flow(
    params_file: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None, categories: list[str] | None = None
) -> dict[str, Any]:
    """Merge per-category results into reports/metrics.json, metrics.md and the curves."""
    params = stages.load(params_file, overrides or [])
    return report_task(params, stages.categories(params, categories))


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "report":
        cli(report_flow, with_category=True, argv=sys.argv[2:])
    else:
        cli(evaluate_flow, with_category=True)
