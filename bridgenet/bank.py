"""``bridgenet bank add``: new good parts join a trained model's memory bank, no retraining.

The inspection line meets good parts with an acceptable feature the training goods lacked
(a printed label, a new marking). Retraining takes the discriminator's epochs; the memory
bank takes them at once:

1. load the model (default: the category's champion in the registry, else the local
   ``model.pt``), refused when its scorer does not read the bank (``discriminator``);
2. prepare the folder's samples as the cache does (:func:`bridgenet.preprocess.network_inputs`),
   refused when the folder holds none or one shows no object;
3. embed them with the network (standardised, the scored foreground patches, as training
   does) and extend each modality's bank (:meth:`bridgenet.model.memory.MemoryBank.extend`:
   the bank kept, the new parts' patches covered, the size rule of ``model.memory``);
4. calibrate the scores and set both thresholds on the validation goods of the current
   cache (:func:`bridgenet.training.finish.finish`, training's rules);
5. save a new model file with a fresh traced graph under
   ``<train.models_dir>/bank_updates/<category>/<UTC time>/`` (``model.pt`` is never
   overwritten), with ``bank_update.json`` (lineage) and ``train_summary.json`` beside it.

Registering it as challenger, so that ``bridgenet promote`` decides, is
:func:`bridgenet.register.register_bank_update`.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bridgenet import paths
from bridgenet.config import Params
from bridgenet.data.batch import Batch, resolve_device
from bridgenet.files import sha256_file, write_json
from bridgenet.model.contract import TrainedModel

LOGGER = logging.getLogger(__name__)
UPDATE_FILE = "bank_update.json"


@dataclass(frozen=True)
class BankUpdate:
    """What one ``bank add`` did: the new model file, its parent, the parts added and what changed."""

    category: str
    model_path: str
    parent: str  # the model reference it started from
    parent_sha256: str
    parent_version: str | None  # the registered version, where the parent came from the registry
    source: str  # the folder of new good parts
    source_sha256: str  # :func:`bridgenet.tracking.lineage.folder_digest` of it
    samples: int
    memory: dict[str, float]
    threshold_before: float
    threshold: float
    pixel_threshold_before: float | None
    pixel_threshold: float
    validation: dict[str, float]
    seconds: float
    samples_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tracking_absent(params: Params) -> str | None:
    """Why nothing can be registered (a ``sqlite:///`` store whose database does not exist), or None."""
    from bridgenet.tracking.store import sqlite_database

    db = sqlite_database(params.tracking.uri)
    if db is not None and not db.is_file():
        return f"no tracking store at {db} (tracking.uri {params.tracking.uri})"
    return None


def default_model_ref(params: Params, category: str) -> tuple[str, str | None]:
    """(reference, registered version): the category's champion (``models:/<prefix>-<cat>@champion``)
    when the tracking store exists, answers and holds one; else the local ``model.pt``."""
    from mlflow.exceptions import MlflowException

    from bridgenet.tracking import registry
    from bridgenet.tracking.retry import TrackingUnavailableError

    local = str(paths.model_file(params, category))
    absent = tracking_absent(params)
    if absent:
        LOGGER.info("%s: starting from %s", absent, local)
        return local, None
    alias = params.registry.champion_alias
    try:
        version = registry.alias_version(params, category, alias)
    except (TrackingUnavailableError, MlflowException, OSError) as exc:
        LOGGER.warning("registry %s does not answer (%s): starting from %s", params.tracking.uri, exc, local)
        return local, None
    if version is None:
        LOGGER.info("%s has no %r version: starting from %s", registry.model_name(params, category), alias, local)
        return local, None
    return f"models:/{registry.model_name(params, category)}@{alias}", str(version.version)


def load_parent(ref: str, params: Params) -> tuple[TrainedModel, Path]:
    """The model ``ref`` names (a file or an MLflow URI, as ``predict`` reads them) and its local file."""
    from bridgenet.model.io import load_model
    from bridgenet.monitor.records import local_model_file

    path = local_model_file(ref, params.tracking.uri)
    return load_model(path), path


def check_uses_memory(model: TrainedModel, source: str) -> None:
    """Refuse a model whose scorer never reads the bank: adding to it would change nothing."""
    if not model.scorer.uses_memory:
        raise ValueError(
            f"{source}: model.scorer={model.scorer.name} does not use the memory bank, so `bank add` would "
            "change nothing; train the category with --set model.scorer=fused (or memory) first")


def read_good_parts(folder: Path, model: TrainedModel) -> tuple[Batch, list[Path]]:
    """Every ``rgb/<stem>.png`` + ``xyz/<stem>.tiff`` pair under ``folder``, prepared as the cache
    prepares a sample (RANSAC seeded from the file's path below ``folder``): a batch and the RGB files.

    Refused, naming the files: an empty folder, an unreadable or mismatched pair, an input
    smaller than the backbone's coarsest stride, and a part without an object above the
    support plane (for a model trained on parts with one).
    """
    from bridgenet.data.batch import Batch
    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.predict import check_pair, find_pairs, minimum_side
    from bridgenet.preprocess import network_inputs

    folder = Path(folder)
    try:
        pairs = find_pairs(folder)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"bank add: no good part to add ({exc})") from None
    side = minimum_side(model)
    arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    empty = []
    for rgb_path, xyz_path in pairs:
        rgb, xyz = read_rgb(rgb_path), read_xyz(xyz_path)
        check_pair(rgb, xyz, str(rgb_path), str(xyz_path))
        if min(rgb.shape[:2]) < side:
            raise ValueError(f"{rgb_path}: {rgb.shape[1]}x{rgb.shape[0]} pixels, below the model's {side}x{side}")
        seed = zlib.crc32(rgb_path.relative_to(folder).as_posix().encode("utf-8"))
        small, depth, foreground, *_ = network_inputs(rgb, xyz, model.params.data, np.random.default_rng(seed))
        if not foreground.any():
            empty.append(rgb_path)
        arrays.append((small, depth, foreground))
    if empty and model.foreground_fraction > 0:
        raise ValueError(
            f"bank add: {len(empty)} of {len(pairs)} samples under {folder} show no object above the support "
            f"plane (first {empty[0]}); a good part for the bank must show the part: remove them")
    rgbs, depths, foregrounds = (np.stack(a) for a in zip(*arrays))
    return Batch.from_arrays(rgbs, depths, foregrounds), [rgb for rgb, _ in pairs]


