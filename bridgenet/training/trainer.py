"""The trainer: the network, its optimisers, the negatives and the clean training embeddings.

The backbone is frozen, so clean training samples are embedded once per run (and the
memory bank built from them); only perturbed inputs go through the backbone again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from bridgenet.config import MemoryConfig, Params
from bridgenet.data.batch import Batch
from bridgenet.data.cache import CachedSplit
from bridgenet.model.network import BridgeNet
from bridgenet.training.loss import discriminator_loss
from bridgenet.training.negatives import Negatives

LOGGER = logging.getLogger(__name__)


class Trainer:
    """Holds the network, the negatives, the optimisers and the per-run clean-feature cache."""

    def __init__(self, params: Params, train_split: CachedSplit, device: torch.device) -> None:
        self.params = params
        self.device = device
        torch.manual_seed(params.train.seed)
        self.network = BridgeNet(params.model).to(device)
        self.modalities = self.network.modalities
        tcfg = params.train
        groups = self.network.trainable_parameters()
        self.optimizers = {
            "discriminator": torch.optim.AdamW(groups["discriminator"], lr=tcfg.lr_discriminator),
        }
        if groups["projection"]:
            self.optimizers["projection"] = torch.optim.Adam(
                groups["projection"], lr=tcfg.lr_projection, weight_decay=tcfg.weight_decay_projection
            )
        self.generator = torch.Generator().manual_seed(params.train.seed)
        self.negatives = Negatives(params.anomalies, self.modalities, train_split.rgb.shape[1], params.train.seed,
                                   device)
        self.data = Batch.from_split(train_split).to(device)
        empty = int((~self.data.foreground.flatten(1).any(1)).sum())
        if empty:
            LOGGER.warning("%d of %d training samples have no foreground: their patches are scored on the "
                           "whole image, anomalies placed where the colour image has structure", empty,
                           len(self.data))
        self.clean = self._embed_all(self.data)
        self.memory_info: dict[str, float] = {}
        self.memory_config = params.model.memory
        self.fit_memory()
        self.use_amp = params.train.amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    @torch.no_grad()
    def _embed_all(self, data: Batch) -> dict[str, torch.Tensor]:
        """Standardised clean embeddings of every training sample, computed once per run."""
        size = self.params.train.batch_size
        inputs = data.inputs()
        self.network.depth_image.fit(data.depth)
        raw = {
            m: torch.cat([self.network.embed(inputs[m][i:i + size], m, standardized=False)
                          for i in range(0, len(data), size)])
            for m in self.modalities
        }
        self.network.fit_standardization(raw)
        return {m: self.network.standardize(m, raw[m]) for m in self.modalities}

    def fit_memory(self, memory: MemoryConfig | None = None) -> dict[str, float]:
        """The memory bank from the clean embeddings of the scored patches (its own seeded generator,
        so that building it leaves the training's random stream as it was), under ``memory``
        (default: the params'). Training builds it once, before the first step; a bench may build
        it again under other memory settings without embedding the training split again."""
        grid = self.clean[self.modalities[0]].shape[-2:]
        keep = self.network.kept_patches(self.data.depth, grid).view(len(self.data), *grid)
        tick = time.perf_counter()
        info = self.network.memory.fit(self.clean, keep, memory or self.params.model.memory,
                                       torch.Generator().manual_seed(self.params.train.seed))
        info["memory_seconds"] = time.perf_counter() - tick
        info["memory_mb"] = self.network.memory.nbytes() / 2**20
        LOGGER.info("memory bank: %s", ", ".join(f"{k} {v:.4g}" for k, v in info.items()))
        self.memory_info = info  # the record of the bank the network holds now, and its settings
        self.memory_config = memory or self.params.model.memory
        return info

    def step(self, index: torch.Tensor) -> dict[str, float]:
        """One optimisation step on the training samples ``index``; returns the loss terms
        (:mod:`bridgenet.training.loss`)."""
        net, gen = self.network, self.generator
        clean = {m: self.clean[m][index] for m in self.modalities}
        batch = Batch(self.data.rgb[index], self.data.depth[index], self.data.foreground[index])
        grid = clean[self.modalities[0]].shape[-2:]
        # Patches the eval forward never scores are not trained on either (and cost most of a step).
        keep = net.kept_patches(batch.depth, grid)

        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            z_clean = net.project_patches(clean, keep)
            drawn = self.negatives.draw(net, batch, clean, z_clean, keep, gen)
            logits = net.training_logits(z_clean, drawn.rows)
        loss, terms = discriminator_loss(logits, drawn.texture_labels, self.params.anomalies.texture.focal_gamma)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        return terms

    def epoch(self) -> dict[str, float]:
        """One pass over at most ``max_samples_per_epoch`` shuffled training samples."""
        self.network.train()
        tcfg = self.params.train
        order = torch.randperm(len(self.data), generator=self.generator)[: tcfg.max_samples_per_epoch]
        sums: dict[str, float] = {}
        steps = 0
        for start in range(0, len(order), tcfg.batch_size):
            index = order[start:start + tcfg.batch_size].to(self.device)
            if len(index) < 2:  # BatchNorm needs more than one sample
                continue
            for key, value in self.step(index).items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
        return {key: value / max(steps, 1) for key, value in sums.items()}

    def state(self) -> dict[str, Any]:
        return {
            "network": {k: v.clone() for k, v in self.network.state_dict().items() if not k.startswith("backbone.")},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"], strict=False)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        self.generator.set_state(state["generator"])
