"""Categories fanned out on a local Dask cluster through Prefect."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from flows.retrain import CategoriesFailed, retrain_flow, task_runner_for
from tests.conftest import tiny_params

pytestmark = pytest.mark.slow
CATEGORIES = ["bagel", "cookie"]


def _params_file(root: Path, data_root: Path, n_workers: int) -> str:
    params = tiny_params(root, f"data.root={data_root}", "train.epochs=2", "train.threads=1",
                         f"dask.n_workers={n_workers}")
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    return str(path)


def _run(root: Path, data_root: Path, n_workers: int):
    params_file = _params_file(root, data_root, n_workers)
    runner = task_runner_for(n_workers, None)
    return retrain_flow.with_options(task_runner=runner)(params_file=params_file, return_state=True)


def _metrics(root: Path, category: str) -> dict:
    return json.loads((root / "reports" / "categories" / category / "metrics.json").read_text())


def _champion_runs(root: Path) -> dict[str, str]:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = {}
    for category in CATEGORIES:
        try:
            version = client.get_model_version_by_alias(f"bridgenet-{category}", "champion")
        except Exception:  # noqa: BLE001, S112 - no such model or alias
            continue
        runs[category] = client.get_run(version.run_id).info.run_id
    return runs


def test_two_workers_give_the_sequential_results(tiny_root, tmp_path, prefect_api_url):
    data_root = tiny_root / "synth"
    sequential = _run(tmp_path / "seq", data_root, 1)
    parallel = _run(tmp_path / "par", data_root, 2)
    assert sequential.is_completed() and parallel.is_completed()
    for category in CATEGORIES:
        # Equal up to float summation order: workers and the flow process may use other thread counts.
        seq, par = _metrics(tmp_path / "seq", category), _metrics(tmp_path / "par", category)
        assert seq["categories"][category] == pytest.approx(par["categories"][category], rel=1e-5)
    assert set(_champion_runs(tmp_path / "par")) == set(CATEGORIES)
    assert set(_champion_runs(tmp_path / "seq")) == set(CATEGORIES)


def test_a_corrupt_file_fails_its_category_only(tiny_root, tmp_path, prefect_api_url):
    data_root = tmp_path / "data"
    shutil.copytree(tiny_root / "synth", data_root)
    broken = min((data_root / "cookie" / "train" / "good" / "rgb").glob("*.png"))
    broken.write_bytes(broken.read_bytes()[:100])  # truncated PNG
    state = _run(tmp_path / "run", data_root, 2)
    assert state.is_failed()
    with pytest.raises(CategoriesFailed) as info:
        state.result()
    message = str(info.value)
    assert "category cookie failed" in message and str(broken) in message
    assert "bagel" not in message
    assert set(_champion_runs(tmp_path / "run")) == {"bagel"}


def test_dask_malloc_setting_is_undone_only_where_dask_made_it(monkeypatch):
    import platform

    from flows.common import restore_malloc_defaults

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert restore_malloc_defaults() is False  # a plain process keeps glibc's own tuning
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # what Dask's nanny exports to workers
    assert restore_malloc_defaults() is (platform.libc_ver()[0] == "glibc")


def _large_malloc_is_mmapped() -> bool:
    """Whether glibc serves a 1 MiB ``malloc`` with a fresh mmap (what the nanny's setting causes)."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
            "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblks
    block = libc.malloc(1 << 20)
    mmapped = libc.mallinfo2().hblks > before
    libc.free(block)
    return mmapped


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_local_cluster_workers_start_with_the_malloc_setting_undone():
    from distributed import Client, LocalCluster

    from flows.common import bind_worker_resources

    kwargs = dict(task_runner_for(2, None).cluster_kwargs, n_workers=1)
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        assert list(client.run(_large_malloc_is_mmapped).values()) == [False]
    # The control: a plain Dask worker keeps the nanny's setting, and mmaps the block.
    kwargs.pop("preload")
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        assert list(client.run(_large_malloc_is_mmapped).values()) == [True]
        # ... until the training task's own check finds no preload and undoes it there.
        assert client.submit(bind_worker_resources, 2, pure=False).result().startswith("worker ")
        assert list(client.run(_large_malloc_is_mmapped).values()) == [False]
