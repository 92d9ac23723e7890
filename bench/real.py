"""Real-data benchmark: BridgeNet on an MVTec 3D-AD root, over seeds, beside PatchCore and published figures.

    python bench/real.py --data-root ROOT [--categories cable_gland ...] [--seeds 0 1 2]
        [--configs rgb+depth rgb depth] [--work bench/work-real] [--out bench/results]
        [--name mvtec3d] [--no-peer] [--set section.key=value ...] [--threads N] [--summary-only]

ROOT is any MVTec 3D-AD root (``ROOT/<category>/{train,validation,test}/...``); the
data is never copied into the repository, only preprocessed into ``--work``.
``--categories`` defaults to every folder of ROOT that has a ``train`` folder.

Per category the data is preprocessed once into ``--work/cache/<side>px-<hash>``,
a folder named after the ``data:`` settings (``--set data.image_size=320`` gets
its own cache). For every configuration, seed and category one model is trained
on the goods (``train_category``; epochs and thresholds from validation data only)
under ``--work/models/<hash>/<config>/seed<k>/<category>`` (``<hash>``: the
params of this benchmark, params.yaml plus ``--set``) and its test split is
scored once per scorer (``discriminator``, ``memory``, ``fused``):

    rgb+depth   params.yaml as it is
    rgb         model.modalities=[rgb]
    depth       model.modalities=[depth]

``--set`` overrides apply to every run (``train.device`` is ``cpu`` unless set;
``data.root``, ``data.categories`` and ``data.cache_dir`` come from the bench).
Recorded per scorer: image AUROC and AP, pixel AUROC, AU-PRO@0.3 and @0.01,
image AUROC per defect type, FPR and recall at the validation threshold (the
model's own for the scorer it was trained with, else the same rule,
``train.threshold_quantile`` of the validation goods' scores, under that scorer)
and every test sample's image score; per run the training seconds, best epoch,
memory bank and validation metrics.

The peer, anomalib's PatchCore on the same backbone, cache and depth image
(``bench/peers.py``), is fitted once per seed and category (``--no-peer`` skips
it; it needs the ``bench`` extra). Every result is written to ``--work/results``
as soon as it exists, with a digest of the params it was made under, so an
interrupted benchmark resumes; a result made under other params (params.yaml or
``--set`` changed) is made again.

The summary (``--out/real_<name>.json`` and ``real_<name>.md``) holds mean ± std
over seeds per configuration / scorer and for the peer (rgb, depth, fused), per
category and as the mean over categories, published figures beside ours (quoted
from the 3D-ADS README, not re-measured), and a target check per category
(lines PASS / FAIL, SKIP where a run it needs is missing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bridgenet.config import (
    ConfigError,
    Params,
    apply_overrides,
    load_params,
    params_from_dict,
)

LOGGER = logging.getLogger("bench.real")
# PatchCore's coreset share on real data: 1 %, as its paper ran MVTec AD and as the peer was
# measured before (anomalib's default 10 % takes ~40 min per modality here at 256 px)
PEER_CORESET_RATIO = 0.01

CONFIGS: dict[str, list[str]] = {
    "rgb+depth": [],
    "rgb": ["model.modalities=[rgb]"],
    "depth": ["model.modalities=[depth]"],
}
SCORERS = ("discriminator", "memory", "fused")
METRICS = ("image_auroc", "image_ap", "pixel_auroc", "aupro_30", "aupro_1")
AT_THRESHOLD = ("fpr", "recall", "precision", "tp", "fp", "fn", "tn")
PEER = "PatchCore"
PEER_MODALITIES = ("rgb", "depth", "fused")
PEER_MODEL_KEYS = ("backbone", "weights", "layers", "depth_input", "relief_sigma", "relief_gain")
DEFECT = "defect:"  # prefix of the per-defect-type image AUROC keys of a summary row
OVERALL_KEYS = (*METRICS, "worst_defect", "fpr", "recall", "train_seconds")
TARGET_SCORER = "fused"
BENCH_KEYS = ("data.root", "data.categories", "data.cache_dir")  # set by the bench, not by --set

PUBLISHED_SOURCE = "published, 3D-ADS README"
# Quoted, not re-measured: github.com/eliahuhorwitz/3D-ADS README, tables on the preprocessed
# data set ("Preprocessed AU PRO / Image ROCAUC / Pixel ROCAUC Results"); "PatchCore (RGB only)"
# is its row "RGB iNet", "BTF (RGB + FPFH)" its row "RGB + FPFH". AU-PRO integrates to FPR 0.3.
PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    "cable_gland": {
        "PatchCore (RGB only)": {"image_auroc": 0.880, "pixel_auroc": 0.984, "aupro_30": 0.948},
        "BTF (RGB + FPFH)": {"image_auroc": 0.770, "pixel_auroc": 0.992, "aupro_30": 0.968},
    },
}


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


def base_params(data_root: Path, sets: list[str], params_path: Path = REPO / "params.yaml") -> Params:
    """params.yaml with ``train.device=cpu`` (unless ``sets`` choose), ``sets`` and ``data.root``."""
    params = load_params(params_path, ["train.device=cpu", *sets])
    raw = params.to_dict()
    raw["data"]["root"] = str(Path(data_root).resolve())
    return params_from_dict(raw, source=f"{params_path} with --set {sets}")


def cache_dir(work: Path, params: Params) -> Path:
    """``work/cache/<side>px-<hash of the data settings and root>``: one cache per data setting."""
    return Path(work) / "cache" / f"{params.data.image_size}px-{digest(_bench_data(params))[:10]}"


# model keys that change how a trained model scores, not what training makes: a change to
# them scores the saved models again instead of training them again
SCORING_KEYS = ("scorer", "fusion_weight", "image_score", "memory_fusion", "map_smoothing_sigma")


# the params sections a run reads; tracking, registry, promotion, schedule, serving and
# scale-out settings change no result, so a change to them reuses every result
RUN_SECTIONS = ("data", "model", "anomalies", "train", "eval", "category_overrides")


def _run_part(raw: dict[str, Any]) -> dict[str, Any]:
    return {key: raw[key] for key in RUN_SECTIONS if key in raw}


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


def apply_scoring(model: Any, params: Params) -> None:
    """Set the scoring keys of ``params`` on a loaded model's network."""
    network = model.network
    network.fusion_weight = params.model.fusion_weight
    network.image_score = params.model.image_score
    network.memory_fusion = params.model.memory_fusion
    network.smoothing_sigma = params.model.map_smoothing_sigma


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


