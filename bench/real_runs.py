"""One run of the real-data benchmark: its params, digests and places, training, scoring, and the peer.

A run is one configuration (:data:`CONFIGS`), seed and category of an MVTec 3D-AD root.
Its params are params.yaml, the bench's ``--set`` overrides and the run's own keys
(:func:`run_params`); three digests of them decide what is reused: :func:`bench_digest`
names the model and result folders, :func:`params_digest` makes a stored result current,
:func:`train_digest` lets a saved model be scored again instead of trained again, and
:func:`network_digest` lets one trained under other memory settings serve with its bank
selected again (:func:`rebuild_and_score`). The peer's result is current under :func:`peer_digest`. ``bench.real`` decides what to run.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import PARAMS, PEER, REAL_METRICS, SCORERS, SCORING_KEYS, apply_scoring
from bench.results import read_json
from bridgenet.config import Params, apply_overrides, load_params, params_from_dict

# PatchCore's coreset share on real data: 1 %, as its paper ran MVTec AD and as the peer was
# measured before (anomalib's default 10 % takes ~40 min per modality here at 256 px)
PEER_CORESET_RATIO = 0.01

CONFIGS: dict[str, list[str]] = {
    "rgb+depth": [],
    "rgb": ["model.modalities=[rgb]"],
    "depth": ["model.modalities=[depth]"],
}
AT_THRESHOLD = ("fpr", "recall", "precision", "tp", "fp", "fn", "tn")
PEER_MODALITIES = ("rgb", "depth", "fused")
PEER_MODEL_KEYS = ("backbone", "weights", "layers", "depth_input", "relief_sigma", "relief_gain")


# ----------------------------------------------------------------------------- params and places
def digest(payload: Any) -> str:
    """sha256 (hex) of ``payload`` as canonical JSON."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def _bench_data(params: Params) -> dict[str, Any]:
    """``params.data`` without the keys the bench sets per category (categories, cache_dir)."""
    data = params.data.model_dump(mode="json")
    for key in ("categories", "cache_dir"):
        data.pop(key)
    return data


def base_params(data_root: Path, sets: list[str], params_path: Path = PARAMS) -> Params:
    """params.yaml with ``train.device=cpu`` (unless ``sets`` choose), ``sets`` and ``data.root``."""
    params = load_params(params_path, ["train.device=cpu", *sets])
    raw = params.to_dict()
    raw["data"]["root"] = str(Path(data_root).resolve())
    return params_from_dict(raw, source=f"{params_path} with --set {sets}")


def cache_dir(work: Path, params: Params) -> Path:
    """``work/cache/<side>px-<hash of the data settings and root>``: one cache per data setting."""
    return Path(work) / "cache" / f"{params.data.image_size}px-{digest(_bench_data(params))[:10]}"


# the params sections a run reads; tracking, registry, promotion, schedule, serving and
# scale-out settings change no result, so a change to them reuses every result
RUN_SECTIONS = ("data", "model", "anomalies", "train", "eval", "category_overrides")


def _run_part(raw: dict[str, Any]) -> dict[str, Any]:
    """The sections a run reads, with the cache named by its folder alone: that name holds the
    digest of the data settings and root, and a work folder moved elsewhere keeps its results."""
    part = {key: raw[key] for key in RUN_SECTIONS if key in raw}
    if part.get("data", {}).get("cache_dir") is not None:
        part["data"] = {**part["data"], "cache_dir": Path(part["data"]["cache_dir"]).name}
    return part


def _training_part(raw: dict[str, Any]) -> dict[str, Any]:
    raw = json.loads(json.dumps(_run_part(raw), default=str))
    for key in SCORING_KEYS:
        raw["model"].pop(key, None)
    return raw


def bench_digest(params: Params) -> str:
    """Names the benchmark's training params (params.yaml + --set + root, less the scoring keys)
    in model and result folders."""
    raw = params.to_dict()
    raw["data"] = _bench_data(params)
    return digest(_training_part(raw))[:12]


