"""The drift monitor's reference: the model's own scores of the cached validation goods, their
brightness and their missing 3D points (both read from the cache, no model run).

Scored once per model (by the sha256 of its file) through :func:`bridgenet.inference.score`
and kept in ``<eval.reports_dir>/monitor/reference/<category>-<digest[:16]>.json``; later
passes read the file. The validation goods are what the model's threshold was set on, so
their scores are what a quiet line's good parts should look like.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bridgenet import paths
from bridgenet.config import Params
from bridgenet.files import write_json
from bridgenet.model.contract import TrainedModel

LOGGER = logging.getLogger(__name__)


def monitor_dir(params: Params) -> Path:
    """``<eval.reports_dir>/monitor``: the monitor's reports and references."""
    return paths.reports_dir(params) / "monitor"


def reference_file(params: Params, category: str, model_digest: str) -> Path:
    """Where the reference scores of the model with file digest ``model_digest`` are kept."""
    return monitor_dir(params) / "reference" / f"{category}-{model_digest[:16]}.json"


class Reference(NamedTuple):
    """What a quiet line's good parts look like: the validation goods' scores, brightness and
    missing 3D points, each (R,)."""

    scores: np.ndarray
    brightness: np.ndarray
    missing: np.ndarray


def reference(params: Params, category: str, model: TrainedModel, model_digest: str) -> Reference:
    """The validation goods' scores (R,) of ``model`` (file digest ``model_digest``), their
    :func:`bridgenet.monitor.drift.part_brightness` and their missing points
    (:func:`bridgenet.data.depth.missing_share`), from one read of the cached split.

    The scores are scored once for that model and those goods: a stored reference of another
    model, or of validation goods that have changed since (another fingerprint), is scored
    again. Brightness and missing points need no model: they are read from the cached inputs, as
    predict logs them.
    Reads ``data.cache_dir``'s validation split of ``category``, which must have been built
    with the model's own data settings (a stale cache is refused, naming the folder).
    """
    from bridgenet.data.batch import Batch, resolve_device
    from bridgenet.data.cache import load_cached_split
    from bridgenet.inference import score
    from bridgenet.monitor.drift import part_brightness

    split = load_cached_split(params.data.cache_dir, category, "validation", model.params.data)
    goods = np.flatnonzero(split.labels == 0)
    brightness = part_brightness(split.rgb[goods], split.foreground[goods])
    missing = np.zeros(0) if split.missing is None else split.missing[goods].astype(np.float64)
    path = reference_file(params, category, model_digest)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("model_digest") != model_digest:
            LOGGER.warning("%s holds another model's reference (%s); scoring again", path, stored.get("model_digest"))
        elif stored.get("validation_fingerprint") != split.fingerprint():
            LOGGER.warning("%s was scored on other validation goods than %s/%s holds now; scoring again",
                           path, params.data.cache_dir, category)
        else:
            return Reference(np.asarray(stored["scores"], dtype=np.float64), brightness, missing)
    if goods.size < 2:
        raise ValueError(f"{params.data.cache_dir}/{category}: {goods.size} validation goods; "
                         "the drift monitor's reference needs at least 2")
    scored = score(model.network, Batch.from_split(split, goods), resolve_device(params.train.device),
                   params.eval.batch_size)
    write_json(path, {"category": category, "model_digest": model_digest,
                      "validation_fingerprint": split.fingerprint(), "stems": [split.stems[i] for i in goods],
                      "scores": scored.scores.astype(float).tolist()})
    LOGGER.info("%s: reference of %d validation goods written to %s", category, goods.size, path)
    return Reference(scored.scores.astype(np.float64), brightness, missing)