# ----------------------------------------------------------------------------- results on disk
def _finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


_FLAT_LIST = re.compile(r"\[\s+([^\[\]{}]*?)\s+\]")


def write_json(path: Path, payload: Any) -> Path:
    """Write ``payload`` atomically as strict JSON, each list of plain values on one line."""
    text = json.dumps(_finite(payload), indent=2, allow_nan=False)
    text = _FLAT_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",\n")) + "]", text)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text + "\n")
    os.replace(tmp, path)
    return path


def current_record(path: Path, expected_digest: str) -> dict[str, Any] | None:
    """The result stored at ``path`` if it was made under ``expected_digest``, else None."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        LOGGER.warning("%s: not valid JSON (%s); made again", path, err)
        return None
    if not isinstance(record, dict) or record.get("params_digest") != expected_digest:
        return None
    return record


def stored_training(path: Path, params: Params) -> dict[str, Any] | None:
    """The record at ``path`` when its model was trained under ``params``' training part and is
    still on disk (so that only its scores need making again), else None."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict) or record.get("train_digest") != train_digest(params):
        return None
    return record if Path(record.get("model", "")).is_file() else None


# ----------------------------------------------------------------------------- our runs
def validation_threshold(model: Any, params: Params, category: str, device: Any) -> float:
    """Training's threshold rule under the network's current scorer: ``train.threshold_quantile``
    of the validation goods' image scores."""
    from bridgenet.data.cache import load_cached_split
    from bridgenet.evaluate import score_split
    from bridgenet.train import choose_threshold

    split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    scores = score_split(model, split, params.eval.batch_size, device)[0]
    return choose_threshold(scores[split.labels == 0], params.train.threshold_quantile)


