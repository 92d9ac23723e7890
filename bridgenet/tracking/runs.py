"""Run logging: one MLflow run per category's training, from a :class:`TrainingRunRecord`.

The register stage (:mod:`bridgenet.register`) builds the record once from what training
and evaluation left on disk; :func:`log_training_run` logs all of it in one pass and marks
the run ended (:func:`end_run_as`), journalling it when the store does not answer
(:mod:`bridgenet.tracking.journal`). Every call to the store goes through
:func:`bridgenet.tracking.retry.call_tracking`.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bridgenet.config import Params, TrackingConfig
from bridgenet.files import write_json
from bridgenet.tracking.journal import END_REASON_TAG, note_unfinished_run
from bridgenet.tracking.pyfunc import PyfuncSpec
from bridgenet.tracking.retry import TrackingUnavailableError, call_tracking, error_text
from bridgenet.tracking.store import configure_tracking, tracking_client

if TYPE_CHECKING:
    from bridgenet.model.summary import TrainSummary

LOGGER = logging.getLogger(__name__)
_MAX_BATCH = 1000  # MLflow's limit on metrics + params + tags per log_batch call
_SUMMARY_SCALARS = ("best_epoch", "threshold", "seconds_per_epoch", "setup_seconds", "train_samples")


@dataclass(frozen=True)
class TrainingRunRecord:
    """Everything one category's training run logs, built in one place (:mod:`bridgenet.register`).

    ``summary``: the training summary (:class:`bridgenet.model.summary.TrainSummary`). ``evaluation``: the test results, anything with
    ``metrics``, ``per_defect`` and ``per_family`` mappings, ``at_threshold()``,
    ``data_fingerprint`` and ``defects`` / ``decisions`` (a
    :class:`bridgenet.evaluate.CategoryEvaluation`). ``figures``: name -> PNG file, logged
    under ``figures/`` (``roc``, ``pro``, ``heatmaps``, ``defect_auroc``, ``training_curves``,
    ``anomaly_preview``). ``records``: files logged under ``evaluation/`` (the stored
    evaluation). ``datasets``: the data read, each ``name``, ``source``, ``digest`` and
    ``context`` (``training`` or ``test``). ``trained_params``: the params the model was
    trained with, logged as the run's params. Raises FileNotFoundError naming a missing
    model file or figure.
    """

    category: str
    trained_params: Params
    model_file: Path
    pyfunc: PyfuncSpec
    summary: TrainSummary
    evaluation: Any
    lineage: Mapping[str, str]
    figures: Mapping[str, Path] = field(default_factory=dict)
    records: tuple[Path, ...] = ()
    datasets: tuple[Mapping[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_file", Path(self.model_file))
        object.__setattr__(self, "figures", {k: Path(v) for k, v in self.figures.items()})
        object.__setattr__(self, "records", tuple(Path(p) for p in self.records))
        object.__setattr__(self, "datasets", tuple(self.datasets))
        if not self.model_file.is_file():
            raise FileNotFoundError(f"model file {self.model_file} does not exist")
        for name, path in self.figures.items():
            if not path.is_file():
                raise FileNotFoundError(f"figure {name!r}: file {path} does not exist")
        contexts = [d["context"] for d in self.datasets]
        if sorted(set(contexts)) != sorted(contexts) or not set(contexts) <= {"training", "test"}:
            raise ValueError(f"datasets of {self.category}: one 'training' and one 'test' at most, "
                             f"got contexts {contexts}")

    def dataset(self, context: str) -> Mapping[str, str] | None:
        """The dataset read as ``context`` (``training`` or ``test``), or None."""
        return next((d for d in self.datasets if d["context"] == context), None)


@dataclass(frozen=True)
class LoggedTrainingRun:
    """What :func:`log_training_run` created: the run and its logged pyfunc model."""

    run_id: str
    experiment_id: str
    model_uri: str
    model_id: str
    name: str = ""  # the run's readable name (:func:`run_name`)
    user: str = ""


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def epoch_metrics(history: list[Mapping[str, Any]], timestamp_ms: int) -> list[Metric]:
    """One MLflow metric per numeric history entry, ``step`` = epoch (losses and validation metrics)."""
    out = []
    for record in history:
        step = int(record["epoch"])
        out.extend(
            Metric(key, float(value), timestamp_ms, step)
            for key, value in record.items()
            if key != "epoch" and _finite(value)
        )
    return out


def evaluation_metrics(evaluation: Any, timestamp_ms: int, model_id: str | None = None,
                       dataset: Mapping[str, str] | None = None) -> list[Metric]:
    """Test metrics ``test_<key>``, ``test_auroc_defect_<type>``, ``test_auroc_family_<family>`` and
    ``test_at_threshold_<count or rate>``; of logged model ``model_id``, measured on ``dataset``."""
    values = {f"test_{k}": v for k, v in evaluation.metrics.items()}
    values.update({f"test_auroc_defect_{k}": v for k, v in evaluation.per_defect.items()})
    values.update({f"test_auroc_family_{k}": v for k, v in evaluation.per_family.items()})
    if hasattr(evaluation, "at_threshold"):  # the deployed decision's confusion counts and rates
        values.update({f"test_at_threshold_{k}": v for k, v in evaluation.at_threshold().items()})
    name, digest = (dataset["name"], _stored_digest(dataset)) if dataset else (None, None)
    # nan (undefined, e.g. no anomalous pixel) is stored as nan rather than dropped
    return [Metric(k, float(v), timestamp_ms, 0, model_id=model_id, dataset_name=name, dataset_digest=digest)
            for k, v in values.items() if v is not None]


def selected_epoch_metrics(summary: TrainSummary, timestamp_ms: int, model_id: str) -> list[Metric]:
    """The model file's own numbers (the selected epoch, scored as the file scores), of logged
    model ``model_id``: validation metrics as ``best_<key>``, ``best_epoch``, threshold, timings."""
    values = {f"best_{k}": v for k, v in summary.validation.items()}
    values.update({k: getattr(summary, k) for k in _SUMMARY_SCALARS if getattr(summary, k) is not None})
    return [Metric(k, float(v), timestamp_ms, 0, model_id=model_id) for k, v in values.items() if _finite(v)]


def _log_in_batches(
    cfg: TrackingConfig,
    client: MlflowClient,
    run_id: str,
    metrics: list[Metric] = (),
    params: list[Param] = (),
    tags: list[RunTag] = (),
) -> None:
    for start in range(0, len(metrics), _MAX_BATCH):
        call_tracking(cfg, client.log_batch, run_id, metrics=metrics[start : start + _MAX_BATCH])
    for start in range(0, len(params), 100):
        call_tracking(cfg, client.log_batch, run_id, params=params[start : start + 100])
    for start in range(0, len(tags), 100):
        call_tracking(cfg, client.log_batch, run_id, tags=tags[start : start + 100])


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:6000]


def run_tags(params: Params, record: TrainingRunRecord, name: str) -> dict[str, str]:
    """The run's tags: category, stage, readable name, description, lineage, device, user, source."""
    tags = {
        "category": record.category,
        "bridgenet.stage": "register",  # the stage that logs it (the model was trained before)
        "mlflow.runName": name,
        "mlflow.note.content": run_description(record.category, registered_name(params, record.category),
                                               record.summary, record.datasets),
        **record.lineage,
    }
    if record.summary.device:
        tags["device"] = record.summary.device
    tags.setdefault("mlflow.user", _user())
    tags.setdefault("mlflow.source.name", Path(sys.argv[0]).name or "python")
    tags.setdefault("mlflow.source.type", "LOCAL")
    return tags


