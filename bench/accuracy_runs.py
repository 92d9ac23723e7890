"""One run of the synthetic accuracy benchmark: its data, params, places, training, scoring and peer.

Two synthetic data sets live under a work folder: the embedded default set and its
``hard`` preset (same goods, other defects; a larger test split, :data:`TEST_SIZES`).
A run is one configuration (:data:`CONFIGS`), training seed and category: one model
trained on the default set's goods, scored on each preset's test split with each scorer.
A run is reused while the params that shape it are unchanged (:func:`params_digest`,
:func:`caps_unbound`); ``bench.accuracy`` decides what to run.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import PARAMS, SCORERS, SCORING_KEYS, SYNTH_METRICS, apply_scoring
from bench.results import SYNTH_PEER_VARIANTS

CONFIGS: dict[str, list[str]] = {
    "rgb+depth": [],
    "rgb": ["model.modalities=[rgb]"],
    "depth": ["model.modalities=[depth]"],
    "+gaussian": ["anomalies.gaussian.enabled=true"],
    "gaussian-only": ["anomalies.gaussian.enabled=true", "anomalies.texture.enabled=false"],
    # sigma 15 x the paper's: feature-level noise then has a norm near the clean patches'
    # nearest-neighbour spacing in the standardised embedding (see docs/benchmarks.md)
    "+gaussian-s0.3": ["anomalies.gaussian.enabled=true", "anomalies.gaussian.sigma=0.3"],
}
PRESETS = ("default", "hard")


# The hard preset's test split is larger than the default's: its defects sit near chance for
# every method, and with 10 goods and 12 defects per family a category's AUROC moves by ~0.1
# from one sample; the goods it trains on are never read (training reads the default set).
TEST_SIZES: dict[str, list[str]] = {"default": [], "hard": ["synth.n_test_good=30", "synth.n_test_per_defect=10"]}


def data_overrides(work: Path, preset: str) -> list[str]:
    """Where ``preset``'s rendered data and preprocessing cache live under ``work``, and its test sizes."""
    root = work / "data" / ("mvtec3d_synth" if preset == "default" else f"{preset}_synth")
    cache = work / "data" / ("cache" if preset == "default" else f"cache_{preset}")
    return [f"synth.preset={preset}", f"synth.out={root}", f"data.root={root}", f"data.cache_dir={cache}",
            "train.device=cpu", *TEST_SIZES[preset]]


def base_overrides(work: Path) -> list[str]:
    """Training reads the default set (the hard preset's goods are the same samples)."""
    return data_overrides(work, "default")


def prepare_data(work: Path, presets: tuple[str, ...] = PRESETS) -> None:
    """Render and preprocess each preset under ``work`` (both steps skip unchanged work)."""
    from bridgenet.config import load_params
    from bridgenet.data.synth.dataset import synthesize
    from bridgenet.preprocess import run_preprocess

    for preset in presets:
        params = load_params(PARAMS, data_overrides(work, preset))
        root, marker = Path(params.synth.out), Path(params.synth.out) / ".bench-complete"
        rendered = json.dumps(params.synth.model_dump(mode="json"), sort_keys=True)
        if not marker.is_file() or marker.read_text() != rendered:
            # other settings (or an interrupted render): render again, and preprocess from scratch
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(params.data.cache_dir, ignore_errors=True)
            synthesize(params.synth, root)
            marker.write_text(rendered)
        run_preprocess(params)


def model_dir(work: Path, config: str, seed: int, category: str) -> Path:
    return work / "models" / config / f"seed{seed}" / category