def scorer_cell(evaluation: Any, threshold_source: str, seconds: float) -> dict[str, Any]:
    """One scorer's test result: metrics, per-defect image AUROC, decisions at the threshold, scores."""
    at = evaluation.at_threshold()
    return {
        "metrics": {k: float(evaluation.metrics[k]) for k in METRICS},
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
    trained_scorer, trained_threshold = model.network.scorer, model.threshold
    cells = {}
    for scorer in SCORERS:
        start = time.perf_counter()
        model.network.scorer = scorer
        own = scorer == trained_scorer and same_scoring
        model.threshold = trained_threshold if own else validation_threshold(model, params, category, device)
        evaluation, _ = evaluate_category(params, model, split, device)
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
        "train_digest": train_digest(params),
        "model": str(out_dir / "model.pt"), "train_seconds": train_seconds,
        "best_epoch": summary["best_epoch"], "epochs": summary["epochs"],
        "seconds_per_epoch": summary["seconds_per_epoch"], "setup_seconds": summary["setup_seconds"],
        "threshold": summary["threshold"], "memory": summary["memory"], "validation": summary["validation"],
        "test": test, "scores": scores,
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


# ----------------------------------------------------------------------------- summary
def _values(metrics: dict[str, Any], per_defect: dict[str, Any], **extra: Any) -> dict[str, Any]:
    defects = {f"{DEFECT}{d}": v for d, v in per_defect.items()}
    finite = [v for v in per_defect.values() if v is not None and math.isfinite(v)]
    return {**metrics, **defects, "worst_defect": min(finite) if finite else None, **extra}


def run_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary row per scorer of a run: variant ``<config> / <scorer>``."""
    rows = []
    for scorer, cell in run["scores"].items():
        at = cell.get("at_threshold", {})
        values = _values(cell["metrics"], cell["per_defect"], fpr=at.get("fpr"), recall=at.get("recall"),
                         train_seconds=run["train_seconds"])
        rows.append({"variant": f"{run['config']} / {scorer}", "seed": run["seed"],
                     "category": run["category"], "values": values})
    return rows


def peer_rows(peer: dict[str, Any]) -> list[dict[str, Any]]:
    """One summary row per peer modality: variant ``PatchCore <modality>`` (no threshold)."""
    return [{"variant": f"{PEER} {m}", "seed": peer["seed"], "category": peer["category"],
             "values": _values(cell["metrics"], cell["per_defect"], train_seconds=peer["fit_seconds"][m])}
            for m, cell in peer["modalities"].items()]


def mean_std(values: list[Any]) -> dict[str, float] | None:
    """Mean, population std and count of the finite ``values``; None when there is none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    return {"mean": float(np.mean(finite)), "std": float(np.std(finite)), "n": len(finite)}


def _category_cells(mine: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for r in mine for k in r["values"]})
    cells = {k: mean_std([r["values"].get(k) for r in mine]) for k in keys}
    return {k: v for k, v in cells.items() if v is not None}


def summarize(rows: list[dict[str, Any]], variants: list[str], categories: list[str]) -> dict[str, Any]:
    """Per variant: mean ± std over seeds per category, and over seeds of the mean over categories.

    The mean category uses only the seeds done for every category, and the keys of
    :data:`OVERALL_KEYS` (defect types differ from one category to the next; their worst
    one, ``worst_defect``, does not).
    """
    table: dict[str, Any] = {}
    for name in variants:
        mine = [r for r in rows if r["variant"] == name and r["category"] in categories]
        if not mine:
            continue
        seeds = sorted({r["seed"] for r in mine})
        complete = [s for s in seeds if {r["category"] for r in mine if r["seed"] == s} >= set(categories)]
        per_category = {c: _category_cells([r for r in mine if r["category"] == c])
                        for c in categories if any(r["category"] == c for r in mine)}
        overall = {}
        for key in OVERALL_KEYS:
            per_seed = [mean_std([r["values"].get(key) for r in mine if r["seed"] == s]) for s in complete]
            cell = mean_std([c["mean"] for c in per_seed if c is not None])
            if cell is not None:
                overall[key] = cell
        table[name] = {"seeds": seeds, "seeds_complete": complete, "categories": per_category, "mean": overall}
    return table


