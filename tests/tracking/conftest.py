"""Session fixtures for the MLflow tests: a tiny synthetic data set, trained models, a registry.

Built once per test session: synth (96 px, 2 categories) + preprocess (64 px),
two 2-epoch models, and a deliberately worse model whose discriminator outputs
a constant (its tail weights are zero and it scores with the discriminator alone:
every score is 0.5, so image AUROC is 0.5). A 0-epoch model (random heads) is *not* reliably worse on a 13-sample
test split, which is why the constant model is used for the promotion test.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from bridgenet.config import Params, apply_overrides, params_from_dict

CATEGORIES = ("bagel", "dowel")
SYNTH = [
    "synth.image_size=96",
    "synth.n_train=8",
    "synth.n_validation=4",
    "synth.n_test_good=3",
    "synth.n_test_per_defect=2",
    f"synth.categories=[{','.join(CATEGORIES)}]",
    "synth.preview=false",
]


def make_params(root: Path, *overrides: str) -> Params:
    """Embedded defaults (not the project's params.yaml) + the tiny set-up + ``overrides``."""
    base = [
        f"data.root={root / 'data'}",
        f"data.cache_dir={root / 'cache'}",
        "data.image_size=64",
        "model.embed_dim=64",
        "model.dsc_hidden=64",
        "train.epochs=2",
        "train.device=cpu",
        "eval.aupro_thresholds=200",
        "eval.heatmap_samples=2",
        f"eval.reports_dir={root / 'reports'}",
        f"monitor.log={root / 'reports' / 'monitor' / 'predictions.sqlite'}",
        f"train.models_dir={root / 'models_good'}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        f"feedback.root={root / 'feedback'}",
        "tracking.retry_delay_s=0.01",
        "tracking.retries=1",
        "tracking.create=true",
        # 2-epoch models on 13 test samples score near chance: no quality floor for the first champion
        "promotion.min_image_auroc=0",
        # ... and 3 good test parts make an FPR of 0, 1/3, 2/3 or 1: the threshold limits have their own tests
        "promotion.max_fpr_at_threshold=1",
        "promotion.min_recall_at_threshold=0",
        *SYNTH,
    ]
    return params_from_dict(apply_overrides({}, [*base, *overrides]), source="tests/tracking")


@dataclass
class Tiny:
    """The session's data set: ``params(*overrides)`` gives Params rooted at ``root``."""

    root: Path

    def params(self, *overrides: str) -> Params:
        return make_params(self.root, *overrides)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # The test machine's cores are shared; one thread avoids oversubscription.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _restore_mlflow_uris():
    """configure_tracking sets MLflow's process-wide URIs (and their env vars, inherited by
    subprocesses); put them back after each test so no test talks to another's store."""
    import os

    import mlflow

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    env = {name: os.environ.get(name) for name in names}
    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Tiny:
    from bridgenet.data.synth.dataset import synthesize
    from bridgenet.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("tracking")
    params = make_params(root)
    synthesize(params.synth, root / "data", workers=1)
    run_preprocess(params)
    return Tiny(root)


@pytest.fixture(scope="session")
def good_models(tiny: Tiny) -> Path:
    """models_good/<cat>/{model.pt, train_summary.json}: 2 epochs each."""
    from bridgenet.model.summary import save_train_summary
    from bridgenet.train import train_category

    params = tiny.params()
    for category in CATEGORIES:
        summary = train_category(params, category)
        save_train_summary(summary, Path(params.train.models_dir) / category)
    return Path(params.train.models_dir)


@pytest.fixture(scope="session")
def constant_models(tiny: Tiny, good_models: Path) -> Path:
    """models_constant/bagel/model.pt: the good model with a zeroed discriminator tail (no summary json)."""
    from bridgenet.model.io import load_model, read_checkpoint, save_model

    source = good_models / "bagel" / "model.pt"
    model = load_model(source)
    with torch.no_grad():
        model.network.discriminator.tail.weight.zero_()
    # Scored by the discriminator alone, or the memory head would still tell defects apart.
    model = model.with_meta(params=params_from_dict(apply_overrides(model.params.to_dict(),
                                                                    ["model.scorer=discriminator"])))
    model.network.scorer = "discriminator"
    target = tiny.root / "models_constant" / "bagel" / "model.pt"
    save_model(model, target, read_checkpoint(source)["history"])
    return target.parent.parent


@pytest.fixture(scope="session")
def registry(tiny: Tiny, good_models: Path) -> dict[str, Any]:
    """A SQLite store with both categories registered from models_good and promoted (champion = v1)."""
    from bridgenet import stages

    params = tiny.params(
        f"tracking.uri=sqlite:///{tiny.root / 'registry' / 'mlflow.db'}",
        f"eval.reports_dir={tiny.root / 'registry' / 'reports'}",
    )
    runs = [stages.resolve(params, category) for category in CATEGORIES]
    registered = {run.category: stages.register(run, repo_root=tiny.root) for run in runs}
    promoted = {run.category: stages.promote(run) for run in runs}
    return {"params": params, "registered": registered, "promoted": promoted}


# ------------------------------------------------------------ processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll ``url`` until it answers 200; fail with the process's output if it dies or times out."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode(errors="replace") if process.stdout else ""
            raise RuntimeError(
                f"server exited with {process.returncode} before {url} answered:\n{output[-3000:]}"
            )
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_process(process: subprocess.Popen) -> None:
    """Terminate the process group this test started (its leader is ``process``)."""
    import os
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)  # the group also holds the server's workers
    except ProcessLookupError:
        pass
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)
    if process.stdout:
        process.stdout.close()


def pytest_collection_modifyitems(config, items):
    """MLflow's SQLAlchemy store warns about its own loader options; not ours to fix."""
    here = Path(__file__).parent
    mark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(mark)
