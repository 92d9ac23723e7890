"""The real-data benchmark's summary: variants, mean ± std tables, targets, published figures, Markdown.

Everything here reads rows (:mod:`bench.results`) or the table :func:`summarize` makes
of them; ``bench.real`` runs the benchmark.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench import results
from bench.common import PEER, REAL_METRICS, SCORERS, fmt
from bench.results import DEFECT

OVERALL_KEYS = (*REAL_METRICS, "worst_defect", "fpr", "recall", "train_seconds")
TARGET_SCORER = "fused"
PEER_MODALITIES = ("rgb", "depth", "fused")

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

def variants(configs: list[str], with_peer: bool) -> list[str]:
    """The summary's variants: each configuration with each scorer, then the peer's modalities."""
    ours = [f"{c} / {s}" for c in configs for s in SCORERS]
    return ours + ([f"{PEER} {m}" for m in PEER_MODALITIES] if with_peer else [])


def summarize(frame: pd.DataFrame, variants: list[str], categories: list[str]) -> dict[str, Any]:
    """Per variant: mean ± std over seeds per category (every value key, sorted), and over seeds
    of the mean over categories.

    The mean category uses only the seeds done for every category, and the keys of
    :data:`OVERALL_KEYS` (defect types differ from one category to the next; their worst
    one, ``worst_defect``, does not).
    """
    return results.summarize(frame, variants, categories, OVERALL_KEYS)


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