def variants(configs: list[str], with_peer: bool) -> list[str]:
    ours = [f"{c} / {s}" for c in configs for s in SCORERS]
    return ours + ([f"{PEER} {m}" for m in PEER_MODALITIES] if with_peer else [])


def fmt(cell: dict[str, float] | None, digits: int = 3) -> str:
    if not cell:
        return "–"
    mean = f"{cell['mean']:.{digits}f}"
    return f"{mean} ± {cell['std']:.{digits}f}" if cell["n"] > 1 else mean


def _cell(table: dict[str, Any], variant: str, category: str, key: str) -> dict[str, float] | None:
    return table.get(variant, {}).get("categories", {}).get(category, {}).get(key)


def check_targets(table: dict[str, Any], categories: list[str]) -> list[str]:
    """Per category, the real-data targets of ``rgb+depth / fused`` as PASS / FAIL lines
    (SKIP where a run they compare with is missing)."""
    lines: list[str] = []
    full, rgb, depth = (f"{c} / {TARGET_SCORER}" for c in ("rgb+depth", "rgb", "depth"))
    peer = f"{PEER} fused"

    def verdict(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'FAIL'}: {text}")

    for category in categories:
        image, aupro = _cell(table, full, category, "image_auroc"), _cell(table, full, category, "aupro_30")
        if image is None:
            lines.append(f"SKIP: {category}: no {full} run, no target checked")
            continue
        verdict(image["mean"] >= 0.95 and image["std"] <= 0.01,
                f"{category}: {full} image AUROC {fmt(image)} over {image['n']} seed(s) "
                "(target mean >= 0.95, std <= 0.01)")
        if aupro is not None:
            verdict(aupro["mean"] >= 0.98, f"{category}: {full} AU-PRO@0.3 {fmt(aupro)} (target >= 0.98)")
        defects = {k.removeprefix(DEFECT): v for k, v in table[full]["categories"][category].items()
                   if k.startswith(DEFECT)}
        if defects:
            listing = ", ".join(f"{d} {v['mean']:.3f}" for d, v in sorted(defects.items()))
            verdict(all(v["mean"] >= 0.90 for v in defects.values()),
                    f"{category}: {full} image AUROC of every defect type >= 0.90: {listing}")
        for key, label in (("image_auroc", "image AUROC"), ("aupro_30", "AU-PRO@0.3")):
            mine, theirs = _cell(table, full, category, key), _cell(table, peer, category, key)
            if mine is None or theirs is None:
                lines.append(f"SKIP: {category}: {full} ahead of {peer} on {label} (no {peer} run)")
                continue
            verdict(mine["mean"] > theirs["mean"],
                    f"{category}: {full} {label} {fmt(mine)} ahead of {peer} {fmt(theirs)}")
        single = _cell(table, rgb, category, "image_auroc")
        if single is None:
            lines.append(f"SKIP: {category}: {full} ahead of {rgb} (no rgb run)")
        else:
            verdict(image["mean"] > single["mean"],
                    f"{category}: {full} image AUROC {fmt(image)} ahead of {rgb} {fmt(single)}")
        alone = _cell(table, depth, category, "image_auroc")
        if alone is None:
            lines.append(f"SKIP: {category}: {depth} image AUROC >= 0.80 (no depth run)")
        else:
            verdict(alone["mean"] >= 0.80, f"{category}: {depth} image AUROC {fmt(alone)} (target >= 0.80)")
    return lines