def run_one(work: Path, config: str, seed: int, category: str,
            presets: tuple[str, ...] = PRESETS) -> dict[str, Any]:
    """Train one model, score each preset's test split with each scorer; metrics and timings."""
    from bridgenet.config import load_params
    from bridgenet.train import train_category

    params = load_params(PARAMS, [*base_overrides(work), *CONFIGS[config], f"train.seed={seed}"])
    start = time.perf_counter()
    summary = train_category(params, category, out_dir=model_dir(work, config, seed, category))
    train_s = time.perf_counter() - start
    return {
        "config": config, "seed": seed, "category": category,
        "scores": score_model(work, config, seed, category, presets),
        "best_epoch": summary.best_epoch, "train_seconds": train_s,
        "seconds_per_epoch": summary.seconds_per_epoch, "memory": summary.memory,
        "memory_caps": {k: getattr(params.model.memory, k) for k in CAP_KEYS},
    }


def score_model(work: Path, config: str, seed: int, category: str,
                presets: tuple[str, ...] = PRESETS) -> dict[str, dict[str, Any]]:
    """Score the saved model of a run on each preset's test split with each scorer.

    The scoring keys of params.yaml (:data:`SCORING_KEYS` but ``scorer``) apply, so a change
    to them re-scores saved models without training them again.
    """
    import torch

    from bridgenet.config import load_params
    from bridgenet.data.batch import Batch
    from bridgenet.data.cache import load_cached_split
    from bridgenet.evaluate import defect_families, evaluate_category, load_test_split, score_split
    from bridgenet.metrics import GOOD
    from bridgenet.model.io import load_model
    from bridgenet.training.finish import calibrate_scores

    params = load_params(PARAMS, [*base_overrides(work), *CONFIGS[config]])
    model = load_model(model_dir(work, config, seed, category) / "model.pt")
    apply_scoring(model, params)
    # The scale as training sets it today (the validation split holds goods only), so that a
    # saved model is scored as a freshly trained one would be.
    validation = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    calibrate_scores(model.network, Batch.from_split(validation), torch.device("cpu"), params.eval.batch_size)
    # per scorer, for the late fusion of separate models (:func:`bench.accuracy_report.late_fusion_rows`)
    validation_scores = {}
    for scorer in SCORERS:
        model.network.scorer = scorer
        image_scores = score_split(model, validation, params.eval.batch_size, torch.device("cpu"))[0]
        validation_scores[scorer] = [float(v) for v in image_scores]
    scores: dict[str, dict[str, Any]] = {}
    for preset in presets:
        test_params = load_params(PARAMS, [*data_overrides(work, preset), *CONFIGS[config]])
        split = load_test_split(test_params, category)
        families = defect_families(split.defects)
        scores[preset] = {}
        for scorer in SCORERS:
            model.network.scorer = scorer
            start = time.perf_counter()
            evaluation, _ = evaluate_category(params, model, split, torch.device("cpu"))
            scores[preset][scorer] = {
                "metrics": {k: float(evaluation.metrics[k]) for k in SYNTH_METRICS},
                "families": {k: float(v) for k, v in evaluation.per_family.items()},
                "per_defect": {k: float(v) for k, v in evaluation.per_defect.items()},
                "test_seconds": time.perf_counter() - start,
                "n_test": len(evaluation.labels),
                "threads": torch.get_num_threads(),
                # per test sample, for the late fusion of separate models (bench.accuracy_report)
                "image_scores": [float(v) for v in evaluation.scores],
                "sample_families": [families.get(d, GOOD) for d in split.defects],
                "validation_scores": validation_scores[scorer],
            }
    return scores


