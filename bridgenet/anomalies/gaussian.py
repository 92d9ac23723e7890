"""Multi-Scale Gaussian Anomaly Generator: noise at image, feature and projected level."""

from __future__ import annotations

import torch

from bridgenet.anomalies.texture import choose_modalities
from bridgenet.config import GaussianConfig

LEVELS = ("image", "feature", "projected")


class GaussianAnomalyGenerator:
    """Gaussian noise of std ``scale * sigma`` for each of :data:`LEVELS`.

    For the image and feature levels the noise goes to RGB only, depth only or
    both (``modality_probs``); the projected level perturbs the fused feature.
    """

    def __init__(self, cfg: GaussianConfig, modalities: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.modalities = modalities
        self.std = {level: scale * cfg.sigma for level, scale in zip(LEVELS, cfg.scales)}

    def targets(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """{modality: (B,) bool}: which samples get noise in which modality."""
        return choose_modalities(batch, self.cfg.modality_probs, self.modalities, generator)

    def noise(self, x: torch.Tensor, level: str, generator: torch.Generator) -> torch.Tensor:
        """``x`` plus noise of the level's std (noise drawn on CPU for reproducibility)."""
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float32)
        return x + (noise * self.std[level]).to(device=x.device, dtype=x.dtype)
