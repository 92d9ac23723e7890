"""Accuracy benchmark on the default synthetic data: modalities and generators, over seeds.

    python bench/accuracy.py [--seeds 0 1 2] [--configs ...] [--work bench/work] [--out bench/results]

Renders and preprocesses the embedded default data set once (``synth`` and
``data`` sections of params.yaml, under ``--work``), then for every
configuration, training seed and category trains one model with
``train_category`` (model selection on validation data only) and scores the
test split once. Configurations:

    rgb+depth       params.yaml as it is (texture generator on, Gaussian generator off)
    rgb             RGB only
    depth           depth only
    +gaussian       RGB + depth with both generators
    gaussian-only   RGB + depth with the Gaussian generator instead of the texture one

Each (configuration, seed, category) result is written as soon as it exists
(``--work/results``), so an interrupted benchmark resumes where it stopped and
a later call with more seeds only runs what is missing. Runs already published
in ``--out/accuracy.json`` under the same params.yaml digest are taken from
there when ``--work`` lacks them (training is deterministic per seed, so
rerunning them would give the same numbers; ``--rerun-published`` does it
anyway). The summary
(``--out/accuracy.json``, ``accuracy.md`` and ``accuracy_families.png``) holds
mean and standard deviation over the seeds that are done of image AUROC, pixel
AUROC, AU-PRO@0.3 and AU-PRO@0.01 per category, and image AUROC per defect
family (geometric only, appearance only, both).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
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
}
METRICS = ("image_auroc", "pixel_auroc", "aupro_30", "aupro_1")
FAMILIES = ("geometric", "appearance", "both")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def base_overrides(work: Path) -> list[str]:
    data = work / "data"
    return [f"synth.out={data / 'mvtec3d_synth'}", f"data.root={data / 'mvtec3d_synth'}",
            f"data.cache_dir={data / 'cache'}", "train.device=cpu"]


def prepare_data(work: Path) -> None:
    """Render and preprocess the default data set under ``work`` (both steps skip unchanged work)."""
    from bridgenet.config import load_params
    from bridgenet.data.synthetic import synthesize
    from bridgenet.preprocess import run_preprocess

    params = load_params(REPO / "params.yaml", base_overrides(work))
    root = Path(params.synth.out)
    if not (root / ".bench-complete").is_file():
        synthesize(params.synth, root)
        (root / ".bench-complete").write_text("done\n")
    run_preprocess(params)


def run_one(work: Path, config: str, seed: int, category: str) -> dict[str, Any]:
    """Train and test one model; returns metrics, per-family image AUROC and timings."""
    import torch

    from bridgenet.config import load_params
    from bridgenet.evaluate import evaluate_category, load_test_split
    from bridgenet.model.io import load_model
    from bridgenet.train import train_category

    params = load_params(REPO / "params.yaml", [*base_overrides(work), *CONFIGS[config], f"train.seed={seed}"])
    out_dir = work / "models" / config / f"seed{seed}" / category
    start = time.perf_counter()
    summary = train_category(params, category, out_dir=out_dir)
    train_s = time.perf_counter() - start
    model = load_model(out_dir / "model.pt")
    start = time.perf_counter()
    evaluation, _ = evaluate_category(params, model, load_test_split(params, category), torch.device("cpu"))
    return {
        "config": config, "seed": seed, "category": category,
        "metrics": {k: float(evaluation.metrics[k]) for k in METRICS},
        "families": {k: float(v) for k, v in evaluation.per_family.items()},
        "best_epoch": summary["best_epoch"],
        "train_seconds": train_s,
        "test_seconds": time.perf_counter() - start,
        "n_test": len(evaluation.labels),
    }


def params_digest() -> str:
    """Results are reused only while params.yaml is unchanged."""
    return hashlib.sha256((REPO / "params.yaml").read_bytes()).hexdigest()[:16]


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


def seed_work_results(results_dir: Path, runs: list[dict[str, Any]]) -> int:
    """Write each run that ``results_dir`` lacks; returns how many were written."""
    written = 0
    for run in runs:
        path = results_dir / f"{run['config']}-seed{run['seed']}-{run['category']}.json"
        if not path.is_file():
            path.write_text(json.dumps(run, indent=2) + "\n")
            written += 1
    return written


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}


def summarize(results: list[dict[str, Any]], configs: list[str], categories: list[str]) -> dict[str, Any]:
    """Mean and standard deviation over seeds, per configuration and category, plus the mean category."""
    table: dict[str, Any] = {}
    for config in configs:
        rows = [r for r in results if r["config"] == config]
        if not rows:
            continue
        per_category = {}
        for category in categories:
            mine = [r for r in rows if r["category"] == category]
            if not mine:
                continue
            per_category[category] = {
                **{m: mean_std([r["metrics"][m] for r in mine]) for m in METRICS},
                **{f"image_auroc_{f}": mean_std([r["families"][f] for r in mine if f in r["families"]])
                   for f in FAMILIES if any(f in r["families"] for r in mine)},
                "seconds_per_run": float(np.mean([r["train_seconds"] for r in mine])),
            }
        seeds = sorted({r["seed"] for r in rows})
        # Mean over categories per seed, then mean/std of that over seeds.
        complete = [s for s in seeds if {r["category"] for r in rows if r["seed"] == s} >= set(categories)]
        overall = {}
        for key in [*METRICS, *(f"image_auroc_{f}" for f in FAMILIES)]:
            per_seed = []
            for s in complete:
                vals = [r["metrics"][key] if key in r["metrics"] else r["families"].get(key.removeprefix("image_auroc_"))
                        for r in rows if r["seed"] == s]
                vals = [v for v in vals if v is not None]
                if vals:
                    per_seed.append(float(np.mean(vals)))
            if per_seed:
                overall[key] = mean_std(per_seed)
        table[config] = {"seeds": seeds, "seeds_complete": complete, "categories": per_category, "mean": overall}
    return table


def fmt(cell: dict[str, float] | None) -> str:
    if not cell:
        return "–"
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}" if cell["n"] > 1 else f"{cell['mean']:.3f}"


def markdown(table: dict[str, Any], categories: list[str]) -> str:
    header = ("| config | category | image AUROC | pixel AUROC | AU-PRO@0.3 | AU-PRO@0.01 "
              "| geometric | appearance | both | seeds |")
    lines = [header, "|" + "---|" * 10]
    for config, entry in table.items():
        for category in [*categories, "mean"]:
            cell = entry["mean"] if category == "mean" else entry["categories"].get(category)
            if not cell:
                continue
            seeds = len(entry["seeds_complete"]) if category == "mean" else cell["image_auroc"]["n"]
            name = f"**{category}**" if category == "mean" else category
            lines.append(f"| {config} | {name} | " + " | ".join(fmt(cell.get(k)) for k in (
                *METRICS, *(f"image_auroc_{f}" for f in FAMILIES))) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def plot_families(table: dict[str, Any], path: Path) -> None:
    """Grouped bars: mean image AUROC per defect family for each configuration."""
    from matplotlib.figure import Figure

    configs = [c for c in table if table[c]["mean"]]
    if not configs:
        return
    fig = Figure(figsize=(9, 4), dpi=120)
    ax = fig.add_subplot()
    width = 0.8 / len(configs)
    for i, config in enumerate(configs):
        cells = [table[config]["mean"].get(f"image_auroc_{f}") for f in FAMILIES]
        means = [c["mean"] if c else np.nan for c in cells]
        stds = [c["std"] if c else 0.0 for c in cells]
        ax.bar(np.arange(len(FAMILIES)) + i * width, means, width, yerr=stds, label=config, capsize=2)
    ax.set_xticks(np.arange(len(FAMILIES)) + width * (len(configs) - 1) / 2, [f"{f} defects" for f in FAMILIES])
    ax.set_ylabel("image AUROC (mean over categories)")
    ax.set_ylim(0.4, 1.0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title("Which modality sees which defect family")
    fig.tight_layout()
    fig.savefig(path)


def check_targets(table: dict[str, Any]) -> list[str]:
    """The targets of the accuracy benchmark, as lines of text (PASS / FAIL / n/a)."""
    lines = []
    full = table.get("rgb+depth", {}).get("mean", {})
    if "image_auroc" in full:
        value = full["image_auroc"]["mean"]
        lines.append(f"{'PASS' if value >= 0.97 else 'FAIL'}: rgb+depth mean image AUROC {value:.3f} (target >= 0.97)")
    for single, family in (("rgb", "image_auroc_geometric"), ("depth", "image_auroc_appearance")):
        mine, theirs = full.get(family), table.get(single, {}).get("mean", {}).get(family)
        if mine and theirs:
            ok = mine["mean"] > theirs["mean"]
            lines.append(f"{'PASS' if ok else 'FAIL'}: {family.removeprefix('image_auroc_')} defects "
                         f"(unseen by {single}): rgb+depth {mine['mean']:.3f} vs {single} {theirs['mean']:.3f}")
    return lines


def reproduce_command(seeds: list[int], configs: list[str], categories: list[str] | None) -> str:
    """The command that trains and scores the runs of this summary (not the flags that only re-summarise)."""
    words = ["python bench/accuracy.py", "--seeds", *map(str, seeds)]
    if configs != list(CONFIGS):
        words += ["--configs", *configs]
    if categories:
        words += ["--categories", *categories]
    return " ".join(words)


def readme_block(table: dict[str, Any], categories: list[str], targets: list[str], seeds: list[int],
                 machine: dict[str, Any]) -> str:
    return (f"`{machine['command']}` on {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
            f"{machine['date']}.\n\n"
            f"Training seeds done: {seeds} (the data is the fixed default set; each model's test split is "
            "scored once; epochs and thresholds come from validation data). Columns geometric / appearance / "
            "both: image AUROC on the defect families that only depth, only RGB, or both can see. "
            "`rgb+depth` is params.yaml; `rgb` and `depth` use one modality; `+gaussian` adds the Gaussian "
            "generator to the texture one; `gaussian-only` swaps them.\n\n"
            + markdown(table, categories) + "\n" + "\n".join(f"- {t}" for t in targets))


def update_readme(block: str, path: Path = REPO / "README.md") -> bool:
    """Replace the text between the README's accuracy markers; False when they are missing."""
    start, end = "<!-- accuracy:start -->", "<!-- accuracy:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + block + "\n" + end + rest.split(end, 1)[1])
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--categories", nargs="+", default=None, help="default: data.categories")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work",
                        help="data, models and per-run results (not committed)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary from --work")
    parser.add_argument("--readme", action="store_true", help="also rewrite the README's accuracy block")
    parser.add_argument("--rerun-published", action="store_true",
                        help="train again the runs that --out/accuracy.json already holds")
    args = parser.parse_args()

    from bridgenet.config import load_params

    categories = args.categories or list(load_params(REPO / "params.yaml").data.categories)
    work = args.work.resolve()
    results_dir = work / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    digest = params_digest()
    if not args.rerun_published:
        reused = seed_work_results(results_dir, published_runs(args.out, digest))
        if reused:
            print(f"{reused} runs taken from {args.out / 'accuracy.json'} (same params digest {digest})")
    if not args.summary_only:
        prepare_data(work)
        jobs = [(c, s, k) for s in args.seeds for c in args.configs for k in categories]
        for i, (config, seed, category) in enumerate(jobs, 1):
            path = results_dir / f"{config}-seed{seed}-{category}.json"
            if path.is_file() and json.loads(path.read_text()).get("params_digest") == digest:
                continue
            print(f"[{i}/{len(jobs)}] {config} seed {seed} {category}", flush=True)
            result = run_one(work, config, seed, category)
            result["params_digest"] = digest
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, path)
            print("   ", json.dumps(result["metrics"]), json.dumps(result["families"]),
                  f"{result['train_seconds']:.0f} s", flush=True)
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))]
    results = [r for r in results if r.get("params_digest") == digest and r["config"] in args.configs
               and r["seed"] in args.seeds and r["category"] in categories]
    table = summarize(results, args.configs, categories)
    import torch

    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
               "date": date.today().isoformat(),
               "command": reproduce_command(args.seeds, args.configs, args.categories)}
    targets = check_targets(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "accuracy.json").write_text(json.dumps(
        {"machine": machine, "params_digest": digest, "configs": {c: CONFIGS[c] for c in args.configs},
         "categories": categories, "results": table, "targets": targets, "runs": results}, indent=2) + "\n")
    (args.out / "accuracy.md").write_text(markdown(table, categories))
    plot_families(table, args.out / "accuracy_families.png")
    print(markdown(table, categories))
    print("\n".join(targets))
    block = readme_block(table, categories, targets, sorted({r["seed"] for r in results}), machine)
    if args.readme and not update_readme(block):
        print("README.md has no accuracy markers; left unchanged")
    print(f"wrote {args.out / 'accuracy.json'}, accuracy.md, accuracy_families.png")


if __name__ == "__main__":
    main()
