"""Shared fixtures: a tiny synthetic data set, rendered and preprocessed once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridgenet.config import Params, load_params

REPO = Path(__file__).resolve().parents[1]

TINY_OVERRIDES = (
    "synth.categories=[bagel, cookie]",
    "data.categories=[bagel, cookie]",
    "synth.image_size=128",
    "synth.n_train=12",
    "synth.n_validation=4",
    "synth.n_test_good=4",
    "synth.n_test_per_defect=2",
    "synth.preview=false",
    "data.image_size=96",
    "model.embed_dim=64",
    "model.dsc_hidden=64",
    "model.map_smoothing_sigma=2.0",
    "train.epochs=3",
    "train.batch_size=6",
    "train.lr_discriminator=0.001",
    "train.lr_projection=0.0005",
    "train.validation_anomalies_per_good=1",
    "eval.aupro_thresholds=200",
    "promotion.min_image_auroc=0",  # tiny models may score near chance; the floor has its own tests
    "promotion.max_fpr_at_threshold=1",  # ... and 4 good test parts give coarse rates; so have the limits
    "promotion.min_recall_at_threshold=0",
)


def tiny_params(root: Path, *extra: str) -> Params:
    """Params for the tiny data set under ``root`` (data, cache, models, reports, mlflow)."""
    return load_params(
        REPO / "params.yaml",
        [
            *TINY_OVERRIDES,
            f"synth.out={root / 'synth'}",
            f"data.root={root / 'synth'}",
            f"data.cache_dir={root / 'cache'}",
            f"train.models_dir={root / 'models'}",
            f"eval.reports_dir={root / 'reports'}",
            f"monitor.log={root / 'reports' / 'monitor' / 'predictions.sqlite'}",
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
            f"feedback.root={root / 'feedback'}",
            *extra,
        ],
    )


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """Rendered and preprocessed tiny data set; tests must not modify it."""
    from bridgenet.data.synth.dataset import synthesize
    from bridgenet.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("tiny")
    params = tiny_params(root)
    synthesize(params.synth, Path(params.synth.out))
    run_preprocess(params)
    return root


@pytest.fixture(scope="session")
def prefect_api_url():
    """One temporary Prefect server for the whole session (its URL, for subprocesses too)."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    # Its SQLite migrations take about 37 s on a quiet 2-core machine with a fresh venv,
    # beyond the harness's default 30 s; telemetry only adds writes that lock the database.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=300):
            yield PREFECT_API_URL.value()


def train_tiny_bagel(tiny_root: Path, out: Path, *extra: str):
    """(params, summary, TrainedModel): bagel trained 8 epochs on the tiny set into ``out``,
    ``extra`` overrides on top."""
    from bridgenet.model.io import load_model
    from bridgenet.train import train_category

    params = tiny_params(tiny_root, "train.epochs=8", *extra)
    summary = train_category(params, "bagel", out_dir=out)
    return params, summary, load_model(out / "model.pt")


@pytest.fixture(scope="session")
def trained_bagel(tiny_root, tmp_path_factory):
    """(params, summary, TrainedModel): bagel trained 8 epochs on the tiny set, once per session."""
    return train_tiny_bagel(tiny_root, tmp_path_factory.mktemp("trained"))
