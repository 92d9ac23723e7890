"""The pipeline's stages, each a function of one category's resolved params.

    preprocess -> train -> evaluate -> register -> promote     per category
    report                                                      over the categories

This is the layer the command line (:mod:`bridgenet.cli`), the Prefect flows
(:mod:`flows`) and therefore the DVC stages call; nothing above it applies
``category_overrides`` or reads ``params.yaml`` again. :func:`resolve` makes a
category's params once (``params.yaml``, ``--set`` overrides, then
``category_overrides.<category>`` merged in) as a :class:`CategoryParams`: a frozen,
picklable value that travels with a task to a Dask worker, so a worker never re-reads
a parameter file from a path relative to where it happens to run.

The test split is scored once per model: :func:`evaluate` stores its result keyed by
the fingerprints of the model file and of the test split, and :func:`register` and
:func:`promote` read it (scoring again only a registered model whose stored
evaluation is for other data). Figures are drawn once, where their data is made.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridgenet import paths
from bridgenet.config import DEFAULT_PARAMS, Params, load_params

if TYPE_CHECKING:
    from bridgenet.model.summary import TrainSummary

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class CategoryParams:
    """One category and its params with ``category_overrides[category]`` merged in (by :func:`resolve`)."""

    category: str
    params: Params

    @property
    def model_dir(self) -> Path:
        return paths.model_dir(self.params, self.category)


def load(params_file: str | Path = DEFAULT_PARAMS, overrides: Sequence[str] = ()) -> Params:
    """The run's params: ``params_file`` with ``section.key=value`` overrides (validated)."""
    return load_params(params_file, list(overrides))


def resolve(params: Params, category: str) -> CategoryParams:
    """``category``'s params: its ``category_overrides`` merged into ``params``, once."""
    return CategoryParams(category, params.for_category(category))


class UnknownCategoryError(ValueError):
    """A requested category is in neither the data nor the preprocessing cache; names the known ones."""


def categories(params: Params, requested: Sequence[str] | None = None) -> list[str]:
    """``requested`` (each one known: in ``data.root`` or ``data.cache_dir``), else
    ``data.categories`` (checked to exist), else every category of ``data.root``."""
    from bridgenet.data.readers import DataError, discover_categories

    try:
        found = discover_categories(params.data)
    except DataError:
        if not requested:
            raise
        found = []
    if not requested:
        return found
    cache = Path(params.data.cache_dir)
    known = sorted({*found, *(p.name for p in cache.iterdir() if p.is_dir())} if cache.is_dir() else set(found))
    unknown = [c for c in requested if c not in known]
    if unknown:
        where = f"none (nothing under data.root={params.data.root} or data.cache_dir={cache})"
        raise UnknownCategoryError(f"unknown {'categories' if len(unknown) > 1 else 'category'} "
                                   f"{', '.join(unknown)}; known: {', '.join(known) or where}")
    return list(requested)


# ------------------------------------------------------------------ stages
def preprocess(params: Params, category: str | None = None) -> dict[str, Any]:
    """``data.root`` -> ``data.cache_dir`` for every category, or only ``category``; the work counts."""
    from bridgenet.preprocess import run_preprocess

    if category is not None:
        params = params.model_copy(update={"data": params.data.model_copy(update={"categories": (category,)})})
    return run_preprocess(params)


def train(run: CategoryParams, resume: bool = False) -> TrainSummary:
    """Train ``run.category``; write ``model.pt``, ``train_summary.json`` and the anomaly preview.

    Returns the training summary (history included).
    """
    from bridgenet.model.summary import save_train_summary
    from bridgenet.train import train_category

    summary = train_category(run.params, run.category, out_dir=run.model_dir, resume=resume)
    save_train_summary(summary, run.model_dir)
    anomaly_preview(run)
    return summary


def anomaly_preview(run: CategoryParams) -> Path | None:
    """Draw the validation set's generated anomalies beside ``model.pt``; None when it has none."""
    from bridgenet.training.validation import write_anomaly_preview

    path = paths.anomaly_preview_file(run.params, run.category)
    written = write_anomaly_preview(run.params, run.category, path)
    if written is None:
        path.unlink(missing_ok=True)  # not one drawn with earlier params
    return written


def evaluate(run: CategoryParams) -> dict[str, float]:
    """Score ``run.category``'s test split once; write ``reports/categories/<category>/``; its metrics."""
    from bridgenet.evaluate import evaluate_to_folder

    return evaluate_to_folder(run.params, run.category).metrics


def report(params: Params, names: Sequence[str]) -> dict[str, Any]:
    """Merge the categories' evaluate outputs into ``eval.reports_dir``; returns metrics.json's content.

    Each category's folder is where its own (resolved) params put it.
    """
    from bridgenet.evaluate import aggregate_reports

    folders = {name: paths.category_reports_dir(resolve(params, name).params, name) for name in names}
    return aggregate_reports(paths.reports_dir(params), folders)


def register(run: CategoryParams, repo_root: Path | str = ".",
             lineage: dict[str, str] | None = None) -> dict[str, Any]:
    """Log ``run.category``'s model to MLflow and register it as challenger (with a model card)."""
    from bridgenet.register import register_category

    result = register_category(run.params, run.category, repo_root, lineage)
    LOGGER.info("%s: registered %s version %s", run.category, result["model_name"], result["version"])
    return result


def promote(run: CategoryParams) -> dict[str, Any]:
    """The promotion gate of ``run.category``: challenger vs champion on the current test split."""
    from bridgenet.promote import promote_category

    return promote_category(run.params, run.category)
