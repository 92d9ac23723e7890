"""The discriminator's loss over one step's logits, with its weights spelled out.

Terms (``logits`` from :meth:`bridgenet.model.network.BridgeNet.training_logits`):

    bce_<level>   per Gaussian level present (image, feature, projected):
                  BCE(clean patches, 0) + BCE(that level's negatives, 1)
    focal         focal loss (``anomalies.texture.focal_gamma``; 0 = plain BCE) of the
                  texture negatives against their patch labels
                  (+ BCE(clean patches, 0) when the Gaussian generator is off)
    loss          the sum of the terms above

So the clean patches' BCE has weight ``len(levels)`` (3) with the Gaussian generator on
and 1 with it off: the reference's sum of one clean-plus-negative BCE per level, kept as
it is because the trained models and the published presets were tuned with it.
"""

from __future__ import annotations

import torch

from bridgenet.model.losses import bce, focal_loss
from bridgenet.model.network import TrainingLogits
from bridgenet.training.negatives import GAUSSIAN_LEVELS


def discriminator_loss(
    logits: TrainingLogits, texture_labels: torch.Tensor | None, focal_gamma: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The step's loss and its terms as numbers (module docstring)."""
    terms: dict[str, float] = {}
    loss = torch.zeros((), device=logits.clean.device)
    levels = [level for level in GAUSSIAN_LEVELS if level in logits.negatives]
    if levels:
        clean_term = bce(logits.clean, 0.0)
        for level in levels:
            term = clean_term + bce(logits.negatives[level], 1.0)
            terms[f"bce_{level}"] = float(term.detach())
            loss = loss + term
    if "texture" in logits.negatives:
        if texture_labels is None:
            raise ValueError("texture negatives without their patch labels")
        focal = focal_loss(logits.negatives["texture"], texture_labels.float(), focal_gamma)
        if not levels:
            focal = focal + bce(logits.clean, 0.0)
        terms["focal"] = float(focal.detach())
        loss = loss + focal
    terms["loss"] = float(loss.detach())
    return loss, terms