COLUMNS = (("image_auroc", "image AUROC"), ("image_ap", "image AP"), ("pixel_auroc", "pixel AUROC"),
           ("aupro_30", "AU-PRO@0.3"), ("aupro_1", "AU-PRO@0.01"))
TAIL = (("worst_defect", "worst defect"), ("fpr", "FPR@thr"), ("recall", "recall@thr"))


def _row(cells: dict[str, Any], columns: list[tuple[str, str]], seeds: int) -> str:
    seconds = cells.get("train_seconds")
    text = " | ".join(fmt(cells.get(k)) for k, _ in columns)
    return f"{text} | {fmt(seconds, 0)} | {seeds} |"


def category_markdown(table: dict[str, Any], category: str) -> str:
    """One row per variant for ``category``: headline metrics, each defect type, threshold, time."""
    defects = sorted({k for entry in table.values() for k in entry["categories"].get(category, {})
                      if k.startswith(DEFECT)})
    columns = [*COLUMNS, *((k, k.removeprefix(DEFECT)) for k in defects), *TAIL]
    lines = ["| variant | " + " | ".join(label for _, label in columns) + " | train s | seeds |",
             "|---" * (len(columns) + 3) + "|"]
    for name, entry in table.items():
        cells = entry["categories"].get(category)
        if cells:
            lines.append(f"| {name} | " + _row(cells, columns, max(c["n"] for c in cells.values())))
    return "\n".join(lines) + "\n"


def mean_markdown(table: dict[str, Any]) -> str:
    """One row per variant: mean over seeds of the mean over categories."""
    columns = [*COLUMNS, *TAIL]
    lines = ["| variant | " + " | ".join(label for _, label in columns) + " | train s | seeds |",
             "|---" * (len(columns) + 3) + "|"]
    for name, entry in table.items():
        if entry["mean"]:
            lines.append(f"| {name} | " + _row(entry["mean"], columns, len(entry["seeds_complete"])))
    return "\n".join(lines) + "\n"