def log_training_run(params: Params, record: TrainingRunRecord) -> LoggedTrainingRun:
    """One MLflow run for one category's training, with its evaluation and model.

    Logs: the flattened ``record.trained_params`` (``model.embed_dim`` ...) and the full
    ``params.yaml`` they make; per-epoch metrics of ``summary.history`` with
    ``step=epoch``; the final validation metrics (``best_<key>``) and timings of the
    summary, and the summary itself (``training/train_summary.json``); the test metrics of
    the evaluation (:func:`evaluation_metrics`); the ``figures`` under ``figures/``; the
    ``records`` under ``evaluation/``; lineage tags; the pyfunc model, named
    ``<registry.prefix>-<category>``, built from the model file as ``pyfunc`` describes it and
    holding the model file's validation metrics (``best_*``: the selected epoch, scored as
    the file scores), its threshold and the test metrics (with the test data set); the
    ``datasets`` as the run's inputs (the full digest as the input's ``sha256`` tag); the
    user and the command as the run's source; a readable name (:func:`run_name`) and a
    description.

    ``params`` give the tracking and registry settings. A failed run is marked FAILED and
    the error re-raised; tracking failures raise
    :class:`~bridgenet.tracking.retry.TrackingUnavailableError` after the configured retries.
    """
    from bridgenet.tracking import pyfunc as pyfunc_module

    cfg = params.tracking
    experiment_id = configure_tracking(params)
    client = tracking_client(params)
    name = run_name(record.category, record.lineage)
    tags = run_tags(params, record, name)
    run = call_tracking(cfg, client.create_run, experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    status = "FAILED"
    try:
        call_tracking(cfg, mlflow.start_run, run_id=run_id, nested=mlflow.active_run() is not None)
        # before any metric: MLflow links every metric already logged at the model's step (epoch 0's)
        # to it; the model file's validation metrics and the test metrics are linked to it below
        info = call_tracking(cfg, pyfunc_module.log_pyfunc_model, record.model_file, record.pyfunc,
                             registered_name(params, record.category))
        # the test split first: the run page shows the first input and "+1" for the others
        for dataset in sorted(record.datasets, key=lambda d: d["context"] != "test"):
            call_tracking(cfg, mlflow.log_input, _meta_dataset(dataset), context=dataset["context"],
                          tags={"sha256": str(dataset["digest"])})
        now = int(time.time() * 1000)
        metrics = epoch_metrics(list(record.summary.history), now)
        metrics += selected_epoch_metrics(record.summary, now, info.model_id)
        metrics += evaluation_metrics(record.evaluation, now, info.model_id, record.dataset("test"))
        flat = [Param(k, _param_value(v)) for k, v in sorted(record.trained_params.flat().items())]
        _log_in_batches(cfg, client, run_id, metrics=metrics, params=flat)
        with tempfile.TemporaryDirectory(prefix="bridgenet-run-") as tmp:
            config = Path(tmp) / "params.yaml"
            config.write_text(yaml.safe_dump(record.trained_params.to_dict(), sort_keys=False))
            call_tracking(cfg, client.log_artifact, run_id, str(config))
            summary = write_json(Path(tmp) / "train_summary.json", record.summary.to_dict(), indent=1)
            call_tracking(cfg, client.log_artifact, run_id, str(summary), "training")
        for path in record.figures.values():
            call_tracking(cfg, client.log_artifact, run_id, str(path), "figures")
        for path in record.records:
            call_tracking(cfg, client.log_artifact, run_id, str(path), "evaluation")
        status = "FINISHED"
    finally:
        end_run_as(params, run_id, status, "" if status == "FINISHED" else "logging the run failed")
    LOGGER.info("logged %s training run %s, model %s", record.category, run_id, info.model_uri)
    return LoggedTrainingRun(run_id, experiment_id, info.model_uri, info.model_id, name, tags["mlflow.user"])


def end_run_as(params: Params, run_id: str, status: str, reason: str) -> bool:
    """Mark ``run_id`` ended with ``status`` (tag ``bridgenet.end_reason``); journal it if unreachable."""
    cfg, client = params.tracking, tracking_client(params)
    try:
        if reason:
            call_tracking(cfg, client.set_tag, run_id, END_REASON_TAG, reason[:5000])
        call_tracking(cfg, _finish_run, client, run_id, status)
    except (TrackingUnavailableError, MlflowException) as exc:
        note_unfinished_run(params, run_id, status,
                            f"{reason} (then: {error_text(exc)})" if reason else error_text(exc))
        return False
    return True


def _finish_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End the fluent run ``run_id`` if it is active (popped even when this fails), else terminate it."""
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        mlflow.end_run(status)
    else:
        client.set_terminated(run_id, status)


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown"


def _stored_digest(dataset: Mapping[str, str]) -> str:
    """The digest as MLflow keeps it (36 characters); the full one is the input's ``sha256`` tag."""
    return str(dataset["digest"])[:36]


def _meta_dataset(dataset: Mapping[str, str]) -> Any:
    """A dataset as MLflow records it (name, source, digest cut to what MLflow keeps)."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "can be interpreted in multiple ways": a local path
        source = resolve_dataset_source(str(Path(dataset["source"]).resolve()))
    return MetaDataset(source, name=dataset["name"], digest=_stored_digest(dataset))


def registered_name(params: Params, category: str) -> str:
    """The name of a category's logged model and registered model: ``<registry.prefix>-<category>``."""
    return f"{params.registry.prefix}-{category}"


def run_name(category: str, lineage: Mapping[str, str], when: float | None = None) -> str:
    """A run's readable name: category, UTC date and time, short commit (``bagel 2025-06-01 14:03 1a2b3c4``)."""
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(when))
    commit = lineage.get("git.commit", "")
    short = commit[:7] if len(commit) >= 7 and all(c in "0123456789abcdef" for c in commit[:7]) else "no-git"
    dirty = "+dirty" if lineage.get("git.dirty") == "true" else ""
    return f"{category} {stamp} {short}{dirty}"


def _rounded(value: Any) -> Any:
    return f"{value:.3f}" if _finite(value) else value


def run_description(category: str, model: str, summary: TrainSummary,
                    datasets: Sequence[Mapping[str, str]]) -> str:
    """The run's description (its page's first text): what it holds and where its data came from."""
    data = "; ".join(f"{d['context']}: `{d['source']}`" for d in datasets) or "not recorded"
    return (
        f"BridgeNet model of **{category}**, trained by the train stage and logged by `bridgenet register`: "
        f"{summary.n_epochs} epochs (metrics per epoch, step = epoch), "
        f"the model file of the selected epoch {summary.best_epoch} as logged model "
        f"`{model}` with its validation and test metrics, test metrics (`test_*`, "
        f"`test_at_threshold_*` at the deployed threshold {_rounded(summary.threshold)}), figures and the "
        f"model card (`model_card.md`). Data: {data}."
    )
