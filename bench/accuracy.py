"""Accuracy benchmark: scorers, modalities and generators, on two data sets, over seeds, beside a peer.

    python bench/accuracy.py [--seeds 0 1 2] [--configs ...] [--work bench/work] [--out bench/results]

Renders and preprocesses two synthetic data sets under ``--work``: the embedded
default set (``synth`` and ``data`` sections of params.yaml) and its ``hard``
preset, whose goods are the same samples but whose test defects look like nothing
the training-time generators draw (faint stains, discolourations, sub-millimetre
bumps and dents, thin scratches, chipped rims). For every configuration, training
seed and category it trains one model on the goods with ``train_category`` (model
selection and thresholds on validation data only) and scores both test splits
once with each scorer (``discriminator``, ``memory``, ``fused``). Configurations:

    rgb+depth       params.yaml as it is (texture generator on, Gaussian generator off)
    rgb             RGB only
    depth           depth only
    +gaussian       RGB + depth with both generators
    gaussian-only   RGB + depth with the Gaussian generator instead of the texture one
    +gaussian-s0.3  +gaussian with sigma 0.3 instead of the paper's 0.02

The peer, anomalib's PatchCore with the same ImageNet weights on RGB and on the
visible depth, fused late (``bench/peers.py``), is fitted on the same goods and
scored on the same test splits with the same metrics, once per data set and
category (``--no-peer`` skips it; it needs the ``bench`` extra).

A reference row for fusion, ``rgb & depth models / fused``, fuses the ``rgb`` and
``depth`` models of each seed and category late: each model's image scores z-scored
with its own validation goods' scores, the larger of the two (image AUROC only).
It shows what the best of two separately trained single-modality models gives when
nobody knows which modality a defect shows in.

Each (configuration, seed, category) result is written as soon as it exists
(``--work/results``), so an interrupted benchmark resumes where it stopped and
a later call with more seeds only runs what is missing. Runs already published
in ``--out/accuracy.json`` under the same params digest are taken from there
when ``--work`` lacks them (training is deterministic per seed; ``--rerun-published``
trains them anyway). The summary (``--out/accuracy.json``, ``accuracy.md`` and
``accuracy_families.png``) holds mean and standard deviation over the seeds that
are done of image AUROC, pixel AUROC, AU-PRO@0.3 and AU-PRO@0.01 per data set,
configuration, scorer and category, and image AUROC per defect family
(geometric only, appearance only, both).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS: dict[str, list[str]] = {
    "rgb+depth": [],
    "rgb": ["model.modalities=[rgb]"],
    "depth": ["model.modalities=[depth]"],
    "+gaussian": ["anomalies.gaussian.enabled=true"],
    "gaussian-only": ["anomalies.gaussian.enabled=true", "anomalies.texture.enabled=false"],
    # sigma 15 x the paper's: feature-level noise then has a norm near the clean patches'
    # nearest-neighbour spacing in the standardised embedding (see the README)
    "+gaussian-s0.3": ["anomalies.gaussian.enabled=true", "anomalies.gaussian.sigma=0.3"],
}
PRESETS = ("default", "hard")
SCORERS = ("discriminator", "memory", "fused")
PEER = "PatchCore"
PEER_MODALITIES = {"rgb": "rgb", "depth": "depth", "fused": "rgb+depth"}
METRICS = ("image_auroc", "pixel_auroc", "aupro_30", "aupro_1")
FAMILIES = ("geometric", "appearance", "both")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


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
        params = load_params(REPO / "params.yaml", data_overrides(work, preset))
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

    params = load_params(REPO / "params.yaml", [*base_overrides(work), *CONFIGS[config], f"train.seed={seed}"])
    start = time.perf_counter()
    summary = train_category(params, category, out_dir=model_dir(work, config, seed, category))
    train_s = time.perf_counter() - start
    return {
        "config": config, "seed": seed, "category": category,
        "scores": score_model(work, config, seed, category, presets),
        "best_epoch": summary["best_epoch"], "train_seconds": train_s,
        "seconds_per_epoch": summary["seconds_per_epoch"], "memory": summary["memory"],
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
    from bridgenet.train import calibrate_scores

    params = load_params(REPO / "params.yaml", [*base_overrides(work), *CONFIGS[config]])
    model = load_model(model_dir(work, config, seed, category) / "model.pt")
    model.network.fusion_weight = params.model.fusion_weight
    model.network.image_score = params.model.image_score
    model.network.memory_fusion = params.model.memory_fusion
    model.network.smoothing_sigma = params.model.map_smoothing_sigma
    # The scale as training sets it today (the validation split holds goods only), so that a
    # saved model is scored as a freshly trained one would be.
    validation = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    calibrate_scores(model.network, Batch.from_split(validation), torch.device("cpu"), params.eval.batch_size)
    validation_scores = {}  # per scorer, for the late fusion of separate models (:func:`late_fusion_rows`)
    for scorer in SCORERS:
        model.network.scorer = scorer
        image_scores = score_split(model, validation, params.eval.batch_size, torch.device("cpu"))[0]
        validation_scores[scorer] = [float(v) for v in image_scores]
    scores: dict[str, dict[str, Any]] = {}
    for preset in presets:
        test_params = load_params(REPO / "params.yaml", [*data_overrides(work, preset), *CONFIGS[config]])
        split = load_test_split(test_params, category)
        families = defect_families(split.defects)
        scores[preset] = {}
        for scorer in SCORERS:
            model.network.scorer = scorer
            start = time.perf_counter()
            evaluation, _ = evaluate_category(params, model, split, torch.device("cpu"))
            scores[preset][scorer] = {
                "metrics": {k: float(evaluation.metrics[k]) for k in METRICS},
                "families": {k: float(v) for k, v in evaluation.per_family.items()},
                "per_defect": {k: float(v) for k, v in evaluation.per_defect.items()},
                "test_seconds": time.perf_counter() - start,
                "n_test": len(evaluation.labels),
                "threads": torch.get_num_threads(),
                # per test sample, for the late fusion of separate models (:func:`late_fusion_rows`)
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

    params = load_params(REPO / "params.yaml", data_overrides(work, PRESETS[0]))
    others = {p: Path(load_params(REPO / "params.yaml", data_overrides(work, p)).data.cache_dir)
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
                               for m in PEER_MODALITIES}}]
    for preset, cells in result["other_tests"].items():
        records.append({"preset": preset, "category": category, **timings, "modalities": cells})
    return records


def entries(runs: list[dict[str, Any]], peers: list[dict[str, Any]], preset: str) -> list[dict[str, Any]]:
    """Flat rows (variant, seed, category, metrics, families) of one preset, ours and the peer's."""
    rows = []
    for run in runs:
        for scorer, cell in run["scores"].get(preset, {}).items():
            rows.append({"variant": f"{run['config']} / {scorer}", "seed": run["seed"],
                         "category": run["category"], "metrics": cell["metrics"], "families": cell["families"],
                         "train_seconds": run["train_seconds"]})
    for peer in peers:
        if peer["preset"] != preset:
            continue
        for key, modality in PEER_MODALITIES.items():
            cell = peer["modalities"][key]
            rows.append({"variant": f"{PEER} {modality}", "seed": 0, "category": peer["category"],
                         "metrics": cell["metrics"], "families": cell["families"],
                         "train_seconds": peer["fit_seconds"][key]})
    return rows