def run_params(base: Params, work: Path, category: str, config: str, seed: int) -> Params:
    """The resolved params of one run: ``base`` with the category's overrides, its cache, the
    configuration's overrides and ``train.seed``."""
    if config not in CONFIGS:
        raise ValueError(f"configuration {config!r} unknown; known: {sorted(CONFIGS)}")
    raw = base.for_category(category).to_dict()
    raw["category_overrides"] = {}  # merged above; run_peer and stages must not merge them again
    raw["data"]["categories"] = [category]
    raw["data"]["cache_dir"] = str(cache_dir(work, base))
    overrides = [*CONFIGS[config], f"train.seed={seed}"]
    return params_from_dict(apply_overrides(raw, overrides), source=f"run {config} seed {seed} {category}",
                            overrides=tuple(overrides))


def params_digest(params: Params) -> str:
    """Digest of every resolved parameter a run reads: a result is reused only under the same one."""
    return digest(_run_part(params.to_dict()))


def train_digest(params: Params) -> str:
    """Digest of the parameters that shape training: a saved model is scored again, not trained
    again, while it is unchanged."""
    return digest(_training_part(params.to_dict()))


def network_digest(params: Params) -> str:
    """Digest of the parameters that shape the trained weights: :func:`train_digest`'s less
    ``model.memory``. Training builds the bank before the first step with its own seeded
    generator and chooses epochs on the discriminator alone, so runs that differ only in memory
    settings train the same weights: one model serves them all with its bank selected again
    (:func:`rebuild_and_score`)."""
    raw = _training_part(params.to_dict())
    raw["model"].pop("memory", None)
    return digest(raw)


def peer_digest(params: Params, settings: dict[str, Any]) -> str:
    """Digest of what the peer's result depends on: data, backbone, depth image, AU-PRO, its settings."""
    model = {key: getattr(params.model, key) for key in PEER_MODEL_KEYS}
    return digest({"data": _bench_data(params), "model": model,
                   "aupro_thresholds": params.eval.aupro_thresholds, "settings": settings})


def model_dir(work: Path, bench: str, config: str, seed: int, category: str) -> Path:
    return Path(work) / "models" / bench / config / f"seed{seed}" / category


def run_path(work: Path, bench: str, config: str, seed: int, category: str) -> Path:
    return Path(work) / "results" / bench / f"{config}-seed{seed}-{category}.json"


def peer_path(work: Path, digest_hex: str, seed: int, category: str) -> Path:
    return Path(work) / "results" / f"peer-{digest_hex[:12]}" / f"seed{seed}-{category}.json"


def find_categories(root: Path) -> list[str]:
    """Every folder of ``root`` with a ``train`` folder, sorted; ValueError naming ``root`` if none."""
    if not Path(root).is_dir():
        raise ValueError(f"--data-root {root}: not a folder")
    found = sorted(p.name for p in Path(root).iterdir() if p.is_dir() and (p / "train").is_dir())
    if not found:
        raise ValueError(f"--data-root {root}: no category folder (one with a train/ folder) in it")
    return found


def stored_training(path: Path, params: Params) -> dict[str, Any] | None:
    """The record at ``path`` when its model was trained under ``params``' training part and is
    still on disk (so that only its scores need making again), else None."""
    record = read_json(path)
    if record is None or record.get("train_digest") != train_digest(params):
        return None
    return record if Path(record.get("model", "")).is_file() else None


def memory_twin(work: Path, params: Params, config: str, seed: int, category: str) -> dict[str, Any] | None:
    """A stored record of the same configuration, seed and category whose model was trained
    under the same :func:`network_digest` (other memory settings) and is still on disk; None if
    there is none (records written before the digest existed never match)."""
    wanted = network_digest(params)
    for path in sorted((Path(work) / "results").glob(f"*/{config}-seed{seed}-{category}.json")):
        record = read_json(path)
        if record is not None and record.get("network_digest") == wanted and Path(record.get("model", "")).is_file():
            return record
    return None


