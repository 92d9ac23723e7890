"""Flow: a preview sheet of the synthetic anomalies training uses, logged to MLflow."""

from __future__ import annotations

from prefect import flow, get_run_logger, task

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS
from flows.common import IO_BACKOFF, IO_RETRIES, cli, retry_transient


@task
def render_preview(run: stages.CategoryParams) -> str | None:
    written = stages.anomaly_preview(run)
    get_run_logger().info("%s: anomaly preview %s", run.category, written)
    return None if written is None else str(written)


@task(retries=IO_RETRIES, retry_delay_seconds=IO_BACKOFF, retry_condition_fn=retry_transient)
def log_preview(run: stages.CategoryParams, path: str) -> str:
    import mlflow

    from bridgenet.tracking.store import configure_tracking

    configure_tracking(run.params)
    with mlflow.start_run(run_name=f"anomaly-preview-{run.category}",
                          tags={"stage": "generate_anomalies", "category": run.category}) as logged:
        mlflow.log_artifact(path, artifact_path="anomaly_preview")
    return logged.info.run_id


@flow(name="generate_anomalies")
def generate_anomalies_flow(
    params_file: str = str(DEFAULT_PARAMS),
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    log_to_mlflow: bool = True,
) -> dict[str, str | None]:
    """Render (and log) a preview of generated training anomalies, RGB and depth, per category."""
    params = stages.load(params_file, overrides or [])
    out: dict[str, str | None] = {}
    for category in stages.categories(params, categories):
        run = stages.resolve(params, category)
        path = render_preview(run)
        if path and log_to_mlflow:
            log_preview(run, path)
        out[category] = path
    return out


if __name__ == "__main__":
    cli(generate_anomalies_flow, with_category=True)
