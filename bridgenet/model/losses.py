"""Training losses on discriminator logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Binary focal loss, mean over elements; ``logits`` and ``targets`` (any equal shape)."""
    log_p = F.logsigmoid(logits)
    log_not_p = F.logsigmoid(-logits)
    log_pt = targets * log_p + (1 - targets) * log_not_p
    return (-((1 - log_pt.exp()) ** gamma) * log_pt).mean()


def bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Binary cross-entropy of all ``logits`` against one constant label."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))