def peer_place(base: Params, work: Path, category: str, seed: int) -> tuple[Params, str, Path]:
    """The peer's params (the ``rgb+depth`` run's), its digest and its result file."""
    from bench.peers import PeerSettings

    params = run_params(base, work, category, "rgb+depth", seed)
    expected = peer_digest(params, asdict(PeerSettings(seed=seed, coreset_ratio=PEER_CORESET_RATIO)))
    return params, expected, peer_path(work, expected, seed, category)


# ----------------------------------------------------------------------------- our runs
def validation_threshold(model: Any, params: Params, category: str, device: Any) -> float:
    """Training's threshold rule under the network's current scorer: ``train.threshold_quantile``
    of the validation goods' image scores."""
    from bridgenet.data.cache import load_cached_split
    from bridgenet.evaluate import score_split
    from bridgenet.training.finish import choose_threshold

    split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    scores = score_split(model, split, params.eval.batch_size, device)[0]
    return choose_threshold(scores[split.labels == 0], params.train.threshold_quantile)


def scorer_cell(evaluation: Any, threshold_source: str, seconds: float) -> dict[str, Any]:
    """One scorer's test result: metrics, per-defect image AUROC, decisions at the threshold, scores."""
    at = evaluation.at_threshold()
    return {
        "metrics": {k: float(evaluation.metrics[k]) for k in REAL_METRICS},
        "per_defect": {k: float(v) for k, v in evaluation.per_defect.items()},
        "threshold": float(evaluation.threshold), "threshold_source": threshold_source,
        "at_threshold": {k: at[k] for k in AT_THRESHOLD},
        "image_scores": [float(v) for v in evaluation.scores],
        "score_seconds": seconds,
    }


