"""The finish step of a training run: calibrate the scorers, measure, set both thresholds.

The memory bank is built with the clean embeddings when the trainer starts
(:meth:`bridgenet.training.trainer.Trainer.fit_memory`); once the discriminator holds its
selected weights, :func:`finish` puts every score component on the scale of the validation
goods, scores the validation set and picks the image and pixel thresholds from its goods.
The benches call it (or :func:`calibrate_scores` alone) on saved models too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bridgenet import inference
from bridgenet.data.batch import Batch
from bridgenet.model.network import BridgeNet
from bridgenet.model.scorers import FUSED
from bridgenet.training.validation import ValidationSet, validation_metrics


@dataclass(frozen=True)
class Finished:
    """What :func:`finish` set and measured: each component's (loc, scale, weight), the
    validation metrics with the model's scorer, the image and the pixel threshold."""

    calibration: dict[str, float]
    metrics: dict[str, float]
    threshold: float
    pixel_threshold: float


@torch.inference_mode()
def calibrate_scores(network: BridgeNet, goods: Batch, device: torch.device, batch_size: int) -> dict[str, float]:
    """Put every score component on the scale of its values on the scored patches of ``goods``.

    ``goods`` are clean samples the model was not fitted on (the validation goods);
    the discriminator must hold its final weights. Returns each component's (loc, scale).
    """
    network.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    samples = []
    for start in range(0, len(goods), batch_size):
        batch = goods.select(slice(start, start + batch_size)).to(device)
        embeddings = network.embed_inputs(batch.inputs())
        grid = embeddings[network.modalities[0]].shape[-2:]
        keep = network.kept_patches(batch.depth, grid)
        index = torch.arange(start, start + len(batch), device=keep.device).repeat_interleave(grid[0] * grid[1])
        samples.append(index[keep])
        for name, values in network.patch_components(embeddings, keep, FUSED).items():
            parts.setdefault(name, []).append(values)
    return network.calibrate({name: torch.cat(values) for name, values in parts.items()}, torch.cat(samples))


def choose_threshold(good_scores: np.ndarray, quantile: float) -> float:
    """Decision threshold from validation good scores: their ``quantile``."""
    return float(np.quantile(good_scores, quantile))


def finish(network: BridgeNet, validation: ValidationSet, device: torch.device, batch_size: int,
           quantile: float) -> Finished:
    """Calibrate ``network`` on the validation goods, score the validation set, set the thresholds."""
    good = validation.labels == 0
    calibration = calibrate_scores(network, validation.batch.select(torch.from_numpy(good)), device, batch_size)
    scored = inference.score(network, validation.batch, device, batch_size)
    threshold = choose_threshold(scored.scores[good], quantile)
    # The map's own threshold, by the same rule on the good maps' highest pixels: a good part's
    # predicted mask is empty as often as it is judged good (the map's peak sits below the score).
    peaks = scored.maps[good].reshape(int(good.sum()), -1).max(1)
    return Finished(calibration, validation_metrics(scored.scores, scored.maps, validation), threshold,
                    choose_threshold(peaks, quantile))
