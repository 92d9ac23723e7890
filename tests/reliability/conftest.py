"""Fixtures for the fault-injection tests: a small hand-made data set and models trained on it.

Every scene is a tilted table 0.5 m from the camera with a dome on it whose
top is 2 cm above the table, so the foreground's size depends on
``data.plane_distance`` (1.5 cm gives a much smaller one than 4 mm), and a
"flat" scene is the table alone (part missing): no foreground at all.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from bridgenet.config import Params, apply_overrides, params_from_dict

# autouse fixtures shared with the MLflow tests: one torch thread, MLflow URIs put back
from tests.tracking.conftest import _one_torch_thread, _restore_mlflow_uris  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
SIDE = 64
CATEGORIES = ("bagel", "cable")

def scene(seed: int, side: int = SIDE, flat: bool = False) -> np.ndarray:
    """xyz (side, side, 3): a tilted table with (unless ``flat``) a 2 cm dome on it."""
    rng = np.random.default_rng(seed)
    coords = np.linspace(-0.05, 0.05, side)
    x, y = np.meshgrid(coords, coords)
    z = 0.5 + 0.1 * x + rng.normal(0, 1e-4, (side, side))
    if not flat:
        r2 = (x - 0.004 * (seed % 3)) ** 2 + y**2
        z -= np.clip(0.02 * (1 - r2 / 0.025**2), 0, None)  # nearer the camera = above the table
    return np.stack([x, y, z], axis=-1).astype(np.float32)


def rgb_image(seed: int, side: int = SIDE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (side, side, 3), dtype=np.uint8)


def write_sample(root: Path, category: str, split: str, defect: str, stem: str, seed: int,
                 flat: bool = False) -> None:
    folder = root / category / split / defect
    for part in ("rgb", "xyz") + (("gt",) if split == "test" else ()):
        (folder / part).mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb_image(seed)).save(folder / "rgb" / f"{stem}.png")
    tifffile.imwrite(folder / "xyz" / f"{stem}.tiff", scene(seed, flat=flat))
    if split == "test":
        mask = np.zeros((SIDE, SIDE), np.uint8)
        if defect != "good":
            mask[28:36, 28:36] = 255
        Image.fromarray(mask).save(folder / "gt" / f"{stem}.png")


def write_dataset(root: Path, categories=CATEGORIES, n_train: int = 4) -> Path:
    for c, category in enumerate(categories):
        for i in range(n_train):
            write_sample(root, category, "train", "good", f"{i:03d}", seed=10 * c + i)
        for i in range(2):
            write_sample(root, category, "validation", "good", f"{i:03d}", seed=10 * c + 5 + i)
        write_sample(root, category, "test", "good", "000", seed=10 * c + 7)
        write_sample(root, category, "test", "hole", "000", seed=10 * c + 8)
        write_sample(root, category, "test", "hole", "001", seed=10 * c + 9)
    return root


def make_params(root: Path, *overrides: str) -> Params:
    """Embedded defaults, sized for seconds-long runs, everything under ``root``."""
    base = [
        f"data.root={root / 'data'}",
        f"data.cache_dir={root / 'cache'}",
        "data.image_size=32",
        "data.ransac_sample_points=500",
        "data.morph_kernel=3",
        "data.min_component_pixels=8",
        "model.embed_dim=16",
        "model.dsc_hidden=16",
        "model.map_smoothing_sigma=1.0",
        "train.epochs=1",
        "train.batch_size=2",
        "train.device=cpu",
        "train.validation_anomalies_per_good=1",
        f"train.models_dir={root / 'models'}",
        "eval.aupro_thresholds=100",
        "eval.heatmap_samples=1",
        f"eval.reports_dir={root / 'reports'}",
        f"monitor.log={root / 'reports' / 'monitor' / 'predictions.sqlite'}",
        f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
        "tracking.create=true",
        "tracking.retries=1",
        "tracking.retry_delay_s=0.01",
    ]
    return params_from_dict(apply_overrides({}, [*base, *overrides]), source="tests/reliability")


def write_params_file(params: Params, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(params.to_dict(), sort_keys=False))
    return path


def child_env() -> dict[str, str]:
    """Environment for a child Python: this checkout first on the path, one torch thread."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{path}" if path else str(REPO),
            "OMP_NUM_THREADS": "1"}


def run_child(code: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``args``); returns the result."""
    return subprocess.run([sys.executable, "-c", code, *args], env=child_env(), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative posix path -> digest)."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


@dataclass
class Small:
    """The session's data set and its trained models: ``params(*overrides)`` roots Params at ``root``."""

    root: Path

    def params(self, *overrides: str) -> Params:
        return make_params(self.root, *overrides)




@pytest.fixture(scope="session")
def small(tmp_path_factory) -> Small:
    """Data (2 categories), its cache and one model per category (1 epoch) with its summary."""
    from bridgenet.model.summary import save_train_summary
    from bridgenet.preprocess import run_preprocess
    from bridgenet.train import train_category

    root = tmp_path_factory.mktemp("reliability")
    write_dataset(root / "data")
    params = make_params(root)
    run_preprocess(params)
    for category in CATEGORIES:
        summary = train_category(params, category)
        save_train_summary(summary, Path(params.train.models_dir) / category)
    return Small(root)


def pytest_collection_modifyitems(config, items):
    """MLflow's SQLAlchemy store and tifffile warn about their own defaults; not ours to fix."""
    here = Path(__file__).parent
    marks = [pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning"),
             pytest.mark.filterwarnings(
                 "ignore:.*stored as RGB with contiguous samples:DeprecationWarning")]
    for item in items:
        if here in Path(str(item.fspath)).parents:
            for mark in marks:
                item.add_marker(mark)
