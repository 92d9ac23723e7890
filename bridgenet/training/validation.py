"""The validation set training selects epochs on: validation goods plus fixed generated anomalies.

Never the test split: epochs, thresholds and calibration come from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from bridgenet.anomalies.texture import TextureAnomalyGenerator
from bridgenet.config import Params
from bridgenet.data.batch import Batch
from bridgenet.data.cache import CachedSplit, load_cached_split


@dataclass
class ValidationSet:
    """Good validation samples plus fixed synthetic anomalies: labels (N,), masks (N, S, S)."""

    batch: Batch
    labels: np.ndarray
    masks: np.ndarray


def build_validation_set(split: CachedSplit, params: Params, modalities: tuple[str, ...]) -> ValidationSet:
    """Validation goods plus ``validation_anomalies_per_good`` texture anomalies each (fixed seed)."""
    good = Batch.from_split(split)
    copies = params.train.validation_anomalies_per_good
    if copies == 0:
        return ValidationSet(good, np.zeros(len(good), dtype=np.int64), np.zeros_like(split.foreground))
    seed = params.train.validation_seed
    texture_cfg = params.anomalies.texture
    generator = TextureAnomalyGenerator(texture_cfg, split.rgb.shape[1], modalities, np.random.default_rng(seed))
    torch_gen = torch.Generator().manual_seed(seed)
    rgbs, depths, fgs, masks = [good.rgb], [good.depth], [good.foreground], [torch.zeros_like(good.foreground)]
    for _ in range(copies):
        rgb, depth, region, _ = generator(good.rgb, good.depth, good.foreground, torch_gen)
        rgbs.append(rgb)
        depths.append(depth)
        fgs.append(good.foreground)
        masks.append(region.bool())
    mask = torch.cat(masks)
    labels = mask.flatten(1).any(1).numpy().astype(np.int64)
    return ValidationSet(Batch(torch.cat(rgbs), torch.cat(depths), torch.cat(fgs)), labels, mask.numpy())


def write_anomaly_preview(params: Params, category: str, path: Path, n: int = 3) -> Path | None:
    """A sheet of the validation set's synthetic anomalies (what training selects epochs on).

    Returns None when the validation set holds none (``train.validation_anomalies_per_good = 0``).
    """
    from bridgenet import reports

    split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    validation = build_validation_set(split, params, params.model.modalities)
    goods = len(split)
    anomalous = np.flatnonzero(validation.labels[goods:] == 1)[:n] + goods
    if len(anomalous) == 0:
        return None
    batch, clean = validation.batch, (anomalous - goods) % goods
    return reports.write_anomaly_preview(
        path,
        batch.rgb[clean].permute(0, 2, 3, 1).numpy(),
        batch.rgb[anomalous].permute(0, 2, 3, 1).numpy(),
        batch.depth[anomalous, 0].numpy(),
        validation.masks[anomalous],
        f"{category}: generated anomalies (validation, seed {params.train.validation_seed})",
    )


def validation_metrics(scores: np.ndarray, maps: np.ndarray, val: ValidationSet) -> dict[str, float]:
    """Image and pixel AUROC on the validation set; ``score`` = their mean (selection criterion)."""
    out: dict[str, float] = {}
    if len(np.unique(val.labels)) == 2:
        out["val_image_auroc"] = float(roc_auc_score(val.labels, scores))
        out["val_pixel_auroc"] = float(roc_auc_score(val.masks.ravel(), maps.ravel()))
        out["val_score"] = (out["val_image_auroc"] + out["val_pixel_auroc"]) / 2
    else:
        # Only good samples: prefer the model whose good scores are lowest.
        out["val_score"] = float(-np.mean(scores))
    out["val_good_score_mean"] = float(np.mean(scores[val.labels == 0]))
    return out