def published_markdown(table: dict[str, Any], category: str) -> str:
    """Ours and the peer as measured here beside the published figures for ``category`` ('' if none)."""
    published = PUBLISHED.get(category)
    if not published:
        return ""
    keys = (("image_auroc", "image AUROC"), ("pixel_auroc", "pixel AUROC"), ("aupro_30", "AU-PRO@0.3"))
    lines = ["| method | source | " + " | ".join(label for _, label in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for name in (f"rgb+depth / {TARGET_SCORER}", f"{PEER} fused", f"{PEER} rgb"):
        if _cell(table, name, category, "image_auroc"):
            lines.append(f"| {name} | measured here | "
                         + " | ".join(fmt(_cell(table, name, category, k)) for k, _ in keys) + " |")
    for name, figures in published.items():
        cells = " | ".join(f"{figures[k]:.3f}" if k in figures else "–" for k, _ in keys)
        lines.append(f"| {name} | {PUBLISHED_SOURCE} | {cells} |")
    return "\n".join(lines) + "\n"


def markdown(table: dict[str, Any], categories: list[str], targets: list[str], machine: dict[str, Any]) -> str:
    """The whole Markdown report: per category, the mean over categories, published figures, targets."""
    parts = [(f"`{machine['command']}` on {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
              f"{machine['date']}. Cells: mean ± std over seeds. FPR / recall at the validation threshold. "
              "train s: training seconds (PatchCore: fit seconds).\n")]
    for category in categories:
        parts.append(f"\n## {category}\n\n" + category_markdown(table, category))
        published = published_markdown(table, category)
        if published:
            parts.append(f"\nPublished figures beside ours (quoted, not re-measured):\n\n{published}")
    parts.append("\n## mean over categories\n\n" + mean_markdown(table))
    parts.append("\n## targets\n\n" + "\n".join(f"- {t}" for t in targets) + "\n")
    return "".join(parts)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def headline(label: str, cell: dict[str, Any]) -> str:
    """One progress line of a scored cell: the headline metrics and the worst defect type."""
    m = cell["metrics"]
    text = (f"    {label:24s} image AUROC {m['image_auroc']:.3f}  pixel AUROC {m['pixel_auroc']:.3f}  "
            f"AU-PRO@0.3 {m['aupro_30']:.3f}  @0.01 {m['aupro_1']:.3f}")
    at = cell.get("at_threshold")
    if at:
        text += f"  FPR {at['fpr']:.3f} recall {at['recall']:.3f}"
    if cell["per_defect"]:
        worst = min(cell["per_defect"], key=lambda d: cell["per_defect"][d])
        text += f"  worst {worst} {cell['per_defect'][worst]:.3f}"
    return text


# ----------------------------------------------------------------------------- the command line

PATH_FLAGS = {"--data-root": "ROOT", "--work": "WORK", "--out": "OUT"}


def portable_command(argv: list[str]) -> str:
    """The command line as it can be published: this machine's paths become ROOT, WORK, OUT.

    ``--summary-only`` is left out: the full command reuses every result and writes the same summary.
    """
    words, hide = ["python", "bench/real.py"], None
    for word in (w for w in argv if w != "--summary-only"):
        flag, eq, _ = word.partition("=")
        if hide:
            words.append(hide)
            hide = None
        elif eq and flag in PATH_FLAGS:
            words.append(f"{flag}={PATH_FLAGS[flag]}")
        else:
            words.append(word)
            hide = PATH_FLAGS.get(word)
    return shlex.join(words)


def portable_run(run: dict[str, Any], work: Path) -> dict[str, Any]:
    """A run record for the summary: its model file relative to WORK, not this machine's path."""
    model = Path(run.get("model", ""))
    return {**run, "model": str(model.relative_to(work)) if model.is_relative_to(work) else model.name}
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="an MVTec 3D-AD root (never copied)")
    parser.add_argument("--categories", nargs="+", default=None, help="default: every category under ROOT")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work-real",
                        help="cache, models and per-run results (not committed)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--name", default="mvtec3d", help="summary files: real_<name>.json and real_<name>.md")
    parser.add_argument("--no-peer", action="store_true", help="do not fit and score PatchCore")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="section.key=value",
                        help="override a parameter of every run (repeatable)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary from --work")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", args.name):
        parser.error(f"--name {args.name!r}: use letters, digits, '_', '.', '+' or '-'")
    try:
        found = find_categories(args.data_root)
    except ValueError as err:
        parser.error(str(err))
    missing = [c for c in args.categories or [] if c not in found]
    if missing:
        parser.error(f"--categories {missing}: not a category folder of {args.data_root} (found {found})")
    args.categories = args.categories or found
    return args


def peer_place(base: Params, work: Path, category: str, seed: int) -> tuple[Params, str, Path]:
    """The peer's params (the ``rgb+depth`` run's), its digest and its result file."""
    from bench.peers import PeerSettings

    params = run_params(base, work, category, "rgb+depth", seed)
    expected = peer_digest(params, asdict(PeerSettings(seed=seed, coreset_ratio=PEER_CORESET_RATIO)))
    return params, expected, peer_path(work, expected, seed, category)


