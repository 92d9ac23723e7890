"""Flows: register trained models in MLflow as challengers, and the promotion gate."""

from __future__ import annotations

import json
from pathlib import Path
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
def register_task(params_file: str, overrides: list[str], category: str) -> dict[str, Any]:
    from bridgenet.register import run_register

    result = run_register(resolve(params_file, overrides, category), [category])[category]
    get_run_logger().info("%s: registered %s version %s", category, result["model_name"], result["version"])
    return result


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def promote_task(params_file: str, overrides: list[str], category: str) -> dict[str, Any]:
    from bridgenet.promote import run_promote

    result = run_promote(resolve(params_file, overrides, category), [category])[category]
    get_run_logger().info("%s: promotion %s", category, result.get("decision"))
    return result


@flow(name="register")
def register_flow(
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    promote: bool = True,
) -> dict[str, Any]:
    """Register each category's model as challenger, then run the promotion gate."""
    overrides = overrides or []
    results = {}
    for category in categories_of(resolve(params_file, overrides), categories):
        results[category] = {"register": register_task(params_file, overrides, category)}
        if promote:
            results[category]["promote"] = promote_task(params_file, overrides, category)
        record = Path(resolve(params_file, overrides).eval.reports_dir) / "registry" / f"{category}.json"
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(results[category], indent=2, default=str) + "\n")
    return results


@flow(name="promote")
def promote_flow(
    params_file: str = "params.yaml", overrides: list[str] | None = None, categories: list[str] | None = None
) -> dict[str, Any]:
    """Promotion gate only: challenger vs champion on the same evaluation data."""
    overrides = overrides or []
    return {c: promote_task(params_file, overrides, c)
            for c in categories_of(resolve(params_file, overrides), categories)}


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "promote":
        cli(promote_flow, with_category=True, argv=sys.argv[2:])
    else:
        cli(register_flow, with_category=True)
