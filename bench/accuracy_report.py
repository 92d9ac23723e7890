"""The synthetic accuracy benchmark's summary: late fusion of single-modality models, tables, targets, figure.

Everything here reads rows (:mod:`bench.results`) or the tables :func:`summarize` makes
of them; nothing trains or scores a model. ``bench.accuracy`` runs the benchmark.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import results
from bench.common import FAMILIES, PEER, REPO, SCORERS, SYNTH_METRICS, fmt
from bench.results import FAMILY, SYNTH_PEER_VARIANTS, Row

LATE = "rgb & depth models"  # late fusion of the two single-modality models (:func:`late_fusion_rows`)
COLUMNS = (*SYNTH_METRICS, *(f"{FAMILY}{f}" for f in FAMILIES))


def variants(configs: list[str], with_peer: bool) -> list[str]:
    """The summary's variants: each configuration with each scorer, the late fusion, the peer."""
    ours = [f"{c} / {s}" for c in configs for s in SCORERS]
    if "rgb" in configs and "depth" in configs:
        ours.append(f"{LATE} / fused")
    return ours + (list(SYNTH_PEER_VARIANTS.values()) if with_peer else [])


def late_fusion_rows(runs: list[dict[str, Any]], preset: str, scorer: str = "fused") -> list[Row]:
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
        values = {"image_auroc": float(image_auroc(fused, labels)),
                  **{f"{FAMILY}{k}": float(v) for k, v in auroc_per_defect(fused, families).items()},
                  "train_seconds": rgb["train_seconds"] + depth["train_seconds"]}
        rows.append({"preset": preset, "variant": f"{LATE} / {scorer}", "seed": seed, "category": category,
                     "values": values})
    return rows


def resampled_test_split(runs: list[dict[str, Any]], preset: str, config: str = "rgb+depth", scorer: str = "fused",
                        draws: int = 2000, seed: int = 0) -> dict[str, Any] | None:
    """How much the reported mean image AUROC of ``config / scorer`` on ``preset`` owes to which test
    samples were drawn: a bootstrap over the test split.

    Each draw resamples every category's goods and defects (with replacement, each group to its
    own size; the same draw for every seed, which share the test split) and takes the mean over
    seeds and categories, as the table does. Returns the point value, the draws' standard
    deviation and their 2.5 / 97.5 % quantiles; None where no run kept its per-sample scores.
    Training seeds vary the model on one test split, so their std says nothing about this.
    """
    from bridgenet.metrics import GOOD, image_auroc

    cells: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for run in runs:
        cell = run["scores"].get(preset, {}).get(scorer, {})
        if run["config"] != config or "image_scores" not in cell:
            continue
        labels = np.asarray([f != GOOD for f in cell["sample_families"]])
        if labels.all() or not labels.any():
            continue
        cells.setdefault(run["category"], []).append((np.asarray(cell["image_scores"], np.float64), labels))
    if not cells:
        return None
    rng = np.random.default_rng(seed)

    def mean_auroc(picks: dict[str, np.ndarray] | None) -> float:
        values = [image_auroc(s if picks is None else s[picks[c]], y if picks is None else y[picks[c]])
                  for c, pairs in cells.items() for s, y in pairs]
        return float(np.mean(values))

    groups = {c: (np.flatnonzero(~pairs[0][1]), np.flatnonzero(pairs[0][1])) for c, pairs in cells.items()}
    values = np.array([mean_auroc({c: np.concatenate([rng.choice(g, g.size), rng.choice(d, d.size)])
                                   for c, (g, d) in groups.items()}) for _ in range(draws)])
    low, high = np.quantile(values, [0.025, 0.975])
    return {"preset": preset, "variant": f"{config} / {scorer}", "metric": "image_auroc", "draws": draws,
            "value": mean_auroc(None), "std": float(values.std()), "low": float(low), "high": float(high),
            "test_samples": {c: int(len(g) + len(d)) for c, (g, d) in groups.items()}}


def sampling_line(entry: dict[str, Any]) -> str:
    """One line of text for :func:`resampled_test_split`'s result."""
    return (f"{entry['preset']} data, {entry['variant']}: mean image AUROC {entry['value']:.3f}; drawing other "
            f"test samples of the same sizes ({sum(entry['test_samples'].values())} in all, bootstrap of "
            f"{entry['draws']}) moves it by {entry['std']:.3f} (std), 95 % within "
            f"[{entry['low']:.3f}, {entry['high']:.3f}]")


def summarize(frame: pd.DataFrame, names: list[str], categories: list[str]) -> dict[str, Any]:
    """:func:`bench.results.summarize` of one data set's rows, over :data:`COLUMNS`; per category
    also ``seconds_per_run``, the mean training (or fit) seconds."""
    table = results.summarize(frame, names, categories, COLUMNS, keys=(*COLUMNS, "train_seconds"))
    for entry in table.values():
        for cells in entry["categories"].values():
            cells["seconds_per_run"] = cells.pop("train_seconds")["mean"]
    return table


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
            cells = [tables[preset][name]["mean"].get(f"{FAMILY}{f}") for f in FAMILIES]
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
        cell = _mean(default, full, f"{FAMILY}{family}")
        if cell:
            verdict(cell["mean"] >= 0.98, f"default data, {full}: {family} defects {fmt(cell)} (target >= 0.98)")
    for preset, table in tables.items():
        for family in FAMILIES:
            mine = _mean(table, full, f"{FAMILY}{family}")
            singles = {m: _mean(table, f"{m} / {scorer}", f"{FAMILY}{family}") for m in ("rgb", "depth")}
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


def readme_block(tables: dict[str, dict[str, Any]], categories: list[str], targets: list[str],
                 seeds: list[int], machine: dict[str, Any], sampling: list[dict[str, Any]] = ()) -> str:
    """The accuracy block of docs/benchmarks.md: command and machine, the mean tables per data set, the targets."""
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
    if sampling:
        parts.append("\n\nTest-split sampling (the seeds' std above is the training's alone):\n\n"
                     + "\n".join(f"- {sampling_line(e)}" for e in sampling))
    return "".join(parts)


def update_readme(block: str, path: Path = REPO / "docs" / "benchmarks.md") -> bool:
    """Replace the text between the accuracy markers of docs/benchmarks.md; False when they are missing."""
    start, end = "<!-- accuracy:start -->", "<!-- accuracy:end -->"
    text = path.read_text()
    if start not in text or end not in text:
        return False
    head, rest = text.split(start, 1)
    path.write_text(head + start + "\n" + block + "\n" + end + rest.split(end, 1)[1])
    return True
