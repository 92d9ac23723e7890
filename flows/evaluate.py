"""Flows: evaluate categories on their test split, and aggregate the reports."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import (
    IO_BACKOFF,
    IO_RETRIES,
    categories_of,
    cli,
    resolve,
    retry_transient,
)


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def evaluate_task(params_file: str, overrides: list[str], category: str) -> dict[str, Any]:
    from bridgenet.evaluate import evaluate_to_folder

    doc = evaluate_to_folder(resolve(params_file, overrides), category)
    get_run_logger().info("%s: %s", category, doc["categories"][category])
    return doc["categories"][category]


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def report_task(params_file: str, overrides: list[str], categories: list[str]) -> dict[str, Any]:
    from bridgenet.evaluate import aggregate_reports

    doc = aggregate_reports(resolve(params_file, overrides), categories)
    get_run_logger().info("mean over %d categories: %s", len(categories), doc["mean"])
    return doc


@flow(name="evaluate")
def evaluate_flow(
    params_file: str = "params.yaml", overrides: list[str] | None = None, categories: list[str] | None = None
) -> dict[str, Any]:
    """Score each category's test split at the ground truth's resolution (reports/categories/<cat>)."""
    overrides = overrides or []
    return {c: evaluate_task(params_file, overrides, c)
            for c in categories_of(resolve(params_file, overrides), categories)}


@flow(name="report")
def report_flow(
    params_file: str = "params.yaml", overrides: list[str] | None = None, categories: list[str] | None = None
) -> dict[str, Any]:
    """Merge per-category results into reports/metrics.json, metrics.md and the curves."""
    overrides = overrides or []
    return report_task(params_file, overrides, categories_of(resolve(params_file, overrides), categories))


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "report":
        cli(report_flow, with_category=True, argv=sys.argv[2:])
    else:
        cli(evaluate_flow, with_category=True)