def late_fusion_rows(runs: list[dict[str, Any]], preset: str, scorer: str = "fused") -> list[dict[str, Any]]:
    """The rgb-only and depth-only models of a seed and category, fused late: a reference for fusion.

    Each model's image scores are z-scored with the mean and standard deviation of its
    own scores of the validation goods (never the test split), and the larger of the two
    is the sample's score. It shows what fusing the two separately trained single-modality
    models would give, beside one model trained on both; image AUROC only (no maps).
    """
    from bridgenet.metrics import GOOD, auroc_per_defect, image_auroc

    depths = {(r["seed"], r["category"]): r for r in runs if r["config"] == "depth"}
    rows = []
    for rgb in (r for r in runs if r["config"] == "rgb"):
        seed, category = rgb["seed"], rgb["category"]
        depth = depths.get((seed, category))
        if depth is None:
            continue
        cells = [r["scores"].get(preset, {}).get(scorer, {}) for r in (rgb, depth)]
        if not all("image_scores" in c for c in cells) or cells[0]["sample_families"] != cells[1]["sample_families"]:
            continue  # runs scored before per-sample scores were kept, or on different test splits
        z = [(np.asarray(c["image_scores"]) - np.mean(c["validation_scores"]))
             / max(float(np.std(c["validation_scores"])), 1e-6) for c in cells]
        fused = np.maximum(*z)
        families = cells[0]["sample_families"]
        labels = np.asarray([f != GOOD for f in families])
        rows.append({"variant": f"{LATE} / {scorer}", "seed": seed, "category": category,
                     "metrics": {"image_auroc": float(image_auroc(fused, labels))},
                     "families": {k: float(v) for k, v in auroc_per_defect(fused, families).items()},
                     "train_seconds": rgb["train_seconds"] + depth["train_seconds"]})
    return rows


