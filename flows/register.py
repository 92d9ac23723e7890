"""Flows: register trained models in MLflow as challengers, and the promotion gate."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from bridgenet import paths, stages
from bridgenet.config import DEFAULT_PARAMS
from bridgenet.files import write_json
from flows.common import IO_BACKOFF, IO_RETRIES, cli, retry_transient


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def register_task(run: stages.CategoryParams) -> dict[str, Any]:
    result = stages.register(run)
    get_run_logger().info("%s: registered %s version %s", run.category, result["model_name"], result["version"])
    return result


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def promote_task(run: stages.CategoryParams) -> dict[str, Any]:
    result = stages.promote(run)
    get_run_logger().info("%s: promotion %s", run.category, result.get("decision"))
    return result


@flow(name="register")
def register_flow(
    params_file: str = str(DEFAULT_PARAMS),
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    promote: bool = True,
) -> dict[str, Any]:
    """Register each category's model as challenger, then run the promotion gate."""
    params = stages.load(params_file, overrides or [])
    results = {}
    for category in stages.categories(params, categories):
        run = stages.resolve(params, category)
        results[category] = {"register": register_task(run)}
        if promote:
            results[category]["promote"] = promote_task(run)
        write_json(paths.registry_result_file(params, category), results[category])
    return results


@flow(name="promote")
def promote_flow(
    params_file: str = str(DEFAULT_PARAMS), overrides: list[str] | None = None, categories: list[str] | None = None
) -> dict[str, Any]:
    """Promotion gate only: challenger vs champion on the same evaluation data."""
    params = stages.load(params_file, overrides or [])
    return {c: promote_task(stages.resolve(params, c)) for c in stages.categories(params, categories)}


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "promote":
        cli(promote_flow, with_category=True, argv=sys.argv[2:])
    else:
        cli(register_flow, with_category=True)
