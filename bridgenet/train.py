"""Training one BridgeNet model per category on good samples only: the epochs, checkpoints and summary.

Model selection and the decision threshold use the validation split (its good
samples plus texture anomalies drawn with a fixed seed), never the test split.
The parts live in :mod:`bridgenet.training`: the trainer and its steps
(:mod:`~bridgenet.training.trainer`), the negatives and the loss, the validation set and
the finish step (calibration and thresholds, :mod:`~bridgenet.training.finish`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bridgenet import inference, paths
from bridgenet.config import Params
from bridgenet.data.batch import resolve_device
from bridgenet.data.cache import load_cached_split
from bridgenet.model.contract import CHECKPOINT_FORMAT, ModelMeta, TrainedModel
from bridgenet.model.io import (
    read_checkpoint,
    remove_interrupted_writes,
    save_checkpoint,
    save_model,
)
from bridgenet.model.scorers import DISCRIMINATOR
from bridgenet.model.summary import TrainSummary
from bridgenet.training.finish import finish
from bridgenet.training.trainer import Trainer
from bridgenet.training.validation import ValidationSet, build_validation_set, validation_metrics

LOGGER = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, Any]], None]


class TrainingError(RuntimeError):
    """A run that did not learn (no step, a loss that is not finite); ``model.pt`` is left as it was."""


def steps_per_epoch(n_samples: int, batch_size: int, max_samples_per_epoch: int) -> int:
    """Optimisation steps of one epoch: batches of at least two samples (BatchNorm needs two)."""
    used = min(n_samples, max_samples_per_epoch)
    return used // batch_size + (1 if used % batch_size >= 2 else 0)


def check_steps(params: Params, category: str, n_samples: int) -> None:
    """Refuse a run that would take no optimisation step, naming what to change.

    train.batch_size and train.max_samples_per_epoch are at least 2 (config), so only
    a category with fewer than two training samples gives no step.
    """
    tcfg = params.train
    if steps_per_epoch(n_samples, tcfg.batch_size, tcfg.max_samples_per_epoch) > 0:
        return
    raise TrainingError(
        f"{category}: {n_samples} training sample(s) in {params.data.cache_dir}; a step needs "
        "at least 2 (BatchNorm), so nothing would be trained: add training samples"
    )


def modalities_with_a_signal(params: Params, category: str, foreground: np.ndarray) -> Params:
    """``params`` for a category whose training scans show no object above the support plane
    (``foreground`` (N, S, S) all False): RGB alone.

    Such scans (a part flatter than ``data.plane_distance``, a sensor that gave no point
    cloud, a flat stand-in for one) give an all-zero depth image (:mod:`bridgenet.data.depth`),
    so a depth branch has nothing to learn and its memory distances only add noise to the
    fused score (docs/benchmarks.md, "Without point clouds"). The model then trains on RGB
    alone, says so in a warning and in its params; a depth-only model is refused.
    """
    modalities = params.model.modalities
    if "depth" not in modalities or foreground.any():
        return params
    if modalities == ("depth",):
        raise TrainingError(
            f"{category}: no training scan in {params.data.cache_dir} shows an object above the support "
            f"plane (data.plane_distance {params.data.plane_distance} m), so the depth image is empty and a "
            "depth-only model has nothing to learn: train with model.modalities=[rgb] or check the point clouds"
        )
    LOGGER.warning("%s: no training scan shows an object above the support plane, so the depth image is "
                   "empty: training on RGB alone (model.modalities %s -> [rgb])", category, list(modalities))
    return params.model_copy(update={"model": params.model.model_copy(update={"modalities": ("rgb",)})})


def fast_start_graph(model: TrainedModel) -> bytes | None:
    """The model's traced graph, saved in model.pt so that ``bridgenet predict`` starts without
    timm; None (and a warning: predict then builds the network, a second slower) if tracing fails."""
    from bridgenet.export import traced_graph

    try:
        return traced_graph(model)
    except (RuntimeError, TypeError, ValueError) as err:
        LOGGER.warning("%s: model saved without its traced graph (%s); predict will build the network",
                       model.category, err)
        return None


def train_category(
    params: Params,
    category: str,
    out_dir: Path | None = None,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
) -> TrainSummary:
    """Train ``category``; write ``model.pt`` (best validation epoch) and ``checkpoint.pt`` (last epoch).

    Returns the run's :class:`TrainSummary`: best epoch, validation metrics, thresholds,
    history and timings.
    """
    previous_threads = torch.get_num_threads()
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    try:
        return _train_category(params, category, out_dir, resume, on_epoch)
    finally:
        torch.set_num_threads(previous_threads)  # no side effect on the caller's process


@dataclass
class _Progress:
    """Where the epoch loop stands: the records so far, the best epoch (and its weights), the next epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": -1, "val_score": -np.inf, "state": None})
    next_epoch: int = 0