def score_run(params: Params, path: Path, category: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score the model saved at ``path`` on the test split once per scorer, with the scoring keys
    of ``params`` (:data:`SCORING_KEYS`; a saved model may have been trained under others).

    Returns ({scorer: :func:`scorer_cell`}, {"stems", "defects", "labels"} of the test split).
    """
    from bridgenet.data.batch import resolve_device
    from bridgenet.evaluate import evaluate_category, load_test_split
    from bridgenet.model.io import load_model

    device = resolve_device(params.train.device)
    model = load_model(path)
    same_scoring = all(getattr(model.params.model, k) == getattr(params.model, k) for k in SCORING_KEYS)
    apply_scoring(model, params)
    split = load_test_split(params, category)
    trained_scorer, trained_threshold = model.scorer.name, model.threshold
    cells = {}
    for scorer in SCORERS:
        start = time.perf_counter()
        model.network.scorer = scorer
        own = scorer == trained_scorer and same_scoring
        threshold = trained_threshold if own else validation_threshold(model, params, category, device)
        evaluation, _ = evaluate_category(params, model.with_meta(threshold=threshold), split, device)
        cells[scorer] = scorer_cell(evaluation, "model" if own else "validation goods",
                                    time.perf_counter() - start)
    test = {"stems": list(split.stems), "defects": list(split.defects), "labels": split.labels.tolist()}
    return cells, test


def train_and_score(params: Params, out_dir: Path, config: str, seed: int, category: str) -> dict[str, Any]:
    """Train one model into ``out_dir`` and score it; the run's JSON-ready record."""
    from bridgenet.train import train_category

    start = time.perf_counter()
    summary = train_category(params, category, out_dir=out_dir)
    train_seconds = time.perf_counter() - start
    scores, test = score_run(params, out_dir / "model.pt", category)
    return {
        "config": config, "seed": seed, "category": category, "params_digest": params_digest(params),
        "train_digest": train_digest(params), "network_digest": network_digest(params),
        "model": str(out_dir / "model.pt"), "train_seconds": train_seconds,
        "best_epoch": summary.best_epoch, "epochs": summary.epochs,
        "seconds_per_epoch": summary.seconds_per_epoch, "setup_seconds": summary.setup_seconds,
        "threshold": summary.threshold, "memory": summary.memory, "validation": summary.validation,
        "test": test, "scores": scores,
    }


def rebuild_and_score(params: Params, twin: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """The model of ``twin`` (:func:`memory_twin`) with its bank selected again under ``params``'
    memory settings, by training's own code on the training split, and calibration and
    thresholds set again on the validation split by training's rules: the model that training
    under the twin's params with these memory settings gives (tests/test_bench_real.py), written
    to ``out_dir`` and scored under ``params`` (:func:`score_run`). The
    record keeps the twin's training figures (epochs, seconds) and adds ``rebuilt_from`` and
    ``rebuild_seconds``."""
    from bench.bank_size import bank_trainer, rebuilt_banks
    from bridgenet.data.batch import resolve_device
    from bridgenet.data.cache import load_cached_split
    from bridgenet.model.io import load_model, read_checkpoint, save_model
    from bridgenet.train import fast_start_graph
    from bridgenet.training.finish import finish
    from bridgenet.training.validation import build_validation_set

    start = time.perf_counter()
    category, device = twin["category"], resolve_device("cpu")
    model = load_model(Path(twin["model"]))
    # the twin's own params (modalities as training resolved them) under this run's memory settings
    stored = model.params
    own = stored.model_copy(update={"model": stored.model.model_copy(update={"memory": params.model.memory})})
    cache = params.data.cache_dir
    trainer = bank_trainer(model.network, own, load_cached_split(cache, category, "train", params.data))
    memory = rebuilt_banks(model.network, trainer)
    validation = build_validation_set(load_cached_split(cache, category, "validation", params.data), own,
                                      model.network.modalities)
    done = finish(model.network, validation, device, own.eval.batch_size, own.train.threshold_quantile)
    model = model.with_meta(params=own, threshold=done.threshold, pixel_threshold=done.pixel_threshold,
                            metrics=done.metrics)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_model(model, out_dir / "model.pt", read_checkpoint(Path(twin["model"])).get("history"),
               graph=fast_start_graph(model))
    rebuild_seconds = time.perf_counter() - start
    scores, test = score_run(params, out_dir / "model.pt", category)
    kept = ("config", "seed", "category", "train_seconds", "best_epoch", "epochs", "seconds_per_epoch",
            "setup_seconds")
    return {
        **{key: twin.get(key) for key in kept}, "params_digest": params_digest(params),
        "train_digest": train_digest(params), "network_digest": network_digest(params),
        "model": str(out_dir / "model.pt"), "rebuilt_from": twin["model"], "rebuild_seconds": rebuild_seconds,
        "threshold": done.threshold, "memory": memory, "validation": done.metrics, "test": test, "scores": scores,
    }


# ----------------------------------------------------------------------------- the peer
def peer_record(data_root: Path, params: Params, category: str, seed: int) -> dict[str, Any]:
    """PatchCore fitted on ``category``'s goods with ``seed``, scored on its test split."""
    import anomalib

    from bench.peers import PeerSettings, run_peer
    from bridgenet.metrics import auroc_per_defect

    settings = PeerSettings(seed=seed, coreset_ratio=PEER_CORESET_RATIO)
    result = run_peer(data_root, params.data.cache_dir, category, params, settings)
    test = result["test"]
    modalities = {
        m: {"metrics": dict(result[m]["metrics"]),
            "per_defect": auroc_per_defect(np.asarray(test["scores"][m]), test["defects"]),
            "image_scores": test["scores"][m]}
        for m in PEER_MODALITIES
    }
    fit_seconds = {m: result[m]["fit_seconds"] for m in ("rgb", "depth")}
    return {
        "peer": PEER, "seed": seed, "category": category,
        "params_digest": peer_digest(params, asdict(settings)), "settings": asdict(settings),
        "anomalib": anomalib.__version__, "depth_input": result["depth_input"],
        "fit_seconds": {**fit_seconds, "fused": sum(fit_seconds.values())},
        "infer_seconds_per_sample": {m: result[m]["infer_seconds_per_sample"] for m in ("rgb", "depth")},
        "memory_bank": {m: result[m]["memory_bank"] for m in ("rgb", "depth")},
        "modalities": modalities,
        "test": {k: test[k] for k in ("stems", "defects", "labels")},
    }
