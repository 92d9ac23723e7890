"""The training loss's weights, as documented in bridgenet.training.loss."""

from __future__ import annotations

import pytest
import torch

from bridgenet.model.losses import bce, focal_loss
from bridgenet.model.network import TrainingLogits
from bridgenet.training.loss import discriminator_loss


def logits(*names: str) -> TrainingLogits:
    gen = torch.Generator().manual_seed(0)
    return TrainingLogits(torch.randn(20, generator=gen), {n: torch.randn(20, generator=gen) for n in names})


def test_with_the_gaussian_levels_the_clean_term_counts_once_per_level():
    out = logits("image", "feature", "projected", "texture")
    labels = (torch.arange(20) % 3 == 0).float()
    loss, terms = discriminator_loss(out, labels, 0.0)
    expected = (3 * bce(out.clean, 0.0) + sum(bce(out.negatives[k], 1.0) for k in ("image", "feature", "projected"))
                + focal_loss(out.negatives["texture"], labels, 0.0))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert terms["loss"] == pytest.approx(terms["bce_image"] + terms["bce_feature"] + terms["bce_projected"]
                                          + terms["focal"], rel=1e-6)


def test_with_textures_alone_the_clean_term_counts_once():
    out = logits("texture")
    labels = torch.ones(20)
    loss, terms = discriminator_loss(out, labels, 2.0)
    expected = bce(out.clean, 0.0) + focal_loss(out.negatives["texture"], labels, 2.0)
    assert float(loss) == pytest.approx(float(expected), rel=1e-6) and set(terms) == {"focal", "loss"}
    with pytest.raises(ValueError, match="patch labels"):
        discriminator_loss(out, None, 2.0)
