"""Evaluation stage: score each category's test split with its model and write the reports.

Maps are compared with the ground truth at the ground truth's own resolution.
Nothing is fitted on the test split: the scores are the network's outputs as
they are (the scorer's scale was set on validation goods at training time), and
the decision threshold comes from validation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bridgenet import metrics, reports
from bridgenet.config import Params
from bridgenet.model.io import TrainedModel, load_model
from bridgenet.preprocess import CachedSplit, load_cached_split
from bridgenet.train import Batch, resolve_device

LOGGER = logging.getLogger(__name__)


@dataclass
class CategoryEvaluation:
    """One category's test results: the 9 metric keys plus per-defect detail and curves."""

    category: str
    metrics: dict[str, float]
    per_defect: dict[str, float]
    per_family: dict[str, float]
    scores: np.ndarray
    labels: np.ndarray
    defects: list[str]
    roc: tuple[np.ndarray, np.ndarray]
    pro: tuple[np.ndarray, np.ndarray]
    threshold: float
    display_range: tuple[float, float] = (0.0, 1.0)
    extras: dict[str, Any] = field(default_factory=dict)


@torch.inference_mode()
def score_split(
    model: TrainedModel, split: CachedSplit, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image scores (N,), maps at network size (N, S, S) and at the ground truth's size (N, H0, W0).

    All ground-truth masks of one split must share a size (as in MVTec 3D-AD).
    """
    sizes = {tuple(int(v) for v in s) for s in split.original_sizes}
    if len(sizes) != 1:
        raise ValueError(f"{split.category}/{split.split}: ground truths of several sizes {sorted(sizes)}")
    (height, width), = sizes
    network = model.network.to(device).eval()
    data = Batch.from_split(split)
    scores, small, full = [], [], []
    for start in range(0, len(data), batch_size):
        part = slice(start, start + batch_size)
        result = network(data.rgb[part].to(device), data.depth[part].to(device))
        maps = result.anomaly_map.float()
        scores.append(result.pred_score.float().cpu())
        small.append(maps.cpu())
        full.append(F.interpolate(maps.unsqueeze(1), size=(height, width), mode="bilinear",
                                  align_corners=False).squeeze(1).cpu())
    return torch.cat(scores).numpy(), torch.cat(small).numpy(), torch.cat(full).numpy()


def defect_families(defects: list[str]) -> dict[str, str]:
    """Family of each defect type: the synthetic data's families, else the type is its own family."""
    from bridgenet.data.synthetic import DEFECT_FAMILIES

    return {d: DEFECT_FAMILIES.get(d, d) for d in set(defects) if d != metrics.GOOD}


def load_test_split(params: Params, category: str) -> CachedSplit:
    return load_cached_split(params.data.cache_dir, category, "test", params.data)


def evaluate_category(
    params: Params, model: TrainedModel, split: CachedSplit, device: torch.device | None = None
) -> tuple[CategoryEvaluation, np.ndarray]:
    """Score one category's test ``split``; returns the evaluation and the network-size maps."""
    device = device or resolve_device(params.train.device)
    category = split.category
    scores, small_maps, maps = score_split(model, split, params.eval.batch_size, device)
    masks = np.stack(split.gt)
    values = metrics.compute_all(scores, split.labels, maps, masks, params.eval.aupro_thresholds)
    families = defect_families(split.defects)
    evaluation = CategoryEvaluation(
        category=category,
        metrics=values,
        per_defect=metrics.auroc_per_defect(scores, split.defects),
        per_family=metrics.auroc_per_family(scores, split.defects, families),
        scores=scores,
        labels=split.labels,
        defects=split.defects,
        roc=metrics.roc_curve_points(scores, split.labels),
        pro=metrics.pro_curve_points(maps, masks, params.eval.aupro_thresholds),
        threshold=model.threshold,
        display_range=model.display_range(),
    )
    decisions = scores > model.threshold
    evaluation.extras = {
        "per_defect_image_auroc": evaluation.per_defect,
        "per_family_image_auroc": evaluation.per_family,
        "threshold": model.threshold,
        "scorer": model.network.scorer,
        "test_accuracy_at_threshold": float(np.mean(decisions == split.labels.astype(bool))),
        "families": families,
    }
    return evaluation, small_maps


def write_category_figures(
    evaluation: CategoryEvaluation, split: CachedSplit, small_maps: np.ndarray, out_dir: Path, n: int
) -> dict[str, Path]:
    """Heatmap sheet (best and worst scored samples) and the per-defect AUROC bar chart."""
    picks = reports.select_heatmap_samples(evaluation.scores, evaluation.labels, n)
    index = [i for i, _ in picks]
    masks = np.stack([
        F.interpolate(torch.from_numpy(split.gt[i]).float()[None, None], size=small_maps.shape[-2:],
                      mode="nearest")[0, 0].numpy() > 0.5
        for i in index
    ])
    sheet = out_dir / f"heatmaps_{evaluation.category}.png"
    reports.write_heatmap_sheet(
        sheet, split.rgb[index], split.depth[index], masks, small_maps[index],
        [f"{title}: {split.defects[i]}/{split.stems[i]} score {evaluation.scores[i]:.3f}"
         for i, title in picks],
        vmin=evaluation.display_range[0], vmax=evaluation.display_range[1],
    )
    bar = out_dir / f"defect_auroc_{evaluation.category}.png"
    reports.write_defect_auroc_bar(bar, evaluation.per_defect,
                                   f"{evaluation.category}: image AUROC per defect type")
    return {"heatmaps": sheet, "defect_auroc": bar}


def category_dir(params: Params, category: str, reports_dir: Path | None = None) -> Path:
    return Path(reports_dir or params.eval.reports_dir) / "categories" / category


def evaluate_to_folder(
    params: Params, category: str, models_dir: Path | None = None, reports_dir: Path | None = None
) -> dict[str, Any]:
    """Evaluate one category's ``model.pt``; write ``reports/categories/<category>/``.

    The folder gets metrics.json (the 9 keys plus details), roc.csv, pro.csv, the
    heatmap sheet and the per-defect chart. Returns the metrics.json content.
    """
    params = params.for_category(category)
    model = load_model(Path(models_dir or params.train.models_dir) / category / "model.pt")
    out_dir = category_dir(params, category, reports_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    split = load_test_split(params, category)
    evaluation, small_maps = evaluate_category(params, model, split, resolve_device(params.train.device))
    figures = write_category_figures(evaluation, split, small_maps, out_dir, params.eval.heatmap_samples)
    extras = {**evaluation.extras, "figures": {k: str(v) for k, v in figures.items()}}
    doc = reports.write_metrics_json(out_dir / "metrics.json", {category: evaluation.metrics})
    _write_json(out_dir / "details.json", {category: extras})
    reports.write_curves_csv(out_dir / "roc.csv", {category: evaluation.roc}, "tpr")
    reports.write_curves_csv(out_dir / "pro.csv", {category: evaluation.pro}, "pro")
    LOGGER.info("%s: %s", category, {k: round(float(v), 4) for k, v in evaluation.metrics.items()})
    return doc


def _write_json(path: Path, content: dict[str, Any]) -> None:
    import json

    path.write_text(json.dumps(reports._finite_or_none(content), indent=2) + "\n", encoding="utf-8")


def _read_curves(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2), ndmin=2)
    return table[:, 0], table[:, 1]


def aggregate_reports(params: Params, categories: list[str], reports_dir: Path | None = None) -> dict[str, Any]:
    """Merge the per-category folders into reports/metrics.json, metrics.md, roc/pro CSV and PNG."""
    import json

    out_dir = Path(reports_dir or params.eval.reports_dir)
    per_category, extras, rocs, pros = {}, {}, {}, {}
    for category in categories:
        folder = category_dir(params, category, out_dir)
        path = folder / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `bridgenet evaluate --category {category}` first")
        doc = json.loads(path.read_text())
        values = doc["categories"][category]
        per_category[category] = {k: float("nan") if v is None else v for k, v in values.items()}
        details = folder / "details.json"
        extras[category] = json.loads(details.read_text())[category] if details.is_file() else {}
        rocs[category] = _read_curves(folder / "roc.csv")
        pros[category] = _read_curves(folder / "pro.csv")
    doc = reports.write_metrics_json(out_dir / "metrics.json", per_category)
    _write_json(out_dir / "details.json", extras)
    reports.write_metrics_markdown(out_dir / "metrics.md", per_category)
    reports.write_curves_csv(out_dir / "roc.csv", rocs, "tpr")
    reports.write_curves_csv(out_dir / "pro.csv", pros, "pro")
    reports.plot_curves(out_dir / "roc.png", rocs, "tpr", "Image ROC")
    reports.plot_curves(out_dir / "pro.png", pros, "pro", "PRO curve", limit=0.3)
    return doc


def run_evaluate(
    params: Params,
    categories: list[str] | None = None,
    models_dir: Path | None = None,
    reports_dir: Path | None = None,
) -> dict[str, Any]:
    """Evaluate every category and write the whole reports folder; returns metrics.json's content."""
    from bridgenet.data.readers import discover_categories

    categories = categories or discover_categories(params.data)
    for category in tqdm(categories, desc="evaluate", unit="category"):
        evaluate_to_folder(params, category, models_dir, reports_dir)
    return aggregate_reports(params, categories, reports_dir)