LATE = "rgb & depth models"  # late fusion of the two single-modality models (:func:`late_fusion_rows`)


def variants(configs: list[str], with_peer: bool) -> list[str]:
    ours = [f"{c} / {s}" for c in configs for s in SCORERS]
    if "rgb" in configs and "depth" in configs:
        ours.append(f"{LATE} / fused")
    return ours + ([f"{PEER} {m}" for m in PEER_MODALITIES.values()] if with_peer else [])


SCORING_KEYS = ("scorer", "fusion_weight", "image_score", "memory_fusion", "map_smoothing_sigma")  # scores, not training
CAP_KEYS = ("max_bank",)  # model.memory caps: they change a run only where they bind


def params_digest(part: str = "all") -> str:
    """Results are reused only while the params that shape them are unchanged.

    ``train``: every section a run reads except the scoring keys of ``model`` (each run
    is scored with every scorer), the memory bank's caps (a run is reused only where
    :func:`caps_unbound` shows they did not bind) and the per-category overrides, which
    the benchmark does not apply. ``score``: the scoring keys except ``scorer``.
    ``all``: both.
    """
    from bridgenet.config import load_params

    params = load_params(REPO / "params.yaml").to_dict()
    for key in CAP_KEYS:
        params["model"]["memory"].pop(key)
    scoring = {k: params["model"].pop(k) for k in SCORING_KEYS}
    scoring.pop("scorer")
    shaping = {k: params[k] for k in ("data", "synth", "model", "anomalies", "train", "eval")}
    # the test splits scored: the default set's sizes are in ``synth``, the hard preset's here
    scoring["test_sizes"] = TEST_SIZES
    chosen = {"train": shaping, "score": scoring, "all": [shaping, scoring]}[part]
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


def caps_unbound(run: dict[str, Any], memory: Any) -> bool:
    """Whether ``run``'s memory bank is the one ``memory`` (``model.memory``) would build.

    It is when neither the cap the run was trained under nor ``memory``'s bound: every bank
    holds the uncapped share of its candidates. Runs whose bank was chosen among a random
    pool of the candidates (``memory_caps.max_candidates``, before the selection saw every
    candidate) are never reused where the pool was smaller than the candidates.
    """
    info = run.get("memory") or {}
    stored_pool = (run.get("memory_caps") or {}).get("max_candidates", 0)
    modalities = [k.removesuffix("_candidates") for k in info if k.endswith("_candidates")]
    if not modalities:
        return False
    for m in modalities:
        candidates, bank = int(info[f"{m}_candidates"]), int(info[f"{m}_bank"])
        uncapped = max(1, round(memory.coreset_ratio * candidates))
        if bank != uncapped or uncapped > memory.max_bank:
            return False
        if 0 < stored_pool < candidates:
            return False
    return True


def peer_current(record: dict[str, Any], train_digest: str) -> bool:
    """A peer record is current when its goods and settings and the test splits it scored are."""
    return record.get("train_digest") == train_digest and record.get("test_sizes") == TEST_SIZES


def published_runs(out: Path, digest: str) -> list[dict[str, Any]]:
    """Per-run results of an earlier summary in ``out`` that were made under the same params digest."""
    path = out / "accuracy.json"
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not valid JSON ({err}); move it away or pass --rerun-published") from err
    return [r for r in runs if r.get("params_digest") == digest]


def run_name(run: dict[str, Any]) -> str:
    if "config" in run:
        return f"{run['config']}-seed{run['seed']}-{run['category']}.json"
    return f"peer-{run['preset']}-{run['category']}.json"


