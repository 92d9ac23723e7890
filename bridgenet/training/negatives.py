"""The negatives a training step shows the discriminator, from the two anomaly generators.

``image``, ``feature`` and ``projected``: the Multi-Scale Gaussian Anomaly Generator's noise
at the backbone input, on the patch embeddings and on the projected rows
(``anomalies.gaussian``); ``texture``: the Unified Texture Anomaly Generator's pasted
textures and depth bumps, re-embedded (``anomalies.texture``), with their patch labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bridgenet.anomalies.gaussian import GaussianAnomalyGenerator
from bridgenet.anomalies.texture import TextureAnomalyGenerator, mask_to_grid
from bridgenet.config import AnomaliesConfig
from bridgenet.data.batch import Batch
from bridgenet.model.network import BridgeNet

GAUSSIAN_LEVELS = ("image", "feature", "projected")  # the Gaussian generator's negatives, per level


@dataclass
class Drawn:
    """Projected rows (P, M * D) per negative, in :data:`GAUSSIAN_LEVELS` order then ``texture``;
    ``texture_labels`` (P,) 1 on the patches a texture touched (None without the generator)."""

    rows: dict[str, torch.Tensor]
    texture_labels: torch.Tensor | None


class Negatives:
    """Both generators, as configured; at least one must be enabled."""

    def __init__(self, cfg: AnomaliesConfig, modalities: tuple[str, ...], image_size: int, seed: int,
                 device: torch.device) -> None:
        self.modalities = modalities
        self.gaussian = GaussianAnomalyGenerator(cfg.gaussian, modalities) if cfg.gaussian.enabled else None
        self.texture = (
            TextureAnomalyGenerator(cfg.texture, image_size, modalities, np.random.default_rng(seed), device=device)
            if cfg.texture.enabled else None
        )
        if self.gaussian is None and self.texture is None:
            raise ValueError("anomalies: both generators are disabled; nothing to train on")
        self.device = device

    def draw(self, net: BridgeNet, batch: Batch, clean: dict[str, torch.Tensor], z_clean: torch.Tensor,
             keep: torch.Tensor, gen: torch.Generator) -> Drawn:
        """The negatives of one step: ``clean`` standardised embeddings (B, D, h, w) of ``batch``,
        ``z_clean`` their projected rows of the ``keep`` patches; ``gen`` the step's random stream."""
        rows: dict[str, torch.Tensor] = {}
        labels = None
        grid = clean[self.modalities[0]].shape[-2:]
        if self.gaussian is not None:
            normalized = {m: net.backbone_input(batch.inputs()[m], m) for m in self.modalities}
            noisy_inputs = {m: self.gaussian.noise(x, "image", gen) for m, x in normalized.items()}
            image_level = net.reembed(clean, noisy_inputs, self.gaussian.targets(len(batch), gen))
            rows["image"] = net.project_patches(image_level, keep)
            targets = self.gaussian.targets(len(batch), gen)
            feature_level = {
                m: torch.where(targets[m].to(self.device).view(-1, 1, 1, 1),
                               self.gaussian.noise(clean[m], "feature", gen), clean[m])
                for m in self.modalities
            }
            rows["feature"] = net.project_patches(feature_level, keep)
            rows["projected"] = self.gaussian.noise(z_clean, "projected", gen)
        if self.texture is not None:
            rgb, depth, region, touched = self.texture(batch.rgb, batch.depth, batch.foreground, gen)
            augmented = {m: net.backbone_input(x, m) for m, x in (("rgb", rgb), ("depth", depth))
                         if m in self.modalities}
            rows["texture"] = net.project_patches(net.reembed(clean, augmented, touched), keep)
            labels = mask_to_grid(region, grid).flatten()[keep]
        return Drawn(rows, labels)
