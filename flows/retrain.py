"""Flow: the whole retraining run, every category: preprocess -> train -> evaluate -> register -> promote.

Categories are independent (own seed, MLflow run and output folder); one
category's failure does not stop the others, and the flow run ends failed
with a message naming each failed category and its error.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import categories_of, cli, resolve
from flows.evaluate import evaluate_task, report_task
from flows.preprocess import preprocess_task
from flows.register import promote_task, register_task
from flows.train import train_task


class CategoriesFailed(RuntimeError):
    """Some categories failed; the message names each with its error."""


def _outcome(future: PrefectFuture) -> tuple[bool, Any]:
    future.wait()
    state = future.state
    if state.is_completed():
        return True, future.result()
    try:
        future.result()
    except Exception as exc:  # noqa: BLE001 - any task error is this category's failure
        return False, f"{type(exc).__name__}: {exc}"
    return False, f"ended in state {state.name}"


@flow(name="retrain", task_runner=ThreadPoolTaskRunner(max_workers=1))
def retrain_flow(
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    with_registry: bool = True,
) -> dict[str, Any]:
    """Retrain, evaluate, register and gate every category of data.root."""
    logger = get_run_logger()
    overrides = overrides or []
    params = resolve(params_file, overrides)
    preprocess_task(params_file, overrides)
    chains: dict[str, PrefectFuture] = {}
    for category in categories_of(params, categories):
        trained = train_task.submit(params_file, overrides, category)
        last = evaluate_task.submit(params_file, overrides, category, wait_for=[trained])
        if with_registry:
            last = register_task.submit(params_file, overrides, category, wait_for=[last])
            last = promote_task.submit(params_file, overrides, category, wait_for=[last])
        chains[category] = last
    results, failures = {}, {}
    for category, future in chains.items():
        ok, value = _outcome(future)
        (results if ok else failures)[category] = value
    if results:
        results["report"] = report_task(params_file, overrides, [c for c in chains if c in results])
    for category, error in failures.items():
        logger.error("category %s failed: %s", category, error)
    if failures:
        raise CategoriesFailed("; ".join(f"category {c} failed: {e}" for c, e in failures.items()))
    return results


if __name__ == "__main__":
    cli(retrain_flow, with_category=True)
