"""Evaluation stage: score a category's test split with its model, once, and write the reports.

Maps are compared with the ground truth at the ground truth's own resolution.
Nothing is fitted on the test split: the scores are the network's outputs as
they are (the scorer's scale was set on validation goods at training time), and
the decision threshold comes from validation.

The result (metrics, scores, curves, threshold decisions) is stored as
``evaluation.json`` beside the reports, keyed by the fingerprints of the model file
and of the test split (:meth:`bridgenet.data.cache.CachedSplit.fingerprint`). The
stages after it (register, promote) read it back (:func:`stored_evaluation`) instead
of scoring the same model on the same data again; a registered model evaluated on
other data is scored once more and its result kept in ``<eval.reports_dir>/evaluations/``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bridgenet import inference, metrics, paths, reports
from bridgenet.config import Params
from bridgenet.data.batch import Batch, resolve_device
from bridgenet.data.cache import CachedSplit, load_cached_split
from bridgenet.data.crop import crop
from bridgenet.files import sha256_file, write_json
from bridgenet.model.contract import TrainedModel
from bridgenet.model.io import load_model

LOGGER = logging.getLogger(__name__)
EVALUATION_FORMAT = "bridgenet-evaluation/1"


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
    model_fingerprint: str = ""  # sha256 of the model file scored
    data_fingerprint: str = ""  # CachedSplit.fingerprint() of the test split

    @property
    def decisions(self) -> np.ndarray:
        """(N,) bool: each test sample's decision at the model's (validation) threshold."""
        return self.scores > self.threshold

    def at_threshold(self) -> dict[str, float]:
        """What the deployed decision does on the test split: confusion counts, FPR, recall, precision."""
        labels, decided = self.labels.astype(bool), self.decisions
        tp, fp = int((decided & labels).sum()), int((decided & ~labels).sum())
        fn, tn = int((~decided & labels).sum()), int((~decided & ~labels).sum())
        ratio = lambda a, b: a / b if b else float("nan")
        return {"tp": tp, "fp": fp, "fn": fn, "tn": tn, "fpr": ratio(fp, fp + tn), "recall": ratio(tp, tp + fn),
                "precision": ratio(tp, tp + fp), "accuracy": ratio(tp + tn, len(labels))}

    def to_record(self) -> dict[str, Any]:
        """The JSON-able record :func:`save_evaluation` writes (nan as null)."""
        return {
            "format": EVALUATION_FORMAT,
            "category": self.category,
            "model_fingerprint": self.model_fingerprint,
            "data_fingerprint": self.data_fingerprint,
            "metrics": self.metrics,
            "per_defect": self.per_defect,
            "per_family": self.per_family,
            "threshold": self.threshold,
            "display_range": list(self.display_range),
            "scores": self.scores.tolist(),
            "labels": self.labels.tolist(),
            "defects": list(self.defects),
            "decisions": self.decisions.tolist(),
            "roc": {"fpr": self.roc[0].tolist(), "tpr": self.roc[1].tolist()},
            "pro": {"fpr": self.pro[0].tolist(), "pro": self.pro[1].tolist()},
            "extras": self.extras,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], source: str) -> CategoryEvaluation:
        """Rebuild an evaluation from :meth:`to_record`'s content; errors name ``source``."""
        if not isinstance(record, dict) or record.get("format") != EVALUATION_FORMAT:
            raise ValueError(f"{source}: not a BridgeNet evaluation (format {EVALUATION_FORMAT!r} expected)")

        def number(value: Any) -> float:
            return float("nan") if value is None else float(value)

        try:
            return cls(
                category=record["category"],
                metrics={k: number(v) for k, v in record["metrics"].items()},
                per_defect={k: number(v) for k, v in record["per_defect"].items()},
                per_family={k: number(v) for k, v in record["per_family"].items()},
                scores=np.asarray([number(v) for v in record["scores"]], dtype=np.float32),
                labels=np.asarray(record["labels"], dtype=np.int64),
                defects=list(record["defects"]),
                roc=(np.asarray(record["roc"]["fpr"], float), np.asarray(record["roc"]["tpr"], float)),
                pro=(np.asarray(record["pro"]["fpr"], float), np.asarray(record["pro"]["pro"], float)),
                threshold=float(record["threshold"]),
                display_range=tuple(float(v) for v in record["display_range"]),
                extras=dict(record.get("extras") or {}),
                model_fingerprint=str(record["model_fingerprint"]),
                data_fingerprint=str(record["data_fingerprint"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{source}: incomplete evaluation record ({type(exc).__name__}: {exc})") from None


@torch.inference_mode()
def score_split(
    model: TrainedModel, split: CachedSplit, batch_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image scores (N,), maps at network size (N, S, S) and at the ground truth's size (N, H0, W0).

    The network-size maps show each sample's crop box; the others are pasted back into the frame.

    All ground-truth masks of one split must share a size (as in MVTec 3D-AD).
    """
    sizes = {tuple(int(v) for v in s) for s in split.original_sizes}
    if len(sizes) != 1:
        raise ValueError(f"{split.category}/{split.split}: ground truths of several sizes {sorted(sizes)}")
    (height, width), = sizes
    model.network.to(device)
    boxes = np.asarray(split.crop_boxes)
    scored = inference.score(model.network, Batch.from_split(split), device, batch_size,
                             boxes=boxes, frame=(height, width))
    return scored.scores, scored.maps, scored.frames


def defect_families(defects: list[str]) -> dict[str, str]:
    """Family of each defect type: the synthetic data's families, else the type is its own family."""
    from bridgenet.data.families import DEFECT_FAMILIES

    return {d: DEFECT_FAMILIES.get(d, d) for d in set(defects) if d != metrics.GOOD}


def load_test_split(params: Params, category: str) -> CachedSplit:
    return load_cached_split(params.data.cache_dir, category, "test", params.data)


def evaluate_category(
    params: Params,
    model: TrainedModel,
    split: CachedSplit,
    device: torch.device | None = None,
    model_fingerprint: str = "",
) -> tuple[CategoryEvaluation, np.ndarray]:
    """Score one category's test ``split``; returns the evaluation and the network-size maps.

    ``model_fingerprint`` names the model file scored (recorded with the result).
    """
    device = device or resolve_device(params.train.device)
    category = split.category
    scores, small_maps, maps = score_split(model, split, params.eval.batch_size, device)
    masks, known = np.stack(split.gt), split.known_masks()  # a line defect without a mask: image level only
    values = metrics.compute_all(scores, split.labels, maps, masks, params.eval.aupro_thresholds, known)
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
        pro=metrics.pro_curve_points(maps[known], masks[known], params.eval.aupro_thresholds),
        threshold=model.threshold,
        display_range=model.display_range(),
        model_fingerprint=model_fingerprint,
        data_fingerprint=split.fingerprint(),
    )
    decisions = evaluation.decisions
    evaluation.extras = {
        "per_defect_image_auroc": evaluation.per_defect,
        "per_family_image_auroc": evaluation.per_family,
        "threshold": model.threshold,
        "scorer": model.scorer.name,
        "test_accuracy_at_threshold": float(np.mean(decisions == split.labels.astype(bool))),
        "families": families,
    }
    return evaluation, small_maps


def write_category_figures(
    evaluation: CategoryEvaluation, split: CachedSplit, small_maps: np.ndarray, files: dict[str, Path], n: int
) -> dict[str, Path]:
    """Heatmap sheet (best and worst scored samples) and the per-defect AUROC bar chart, to
    ``files`` (``heatmaps``, ``defect_auroc``: :func:`bridgenet.paths.category_figures`)."""
    picks = reports.select_heatmap_samples(evaluation.scores, evaluation.labels, n)
    index = [i for i, _ in picks]
    masks = np.stack([
        F.interpolate(torch.from_numpy(np.ascontiguousarray(crop(split.gt[i], split.crop_boxes[i])))
                      .float()[None, None], size=small_maps.shape[-2:], mode="nearest")[0, 0].numpy() > 0.5
        for i in index
    ])
    sheet = files["heatmaps"]
    reports.write_heatmap_sheet(
        sheet, split.rgb[index], split.depth[index], masks, small_maps[index],
        [f"{title}: {split.defects[i]}/{split.stems[i]} score {evaluation.scores[i]:.3f}"
         for i, title in picks],
        vmin=evaluation.display_range[0], vmax=evaluation.display_range[1],
    )
    bar = files["defect_auroc"]
    reports.write_defect_auroc_bar(bar, evaluation.per_defect,
                                   f"{evaluation.category}: image AUROC per defect type")
    return {"heatmaps": sheet, "defect_auroc": bar}


def save_evaluation(evaluation: CategoryEvaluation, path: Path) -> Path:
    """Write ``evaluation.to_record()`` to ``path`` atomically."""
    return write_json(path, evaluation.to_record(), indent=1)


def load_evaluation(path: Path) -> CategoryEvaluation:
    """Read an evaluation record; errors name the file."""
    try:
        record = json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return CategoryEvaluation.from_record(record, str(path))


def stored_evaluation(
    params: Params, category: str, model_fingerprint: str, data_fingerprint: str
) -> CategoryEvaluation | None:
    """The stored evaluation of that model file on that test split, or None when there is none.

    Looks at the evaluate stage's ``evaluation.json`` and at the results of
    :func:`keep_evaluation`; an unreadable record counts as none (with a warning).
    """
    candidates = (paths.evaluation_file(params, category),
                  paths.stored_evaluation_file(params, category, model_fingerprint, data_fingerprint))
    for path in candidates:
        if not path.is_file():
            continue
        try:
            evaluation = load_evaluation(path)
        except ValueError as exc:
            LOGGER.warning("%s; scoring again", exc)
            continue
        if (evaluation.model_fingerprint, evaluation.data_fingerprint) == (model_fingerprint, data_fingerprint):
            return evaluation
    return None


def keep_evaluation(params: Params, evaluation: CategoryEvaluation) -> Path:
    """Store the evaluation of a model other than the category's current one (a registered champion)."""
    path = paths.stored_evaluation_file(params, evaluation.category, evaluation.model_fingerprint,
                       evaluation.data_fingerprint)
    return save_evaluation(evaluation, path)


TRAINED_SECTIONS = ("model", "anomalies", "train")  # what a model file carries of how it was made
_READ_AT_EVALUATION = {("train", "device"), ("train", "models_dir")}  # ... but evaluate reads these


def overrides_not_applied(params: Params, category: str, overrides: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """The ``--set`` keys that evaluating ``category`` cannot apply, with (given, the model's) values.

    Evaluation scores ``<train.models_dir>/<category>/model.pt`` as it was trained and
    calibrated: its ``model``, ``anomalies`` and ``train`` settings (but ``train.device`` and
    ``train.models_dir``) are the file's. An override of one of them to another value than the
    file's would be silently ignored; they are listed so that the caller refuses them. Empty
    when the model file does not exist (evaluation then fails on its own, naming it).
    """
    from bridgenet.config import params_from_dict, parse_override, upgrade_stored_params
    from bridgenet.model.io import read_checkpoint

    path = paths.model_file(params, category)
    keys = [parse_override(text)[0] for text in overrides]
    keys = [k for k in keys if k[0] in TRAINED_SECTIONS and tuple(k[:2]) not in _READ_AT_EVALUATION]
    if not keys or not path.is_file():
        return {}
    stored = params_from_dict(upgrade_stored_params(read_checkpoint(path)["params"]),
                              source=f"{path} (stored params)").to_dict()
    given, refused = params.to_dict(), {}
    for key in keys:
        mine, theirs = _at(given, key), _at(stored, key)
        if mine != theirs:
            refused[".".join(key)] = (mine, theirs)
    return refused


def _at(tree: Any, key: Sequence[str]) -> Any:
    for part in key:
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def evaluate_to_folder(params: Params, category: str, split: CachedSplit | None = None) -> CategoryEvaluation:
    """Evaluate ``category``'s trained model once; write ``reports/categories/<category>/``.

    ``params`` are the category's resolved params (:func:`bridgenet.stages.resolve`).
    The folder gets evaluation.json (the record, with both fingerprints), metrics.json
    (the 9 keys), details.json, roc.csv, pro.csv, the heatmap sheet and the per-defect
    chart. A failure leaves the folder's earlier files as they were: each is replaced
    whole, and only once the model is scored.
    """
    path = paths.model_file(params, category)
    model = load_model(path)
    if model.category != category:
        raise ValueError(f"{path}: holds a model of category {model.category!r}, expected {category!r}")
    split = split if split is not None else load_test_split(params, category)
    evaluation, small_maps = evaluate_category(params, model, split, resolve_device(params.train.device),
                                               model_fingerprint=sha256_file(path))
    out_dir = paths.category_reports_dir(params, category)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = write_category_figures(evaluation, split, small_maps, paths.category_figures(params, category),
                                     params.eval.heatmap_samples)
    evaluation.extras["figures"] = {k: str(v) for k, v in figures.items()}
    files = paths.report_files(out_dir)
    reports.write_metrics_json(files["metrics"], {category: evaluation.metrics})
    write_json(files["details"], {category: evaluation.extras})
    reports.write_curves_csv(files["roc_csv"], {category: evaluation.roc}, "tpr")
    reports.write_curves_csv(files["pro_csv"], {category: evaluation.pro}, "pro")
    save_evaluation(evaluation, paths.evaluation_file(params, category))
    LOGGER.info("%s: %s", category, {k: round(float(v), 4) for k, v in evaluation.metrics.items()})
    return evaluation


def _read_curves(path: Path) -> tuple[np.ndarray, np.ndarray]:
    table = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2), ndmin=2)
    return table[:, 0], table[:, 1]


def aggregate_reports(out_dir: Path, folders: dict[str, Path]) -> dict[str, Any]:
    """Merge per-category folders (category -> its evaluate output) into ``out_dir``.

    Writes metrics.json, details.json, metrics.md, roc/pro CSV and PNG; returns metrics.json's content.
    """
    out = paths.report_files(out_dir)
    per_category, extras, rocs, pros = {}, {}, {}, {}
    for category, folder in folders.items():
        files = paths.report_files(folder)
        if not files["metrics"].is_file():
            raise FileNotFoundError(f"{files['metrics']} is missing: run `bridgenet evaluate --category {category}` "
                                    "first")
        doc = json.loads(files["metrics"].read_text())
        values = doc["categories"][category]
        per_category[category] = {k: float("nan") if v is None else v for k, v in values.items()}
        details = files["details"]
        extras[category] = json.loads(details.read_text())[category] if details.is_file() else {}
        rocs[category] = _read_curves(files["roc_csv"])
        pros[category] = _read_curves(files["pro_csv"])
    doc = reports.write_metrics_json(out["metrics"], per_category)
    write_json(out["details"], extras)
    reports.write_metrics_markdown(out["table"], per_category)
    reports.write_curves_csv(out["roc_csv"], rocs, "tpr")
    reports.write_curves_csv(out["pro_csv"], pros, "pro")
    reports.plot_curves(out["roc_png"], rocs, "tpr", "Image ROC")
    reports.plot_curves(out["pro_png"], pros, "pro", "PRO curve", limit=0.3)
    return doc
