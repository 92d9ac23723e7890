"""Flow: the whole retraining run, every category fanned out on a task runner.

Per category: preprocess -> train -> evaluate -> register -> promote, then one
report over the categories that finished. Categories are independent (own
seed, MLflow run and output folder), so they run in parallel on a Dask cluster
(``dask.n_workers`` > 1 or ``dask.address``) with the same results as one after
the other. One category's failure does not stop the others; the flow run ends
failed with a message naming each failed category and its error.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

from bridgenet import stages
from bridgenet.config import DEFAULT_PARAMS
from flows.common import WORKER_PRELOAD, cli
from flows.evaluate import evaluate_task, report_task
from flows.preprocess import preprocess_task
from flows.register import promote_task, register_task
from flows.train import train_task


class CategoriesFailed(RuntimeError):
    """Some categories failed; the message names each with its error."""


def task_runner_for(n_workers: int, address: str | None) -> Any:
    """A Dask runner (existing cluster at ``address`` or a temporary local one), or in-process."""
    if address is None and n_workers <= 1:
        return ThreadPoolTaskRunner(max_workers=1)
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    # One single-threaded process per worker: torch threads are set per task; the preload
    # undoes the nanny's malloc setting as each worker starts.
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1,
                                          "processes": True, "dashboard_address": None,
                                          "preload": [WORKER_PRELOAD]})


def _outcome(chain: list[PrefectFuture]) -> tuple[bool, Any]:
    """(True, last result) when the whole chain completed, else (False, the first error)."""
    for future in chain:
        future.wait()
    for future in chain:
        if future.state.is_completed():
            continue
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - any task error is this category's failure
            return False, f"{type(exc).__name__}: {exc}"
        return False, f"ended in state {future.state.name}"
    return True, chain[-1].result()


# Called directly, the flow runs categories one after another: torch's thread count and
# seeding are per process, so categories must not share a process concurrently.
@flow(name="retrain", task_runner=ThreadPoolTaskRunner(max_workers=1))
def retrain_flow(
    params_file: str = str(DEFAULT_PARAMS),
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    with_registry: bool = True,
) -> dict[str, Any]:
    """Preprocess, train, evaluate, register and gate every category of data.root."""
    logger = get_run_logger()
    params = stages.load(params_file, overrides or [])
    n_workers = 1 if params.dask.address is None and params.dask.n_workers <= 1 else params.dask.n_workers
    if with_registry:
        # Create the tracking store and experiment once, before workers write to it.
        from bridgenet.tracking.store import configure_tracking

        configure_tracking(params)
    chains: dict[str, list[PrefectFuture]] = {}
    limit = {"timeout_seconds": params.schedule.task_timeout_minutes * 60}  # a hung task fails its category
    for category in stages.categories(params, categories):
        run = stages.resolve(params, category)  # travels with each task, to any worker
        chain = [preprocess_task.with_options(**limit).submit(params, category)]
        chain.append(train_task.with_options(**limit).submit(run, n_workers=n_workers, wait_for=chain[-1:]))
        chain.append(evaluate_task.with_options(**limit).submit(run, wait_for=chain[-1:]))
        if with_registry:
            chain.append(register_task.with_options(**limit).submit(run, wait_for=chain[-1:]))
            chain.append(promote_task.with_options(**limit).submit(run, wait_for=chain[-1:]))
        chains[category] = chain
    results, failures = {}, {}
    for category, chain in chains.items():
        ok, value = _outcome(chain)
        (results if ok else failures)[category] = value
    if results:
        results["report"] = report_task(params, [c for c in chains if c in results])
    for category, error in failures.items():
        logger.error("category %s failed: %s", category, error)
    if failures:
        raise CategoriesFailed("; ".join(f"category {c} failed: {e}" for c, e in failures.items()))
    return results


def run_retrain(
    params_file: str = str(DEFAULT_PARAMS),
    overrides: list[str] | None = None,
    categories: list[str] | None = None,
    with_registry: bool = True,
) -> dict[str, Any]:
    """Run :func:`retrain_flow` on the task runner that ``dask.*`` in the params asks for."""
    params = stages.load(params_file, overrides or [])
    runner = task_runner_for(params.dask.n_workers, params.dask.address)
    return retrain_flow.with_options(task_runner=runner)(
        params_file=params_file, overrides=overrides or [], categories=categories, with_registry=with_registry
    )


if __name__ == "__main__":
    cli(run_retrain, with_category=True)