def _train_category(
    params: Params, category: str, out_dir: Path | None, resume: bool, on_epoch: EpochCallback | None
) -> TrainSummary:
    tcfg = params.train
    out_dir = Path(out_dir) if out_dir is not None else paths.model_dir(params, category)
    checkpoint_path, model_path = out_dir / paths.CHECKPOINT_FILE, out_dir / paths.MODEL_FILE
    for stale in remove_interrupted_writes(out_dir):
        LOGGER.warning("removed %s, left by an interrupted write", stale)
    device = resolve_device(tcfg.device)
    train_split = load_cached_split(params.data.cache_dir, category, "train", params.data)
    check_steps(params, category, len(train_split))
    params = modalities_with_a_signal(params, category, train_split.foreground)
    val_split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    started = time.perf_counter()
    trainer = Trainer(params, train_split, device)
    validation = build_validation_set(val_split, params, trainer.modalities)
    setup_seconds = time.perf_counter() - started

    progress = _resumed(trainer, checkpoint_path, category) if resume else _Progress()
    bar = tqdm(range(progress.next_epoch, tcfg.epochs), desc=f"train {category}", unit="epoch",
               initial=progress.next_epoch, total=tcfg.epochs)
    for epoch in bar:
        record = _epoch(trainer, validation, epoch, category, (model_path, checkpoint_path))
        progress.history.append(record)
        if record["val_score"] > progress.best["val_score"]:
            progress.best = {"epoch": epoch, "val_score": record["val_score"], "state": trainer.state()["network"]}
        bar.set_postfix(loss=f"{record.get('loss', float('nan')):.3f}", val=f"{record['val_score']:.3f}",
                        best=progress.best["epoch"])
        save_checkpoint({"params": params.to_dict(), "category": category, "epoch": epoch,
                         "trainer": trainer.state(), "history": progress.history, "best": progress.best},
                        checkpoint_path)
        if on_epoch is not None:
            on_epoch(record)

    if progress.best["state"] is None:
        raise TrainingError(
            f"{category}: no epoch was trained to a finite validation score "
            f"(history {[h.get('val_score') for h in progress.history]}); {model_path} is left as it was"
        )
    trainer.network.load_state_dict(progress.best["state"], strict=False)
    done = finish(trainer.network, validation, device, params.eval.batch_size, tcfg.threshold_quantile)
    meta = ModelMeta(category=category, params=params, threshold=done.threshold,
                     pixel_threshold=done.pixel_threshold,
                     foreground_fraction=float(train_split.foreground.reshape(len(train_split), -1).any(1).mean()),
                     epoch=progress.best["epoch"], metrics=done.metrics)
    model = TrainedModel(trainer.network.cpu(), meta)
    save_model(model, model_path, progress.history, graph=fast_start_graph(model))
    epoch_times = [h["epoch_seconds"] for h in progress.history]
    LOGGER.info("trained %s: best epoch %s, validation %s, threshold %.4f",
                category, progress.best["epoch"], done.metrics, done.threshold)
    return TrainSummary(
        category=category, model_path=str(model_path), best_epoch=progress.best["epoch"], epochs=tcfg.epochs,
        threshold=done.threshold, pixel_threshold=done.pixel_threshold, validation=done.metrics,
        history=progress.history, setup_seconds=setup_seconds,
        seconds_per_epoch=float(np.mean(epoch_times)) if epoch_times else 0.0, train_samples=len(train_split),
        device=str(device), scorer=model.scorer.name, memory=trainer.memory_info, calibration=done.calibration,
    )


def _resumed(trainer: Trainer, checkpoint_path: Path, category: str) -> _Progress:
    """The progress stored in ``checkpoint_path``, loaded into ``trainer``; none without the file."""
    if not checkpoint_path.is_file():
        LOGGER.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint_path)
        return _Progress()
    checkpoint = read_checkpoint(checkpoint_path, CHECKPOINT_FORMAT)
    if checkpoint["params"] != trainer.params.to_dict():
        raise ValueError(f"{checkpoint_path}: made with other params; resume needs the same params")
    trainer.load_state(checkpoint["trainer"])
    LOGGER.info("resuming %s from epoch %d", category, checkpoint["epoch"] + 1)
    return _Progress(checkpoint["history"], checkpoint["best"], checkpoint["epoch"] + 1)


def _epoch(trainer: Trainer, validation: ValidationSet, epoch: int, category: str,
           untouched: tuple[Path, Path]) -> dict[str, Any]:
    """Train one epoch and validate it; a loss or score that is not finite stops the run
    (``untouched``: the files it leaves as they were, named in the error)."""
    tick = time.perf_counter()
    losses = trainer.epoch()
    train_seconds = time.perf_counter() - tick
    kept = f"{untouched[0]} and {untouched[1]} are left as they were"
    if not math.isfinite(losses.get("loss", math.nan)):
        raise TrainingError(f"{category}: epoch {epoch} loss is {losses.get('loss', 'missing (no step)')} "
                            f"({losses}); {kept}")
    # Epochs are chosen on the discriminator alone: the memory bank does not change with them.
    scored = inference.score(trainer.network, validation.batch, trainer.device, trainer.params.eval.batch_size,
                             DISCRIMINATOR)
    record = {"epoch": epoch, **losses, **validation_metrics(scored.scores, scored.maps, validation),
              "epoch_seconds": train_seconds}
    if not math.isfinite(record["val_score"]):
        raise TrainingError(f"{category}: epoch {epoch} validation score is {record['val_score']} (the network "
                            f"scores are not finite); {kept}")
    return record