def seed_work_results(results_dir: Path, runs: list[dict[str, Any]]) -> int:
    """Write each run that ``results_dir`` lacks; returns how many were written."""
    written = 0
    for run in runs:
        path = results_dir / run_name(run)
        if not path.is_file():
            path.write_text(json.dumps(run, indent=2) + "\n")
            written += 1
    return written


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarize(rows: list[dict[str, Any]], names: list[str], categories: list[str]) -> dict[str, Any]:
    """Mean and standard deviation over seeds, per variant and category, plus the mean category."""
    table: dict[str, Any] = {}
    for name in names:
        mine_all = [r for r in rows if r["variant"] == name]
        if not mine_all:
            continue
        per_category = {}
        for category in categories:
            mine = [r for r in mine_all if r["category"] == category]
            if not mine:
                continue
            per_category[category] = {
                **{m: mean_std([r["metrics"][m] for r in mine]) for m in METRICS if m in mine[0]["metrics"]},
                **{f"image_auroc_{f}": mean_std([r["families"][f] for r in mine if f in r["families"]])
                   for f in FAMILIES if any(f in r["families"] for r in mine)},
                "seconds_per_run": float(np.mean([r["train_seconds"] for r in mine])),
            }
        seeds = sorted({r["seed"] for r in mine_all})
        # Mean over categories per seed, then mean/std of that over seeds.
        complete = [s for s in seeds if {r["category"] for r in mine_all if r["seed"] == s} >= set(categories)]
        overall = {}
        for key in [*METRICS, *(f"image_auroc_{f}" for f in FAMILIES)]:
            per_seed = []
            for s in complete:
                vals = [r["metrics"][key] if key in r["metrics"] else r["families"].get(key.removeprefix("image_auroc_"))
                        for r in mine_all if r["seed"] == s and r["category"] in categories]
                vals = [v for v in vals if v is not None]
                if vals:
                    per_seed.append(float(np.mean(vals)))
            if per_seed:
                overall[key] = mean_std(per_seed)
        table[name] = {"seeds": seeds, "seeds_complete": complete, "categories": per_category, "mean": overall}
    return table


def fmt(cell: dict[str, float] | None) -> str:
    if not cell:
        return "–"
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}" if cell["n"] > 1 else f"{cell['mean']:.3f}"


COLUMNS = (*METRICS, *(f"image_auroc_{f}" for f in FAMILIES))


