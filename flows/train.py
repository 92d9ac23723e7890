"""Flow: train one model per category (CUDA when present, CPU otherwise)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task

from flows.common import bind_worker_resources, categories_of, cli, resolve
from flows.generate_anomalies import render_preview


@task
def train_task(
    params_file: str, overrides: list[str], category: str, resume: bool = False, n_workers: int = 1
) -> dict[str, Any]:
    from bridgenet.tracking.summary import save_train_summary
    from bridgenet.train import train_category

    get_run_logger().info("%s: %s", category, bind_worker_resources(n_workers))
    params = resolve(params_file, overrides, category)
    summary = train_category(params, category, resume=resume)
    save_train_summary(summary, summary["model_path"].rsplit("/", 1)[0])
    get_run_logger().info("%s: best epoch %s, validation %s, %.1f s/epoch", category, summary["best_epoch"],
                          summary["validation"], summary["seconds_per_epoch"])
    summary.pop("history")
    return summary


@flow(name="train")
def train_flow(
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Train each category; also renders its generated-anomaly preview next to the model."""
    overrides = overrides or []
    results = {}
    for category in categories_of(resolve(params_file, overrides), categories):
        results[category] = train_task(params_file, overrides, category, resume)
        render_preview(params_file, overrides, category)
    return results


if __name__ == "__main__":
    cli(train_flow, with_category=True)