def run_peer(work: Path, category: str) -> list[dict[str, Any]]:
    """The peer fitted once on the goods of ``category`` and scored on every preset's test split.

    One record per preset: per modality and fused, our metrics, fit and inference times.
    """
    from bench.peers import run_peer as fit_and_score
    from bridgenet.config import load_params

    params = load_params(PARAMS, data_overrides(work, PRESETS[0]))
    others = {p: Path(load_params(PARAMS, data_overrides(work, p)).data.cache_dir)
              for p in PRESETS[1:]}
    result = fit_and_score(Path(params.data.root), Path(params.data.cache_dir), category, params,
                           other_tests=others)
    fit_seconds = {m: result[m]["fit_seconds"] for m in ("rgb", "depth")}
    fit_seconds["fused"] = fit_seconds["rgb"] + fit_seconds["depth"]
    timings = {"fit_seconds": fit_seconds,
               "infer_seconds_per_sample": {m: result[m]["infer_seconds_per_sample"] for m in ("rgb", "depth")},
               "memory_bank": {m: result[m]["memory_bank"] for m in ("rgb", "depth")}}
    records = [{"preset": PRESETS[0], "category": category, **timings,
                "modalities": {m: {k: result[m][k] for k in ("metrics", "families")}
                               for m in SYNTH_PEER_VARIANTS}}]
    for preset, cells in result["other_tests"].items():
        records.append({"preset": preset, "category": category, **timings, "modalities": cells})
    return records


CAP_KEYS = ("max_entries",)  # model.memory caps: they change a run only where they bind


def params_digest(part: str = "all") -> str:
    """Results are reused only while the params that shape them are unchanged.

    ``train``: every section a run reads except the scoring keys of ``model`` (each run
    is scored with every scorer), the memory bank's caps (a run is reused only where
    :func:`caps_unbound` shows they did not bind) and the per-category overrides, which
    the benchmark does not apply. ``score``: the scoring keys except ``scorer``.
    ``all``: both.
    """
    from bridgenet.config import load_params

    params = load_params(PARAMS).to_dict()
    for key in CAP_KEYS:
        params["model"]["memory"].pop(key)
    scoring = {k: params["model"].pop(k) for k in SCORING_KEYS}
    scoring.pop("scorer")
    shaping = {k: params[k] for k in ("data", "synth", "model", "anomalies", "train", "eval")}
    # the test splits scored: the default set's sizes are in ``synth``, the hard preset's here
    scoring["test_sizes"] = TEST_SIZES
    chosen = {"train": shaping, "score": scoring, "all": [shaping, scoring]}[part]
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def _stored_cap(caps: dict[str, Any], modalities: int) -> int | None:
    """The per-modality bank cap a run was trained under (``max_bank`` per modality until
    2026-12-05, ``max_entries`` over all modalities since), None where none was recorded."""
    if "max_entries" in caps:
        return max(1, int(caps["max_entries"]) // max(1, modalities))
    return int(caps["max_bank"]) if "max_bank" in caps else None


def caps_unbound(run: dict[str, Any], memory: Any) -> bool:
    """Whether ``run``'s memory bank is the one ``memory`` (``model.memory``) would build.

    It is when the run was trained under today's caps (bound or not), or when neither the cap
    it was trained under nor ``memory``'s bound: every bank holds the uncapped share of its
    candidates. Runs whose bank was chosen among a random pool of the candidates
    (``memory_caps.max_candidates``, before the selection saw every candidate) are never
    reused where the pool was smaller than the candidates.
    """
    info = run.get("memory") or {}
    stored_caps = run.get("memory_caps") or {}
    stored_pool = stored_caps.get("max_candidates", 0)
    modalities = [k.removesuffix("_candidates") for k in info if k.endswith("_candidates")]
    if not modalities:
        return False
    cap = memory.bank_cap(len(modalities))
    if stored_pool == 0 and _stored_cap(stored_caps, len(modalities)) == cap:
        return True
    for m in modalities:
        candidates, bank = int(info[f"{m}_candidates"]), int(info[f"{m}_bank"])
        uncapped = memory.share(candidates)
        if bank != uncapped or uncapped > cap:
            return False
        if 0 < stored_pool < candidates:
            return False
    return True


def peer_current(record: dict[str, Any], train_digest: str) -> bool:
    """A peer record is current when its goods and settings and the test splits it scored are."""
    return record.get("train_digest") == train_digest and record.get("test_sizes") == TEST_SIZES


def run_name(run: dict[str, Any]) -> str:
    if "config" in run:
        return f"{run['config']}-seed{run['seed']}-{run['category']}.json"
    return f"peer-{run['preset']}-{run['category']}.json"