@torch.no_grad()
def embed_parts(network: Any, batch: Batch, device: torch.device,
                batch_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Standardised embeddings (N, D, h, w) per modality and the scored patches (N, h, w), as
    training embeds its goods (:meth:`bridgenet.training.trainer.Trainer._embed_all`)."""
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in network.modalities}
    keeps = []
    for start in range(0, len(batch), batch_size):
        piece = batch.select(slice(start, start + batch_size)).to(device)
        embeddings = network.embed_inputs(piece.inputs())
        grid = embeddings[network.modalities[0]].shape[-2:]
        keeps.append(network.kept_patches(piece.depth, grid).view(len(piece), *grid))
        for m in network.modalities:
            parts[m].append(embeddings[m])
    return {m: torch.cat(v) for m, v in parts.items()}, torch.cat(keeps)


def new_update_dir(params: Params, category: str) -> Path:
    """A fresh ``<train.models_dir>/bank_updates/<category>/<UTC time>`` folder (a suffix when taken)."""
    base = paths.bank_updates_dir(params, category)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder, n = base / stamp, 1
    while folder.exists():
        folder, n = base / f"{stamp}-{n}", n + 1
    folder.mkdir(parents=True)
    return folder


def add_to_bank(params: Params, category: str, folder: Path, model_ref: str | None = None,
                out_dir: Path | None = None) -> BankUpdate:
    """Add the good parts under ``folder`` to ``category``'s model bank; write the new model (module
    docstring). ``params``: the category's resolved params (cache, validation split, devices)."""
    from bridgenet.data.cache import load_cached_split
    from bridgenet.model.io import save_model
    from bridgenet.model.summary import TrainSummary, save_train_summary
    from bridgenet.tracking.lineage import folder_digest
    from bridgenet.train import fast_start_graph
    from bridgenet.training.finish import finish
    from bridgenet.training.validation import build_validation_set

    started = time.perf_counter()
    parent_version = None
    if model_ref is None:
        model_ref, parent_version = default_model_ref(params, category)
    model, parent_path = load_parent(model_ref, params)
    if model.category != category:
        raise ValueError(f"{model_ref}: holds a model of category {model.category!r}, expected {category!r}")
    check_uses_memory(model, model_ref)
    trained = model.params
    if trained.data != params.data:
        LOGGER.warning("%s was trained with other data settings than the current params; the new parts are "
                       "prepared with its own, the validation split is the current cache's", model_ref)
    batch, files = read_good_parts(Path(folder), model)
    device = resolve_device(params.train.device)
    network = model.network.to(device)
    network.eval()
    embeddings, keep = embed_parts(network, batch, device, params.eval.batch_size)
    memory = network.memory.extend(embeddings, keep, trained.model.memory,
                                   torch.Generator().manual_seed(trained.train.seed))
    LOGGER.info("memory bank: %s", ", ".join(f"{k} {v:.4g}" for k, v in memory.items()))
    split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    validation = build_validation_set(split, trained, network.modalities)
    done = finish(network, validation, device, params.eval.batch_size, trained.train.threshold_quantile)
    updated = TrainedModel(network.cpu(), model.meta).with_meta(
        threshold=done.threshold, pixel_threshold=done.pixel_threshold, metrics=done.metrics)
    out = Path(out_dir) if out_dir is not None else new_update_dir(params, category)
    model_path = out / paths.MODEL_FILE
    save_model(updated, model_path, graph=fast_start_graph(updated))
    seconds = time.perf_counter() - started
    update = BankUpdate(
        category=category, model_path=str(model_path), parent=model_ref, parent_sha256=sha256_file(parent_path),
        parent_version=parent_version, source=str(Path(folder).resolve()), source_sha256=folder_digest(folder),
        samples=len(batch), memory=memory, threshold_before=model.threshold, threshold=done.threshold,
        pixel_threshold_before=model.pixel_threshold, pixel_threshold=done.pixel_threshold,
        validation=done.metrics, seconds=seconds, samples_files=[str(f) for f in files])
    write_json(out / UPDATE_FILE, update.to_dict(), indent=1)
    save_train_summary(TrainSummary(
        category=category, model_path=str(model_path), best_epoch=model.epoch, threshold=done.threshold,
        validation=done.metrics, epochs=trained.train.epochs, pixel_threshold=done.pixel_threshold,
        train_samples=None, device=str(device), scorer=updated.scorer.name, memory=memory,
        calibration=done.calibration), out)
    LOGGER.info("%s: %d good parts added to the bank of %s in %.1f s; threshold %.4g -> %.4g; %s",
                category, len(batch), model_ref, seconds, model.threshold, done.threshold, model_path)
    return update