def markdown(table: dict[str, Any], categories: list[str], mean_only: bool = False) -> str:
    """One row per variant and category (or only the mean category)."""
    header = ("| variant | category | image AUROC | pixel AUROC | AU-PRO@0.3 | AU-PRO@0.01 "
              "| geometric | appearance | both | seeds |")
    lines = [header, "|" + "---|" * 10]
    for name, entry in table.items():
        for category in (["mean"] if mean_only else [*categories, "mean"]):
            cell = entry["mean"] if category == "mean" else entry["categories"].get(category)
            if not cell:
                continue
            seeds = len(entry["seeds_complete"]) if category == "mean" else cell["image_auroc"]["n"]
            label = f"**{category}**" if category == "mean" else category
            lines.append(f"| {name} | {label} | " + " | ".join(fmt(cell.get(k)) for k in COLUMNS)
                         + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def plot_families(tables: dict[str, dict[str, Any]], names: list[str], path: Path) -> None:
    """Grouped bars per data set: mean image AUROC per defect family for each variant in ``names``."""
    from matplotlib.figure import Figure

    presets = [p for p in tables if any(tables[p].get(n, {}).get("mean") for n in names)]
    if not presets:
        return
    fig = Figure(figsize=(11, 3.6 * len(presets)), dpi=110)
    for row, preset in enumerate(presets, 1):
        ax = fig.add_subplot(len(presets), 1, row)
        shown = [n for n in names if tables[preset].get(n, {}).get("mean")]
        width = 0.8 / len(shown)
        for i, name in enumerate(shown):
            cells = [tables[preset][name]["mean"].get(f"image_auroc_{f}") for f in FAMILIES]
            means = [c["mean"] if c else np.nan for c in cells]
            stds = [c["std"] if c else 0.0 for c in cells]
            ax.bar(np.arange(len(FAMILIES)) + i * width, means, width, yerr=stds, label=name, capsize=2)
        ax.set_xticks(np.arange(len(FAMILIES)) + width * (len(shown) - 1) / 2,
                      [f"{f} defects" for f in FAMILIES])
        ax.set_ylabel("image AUROC")
        ax.set_ylim(0.4, 1.0)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title(f"{preset} data: image AUROC per defect family (mean over categories)")
    fig.tight_layout()
    fig.savefig(path)


def _mean(table: dict[str, Any], name: str, key: str) -> dict[str, float] | None:
    return table.get(name, {}).get("mean", {}).get(key)


def check_targets(tables: dict[str, dict[str, Any]], scorer: str) -> list[str]:
    """The benchmark's targets for the default ``scorer``, as lines of text (PASS / FAIL)."""
    lines = []

    def verdict(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'FAIL'}: {text}")

    full = f"rgb+depth / {scorer}"
    default = tables.get("default", {})
    for key, target in (("image_auroc", 0.99), ("aupro_30", 0.97)):
        cell = _mean(default, full, key)
        if cell:
            verdict(cell["mean"] >= target and cell["std"] <= 0.01,
                    f"default data, {full}: mean {key} {fmt(cell)} (target >= {target}, std <= 0.01)")
    for family in FAMILIES:
        cell = _mean(default, full, f"image_auroc_{family}")
        if cell:
            verdict(cell["mean"] >= 0.98, f"default data, {full}: {family} defects {fmt(cell)} (target >= 0.98)")
    for preset, table in tables.items():
        for family in FAMILIES:
            mine = _mean(table, full, f"image_auroc_{family}")
            singles = {m: _mean(table, f"{m} / {scorer}", f"image_auroc_{family}") for m in ("rgb", "depth")}
            singles = {m: c for m, c in singles.items() if c}
            if mine and singles:
                best = max(singles, key=lambda m: singles[m]["mean"])
                verdict(mine["mean"] >= singles[best]["mean"] - 1e-9,
                        f"{preset} data, {family} defects: rgb+depth {mine['mean']:.3f} >= better single "
                        f"modality ({best} {singles[best]['mean']:.3f})")
    hard = tables.get("hard", {})
    fused = _mean(hard, "rgb+depth / fused", "image_auroc")
    if fused:
        for other in ("rgb+depth / discriminator", "rgb+depth / memory", f"{PEER} rgb+depth"):
            cell = _mean(hard, other, "image_auroc")
            if cell:
                verdict(fused["mean"] >= cell["mean"],
                        f"hard data: fused image AUROC {fmt(fused)} >= {other} {fmt(cell)}")
    return lines


def reproduce_command(seeds: list[int], configs: list[str], categories: list[str] | None) -> str:
    """The command that trains and scores the runs of this summary (not the flags that only re-summarise)."""
    words = ["python bench/accuracy.py", "--seeds", *map(str, seeds)]
    if configs != list(CONFIGS):
        words += ["--configs", *configs]
    if categories:
        words += ["--categories", *categories]
    return " ".join(words)


def readme_block(tables: dict[str, dict[str, Any]], categories: list[str], targets: list[str],
                 seeds: list[int], machine: dict[str, Any]) -> str:
    parts = [(f"`{machine['command']}` on {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
              f"{machine['date']}.\n\n"
              f"Training seeds done: {seeds}. Each model is trained once on the goods and scored once per data "
              "set and scorer; epochs and thresholds come from validation data. Cells: mean ± std over seeds of "
              "the mean over categories. Columns geometric / appearance / both: image AUROC on the defect "
              f"families that only depth, only RGB, or both can see. `{PEER}` is anomalib's, with the same "
              "ImageNet weights, on RGB and on the visible depth, fused late (one fit; no seeds). "
              f"`{LATE} / fused` fuses our RGB-only and depth-only models of each seed late (each z-scored on "
              "its own validation goods, the larger wins; image AUROC only).")]
    for preset, table in tables.items():
        parts.append(f"\n\n**{preset} data**\n\n" + markdown(table, categories, mean_only=True))
    parts.append("\n" + "\n".join(f"- {t}" for t in targets))
    return "".join(parts)


def update_readme(block: str, path: Path = REPO / "README.md") -> bool:
    """Replace the text between the README's accuracy markers; False when they are missing."""
    start, end = "<!-- accuracy:start -->", "<!-- accuracy:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + block + "\n" + end + rest.split(end, 1)[1])
    return True


_FLAT_LIST = re.compile(r"\[\s+([^\[\]{}]*?)\s+\]")


def readable_json(payload: Any) -> str:
    """JSON indented by two, with every list of plain values (per-sample scores) on one line."""
    return _FLAT_LIST.sub(lambda m: "[" + ", ".join(v.strip() for v in m.group(1).split(",\n")) + "]",
                          json.dumps(payload, indent=2))


def write_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(readable_json(payload) + "\n")
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["rgb+depth", "rgb", "depth"], choices=list(CONFIGS))
    parser.add_argument("--categories", nargs="+", default=None, help="default: data.categories")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work",
                        help="data, models and per-run results (not committed)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-peer", action="store_true", help="do not fit and score the peer")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary from --work")
    parser.add_argument("--rescore", action="store_true",
                        help="score every saved model again (after a change to how models score), no training")
    parser.add_argument("--readme", action="store_true", help="also rewrite the README's accuracy block")
    parser.add_argument("--rerun-published", action="store_true",
                        help="train again the runs that --out/accuracy.json already holds")
    args = parser.parse_args()

    import torch

    from bridgenet.config import load_params

    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = load_params(REPO / "params.yaml")
    categories = args.categories or list(defaults.data.categories)
    work = args.work.resolve()
    results_dir = work / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    digest, train_digest = params_digest(), params_digest("train")
    memory = defaults.model.memory
    if not args.rerun_published:
        reused = seed_work_results(results_dir, published_runs(args.out, digest))
        if reused:
            print(f"{reused} runs taken from {args.out / 'accuracy.json'} (same params digest {digest})")
    if not args.summary_only:
        prepare_data(work)
        jobs = [(c, s, k) for s in args.seeds for c in args.configs for k in categories]
        for i, category in enumerate([] if args.no_peer else categories, 1):
            paths = [results_dir / run_name({"preset": p, "category": category}) for p in PRESETS]
            if all(p.is_file() and peer_current(json.loads(p.read_text()), train_digest) for p in paths):
                continue
            print(f"[peer {i}/{len(categories)}] {PEER} {category}", flush=True)
            for path, record in zip(paths, run_peer(work, category)):
                write_atomic(path, {**record, "train_digest": train_digest, "test_sizes": TEST_SIZES})
        for i, (config, seed, category) in enumerate(jobs, 1):
            path = results_dir / f"{config}-seed{seed}-{category}.json"
            done = json.loads(path.read_text()) if path.is_file() else {}
            trained = done.get("train_digest") == train_digest and caps_unbound(done, memory)
            if trained and done.get("params_digest") == digest and not args.rescore:
                continue
            saved = model_dir(work, config, seed, category) / "model.pt"
            if trained and saved.is_file():
                print(f"[{i}/{len(jobs)}] {config} seed {seed} {category}: scoring the saved model again",
                      flush=True)
                result = {**done, "scores": score_model(work, config, seed, category)}
            else:
                print(f"[{i}/{len(jobs)}] {config} seed {seed} {category}", flush=True)
                result = run_one(work, config, seed, category)
            result.update(params_digest=digest, train_digest=train_digest)
            write_atomic(path, result)
            for preset, cells in result["scores"].items():
                for scorer, cell in cells.items():
                    print(f"    {preset:8s} {scorer:13s} {json.dumps(cell['metrics'])} "
                          f"{json.dumps(cell['families'])}", flush=True)
            print(f"    trained in {result['train_seconds']:.0f} s", flush=True)
    loaded = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    loaded = [r for r in loaded if r["category"] in categories and (
        r.get("params_digest") == digest and caps_unbound(r, memory) if "config" in r
        else peer_current(r, train_digest))]
    runs = [r for r in loaded if "config" in r and r["config"] in args.configs and r["seed"] in args.seeds]
    peers = [] if args.no_peer else [r for r in loaded if "preset" in r and "config" not in r]
    names = variants(args.configs, bool(peers))
    tables = {p: summarize(entries(runs, peers, p) + late_fusion_rows(runs, p), names, categories) for p in PRESETS}
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
               "date": date.today().isoformat(),
               "command": reproduce_command(args.seeds, args.configs, args.categories)}
    targets = check_targets(tables, defaults.model.scorer)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "accuracy.json", {
        "machine": machine, "params_digest": digest, "default_scorer": defaults.model.scorer,
        "configs": {c: CONFIGS[c] for c in args.configs}, "categories": categories,
        "results": tables, "targets": targets, "runs": [*runs, *peers]})
    text = "".join(f"## {p} data\n\n" + markdown(t, categories) + "\n" for p, t in tables.items())
    (args.out / "accuracy.md").write_text(text)
    shown = [f"{c} / {defaults.model.scorer}" for c in args.configs[:3]] + [
        n for n in names if n.startswith("rgb+depth /") and not n.endswith(defaults.model.scorer)] + [
        n for n in names if n.startswith(LATE)]
    plot_families(tables, [*shown, *(n for n in names if n == f"{PEER} rgb+depth")],
                  args.out / "accuracy_families.png")
    print(text)
    print("\n".join(targets))
    block = readme_block(tables, categories, targets, sorted({r["seed"] for r in runs}), machine)
    if args.readme and not update_readme(block):
        print("README.md has no accuracy markers; left unchanged")
    print(f"wrote {args.out / 'accuracy.json'}, accuracy.md, accuracy_families.png")


if __name__ == "__main__":
    main()
