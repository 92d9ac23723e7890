"""Flow: a preview sheet of the synthetic anomalies training uses, logged to MLflow."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task

from flows.common import IO_BACKOFF, IO_RETRIES, categories_of, cli, resolve, retry_transient


@task
def render_preview(params_file: str, overrides: list[str], category: str) -> str | None:
    from bridgenet.tracking.figures import anomaly_preview_png

    params = resolve(params_file, overrides, category)
    path = Path(params.train.models_dir) / category / "anomaly_preview.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    written = anomaly_preview_png(params, category, path)
    get_run_logger().info("%s: anomaly preview %s", category, written)
    return None if written is None else str(written)


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def log_preview(params_file: str, overrides: list[str], category: str, path: str) -> str:
    import mlflow

    from bridgenet.tracking.runs import configure_tracking

    params = resolve(params_file, overrides, category)
    configure_tracking(params)
    with mlflow.start_run(run_name=f"anomaly-preview-{category}", tags={"stage": "generate_anomalies",
                                                                        "category": category}) as run:
        mlflow.log_artifact(path, artifact_path="anomaly_preview")
    return run.info.run_id


@flow(name="generate_anomalies")
def generate_anomalies_flow(
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    log_to_mlflow: bool = True,
) -> dict[str, str | None]:
    """Render (and log) a preview of generated training anomalies, RGB and depth, per category."""
    overrides = overrides or []
    out: dict[str, str | None] = {}
    for category in categories_of(resolve(params_file, overrides), categories):
        path = render_preview(params_file, overrides, category)
        if path and log_to_mlflow:
            log_preview(params_file, overrides, category, path)
        out[category] = path
    return out


if __name__ == "__main__":
    cli(generate_anomalies_flow, with_category=True)