def run_jobs(args: argparse.Namespace, base: Params, work: Path) -> Iterator[str]:
    """Preprocess each category, then train / score every missing run and fit every missing peer.

    Yields progress lines (one per run started, then its headline numbers).
    """
    from bridgenet.preprocess import run_preprocess

    bench = bench_digest(base)
    for category in args.categories:
        params = run_params(base, work, category, args.configs[0], args.seeds[0])
        yield f"preprocess {category} into {params.data.cache_dir}"
        run_preprocess(params)
    jobs = [(seed, category, config) for seed in args.seeds for category in args.categories
            for config in [*args.configs, *([] if args.no_peer else [PEER])]]
    for i, (seed, category, config) in enumerate(jobs, 1):
        tag = f"[{i}/{len(jobs)}] {config} seed {seed} {category}"
        if config == PEER:
            yield from run_peer_job(base, work, category, seed, tag)
            continue
        params = run_params(base, work, category, config, seed)
        path = run_path(work, bench, config, seed, category)
        if current_record(path, params_digest(params)) is not None:
            yield f"{tag}: done before ({path})"
            continue
        saved = stored_training(path, params)
        if saved is not None:
            yield f"{tag}: scoring the saved model again (only scoring keys changed)"
            saved["scores"], saved["test"] = score_run(params, Path(saved["model"]), category)
            saved["params_digest"] = params_digest(params)
            write_json(path, saved)
            for scorer, cell in saved["scores"].items():
                yield headline(f"{config} / {scorer}", cell)
            continue
        yield f"{tag}: training"
        record = train_and_score(params, model_dir(work, bench, config, seed, category), config, seed, category)
        write_json(path, record)
        for scorer, cell in record["scores"].items():
            yield headline(f"{config} / {scorer}", cell)
        yield (f"    trained in {record['train_seconds']:.0f} s (best epoch {record['best_epoch']} of "
               f"{record['epochs']}); wrote {path}")


def run_peer_job(base: Params, work: Path, category: str, seed: int, tag: str) -> Iterator[str]:
    """Fit and score the peer for one seed and category unless a current result exists."""
    params, expected, path = peer_place(base, work, category, seed)
    if current_record(path, expected) is not None:
        yield f"{tag}: done before ({path})"
        return
    yield f"{tag}: fitting on rgb, then on depth"
    record = peer_record(Path(params.data.root), params, category, seed)
    write_json(path, record)
    for modality, cell in record["modalities"].items():
        yield headline(f"{PEER} {modality}", cell)
    fit = record["fit_seconds"]
    yield f"    fitted in {fit['rgb']:.0f} + {fit['depth']:.0f} s; wrote {path}"


def load_results(args: argparse.Namespace, base: Params, work: Path) -> tuple[list[dict], list[dict]]:
    """The current results of the requested runs and peers (others are left out)."""
    bench = bench_digest(base)
    runs, peers = [], []
    for seed in args.seeds:
        for category in args.categories:
            for config in args.configs:
                params = run_params(base, work, category, config, seed)
                record = current_record(run_path(work, bench, config, seed, category), params_digest(params))
                if record is not None:
                    runs.append(record)
            if not args.no_peer:
                _, expected, path = peer_place(base, work, category, seed)
                record = current_record(path, expected)
                if record is not None:
                    peers.append(record)
    return runs, peers


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work.resolve()
    ignored = [s for s in args.sets if s.split("=", 1)[0].strip() in BENCH_KEYS]
    if ignored:
        LOGGER.warning("--set %s: the bench sets %s itself; ignored", ignored, ", ".join(BENCH_KEYS))
    try:
        base = base_params(args.data_root, args.sets)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if not args.summary_only:
        for line in run_jobs(args, base, work):
            print(line, flush=True)
    runs, peers = load_results(args, base, work)
    rows = [row for run in runs for row in run_rows(run)] + [row for peer in peers for row in peer_rows(peer)]
    table = summarize(rows, variants(args.configs, not args.no_peer), args.categories)
    targets = check_targets(table, args.categories)
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "date": date.today().isoformat(),
               "command": portable_command(sys.argv[1:] if argv is None else argv)}
    text = markdown(table, args.categories, targets, machine)
    json_path, md_path = args.out / f"real_{args.name}.json", args.out / f"real_{args.name}.md"
    write_json(json_path, {
        "name": args.name, "machine": machine, "data_root": "ROOT",
        "categories": args.categories, "seeds": args.seeds, "configs": {c: CONFIGS[c] for c in args.configs},
        "set": args.sets, "bench_digest": bench_digest(base), "results": table, "targets": targets,
        "published": {"source": PUBLISHED_SOURCE, "figures": PUBLISHED},
        "runs": [portable_run(run, work) for run in runs], "peers": peers})
    md_path.write_text(text)
    print(text)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
