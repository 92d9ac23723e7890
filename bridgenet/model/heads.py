"""The network's trainable and parameter-free parts after the backbone.

:class:`PatchAdapter` turns backbone feature maps into patch embeddings (shared by both
modalities); :class:`Projection` and :class:`Discriminator` are the trained head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pooling_kernel(channels: int, patch: int, width: int) -> torch.Tensor:
    """Fixed conv weight (width, channels, patch, patch) that average-pools each patch vector.

    The patch vector (channels * patch * patch values, channel-major) is
    adaptive-average-pooled to ``width`` values: a fixed linear map, applied
    here as a convolution so that no patch is ever unfolded in memory.
    """
    eye = torch.eye(channels * patch * patch).unsqueeze(1)  # (C*k*k, 1, C*k*k)
    pooled = F.adaptive_avg_pool1d(eye, width).squeeze(1)  # (C*k*k, width)
    return pooled.t().reshape(width, channels, patch, patch).contiguous()


class PatchAdapter(nn.Module):
    """Parameter-free feature adaptation shared by both modalities.

    Each layer's k x k neighbourhood is aggregated and averaged to an equal
    share of ``embed_dim``; deeper maps are upsampled to the first layer's grid.
    Input: list of (B, C_i, H_i, W_i); output (B, embed_dim, H_0, W_0).
    """

    def __init__(self, channels: list[int], patch_size: int, embed_dim: int) -> None:
        super().__init__()
        if patch_size % 2 != 1:
            raise ValueError(f"model.patch_size must be odd, got {patch_size}")
        if embed_dim < len(channels):
            raise ValueError(f"model.embed_dim {embed_dim} is smaller than the number of layers")
        shares = [embed_dim // len(channels)] * len(channels)
        shares[-1] += embed_dim - sum(shares)
        self.patch_size = patch_size
        for i, (c, width) in enumerate(zip(channels, shares)):
            self.register_buffer(f"kernel{i}", _pooling_kernel(c, patch_size, width), persistent=False)
        self.n_layers = len(channels)
        self.embed_dim = embed_dim

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        pad = self.patch_size // 2
        maps = []
        for i, feature in enumerate(features):
            pooled = F.conv2d(feature, getattr(self, f"kernel{i}").to(feature.dtype), padding=pad)
            if pooled.shape[-2:] != size:
                pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
            maps.append(pooled)
        return torch.cat(maps, dim=1)


def _mlp_init(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Discriminator(nn.Module):
    """MLP patch scorer: (N, in_dim) -> logits (N,). Linear-BatchNorm-LeakyReLU blocks."""

    def __init__(self, in_dim: int, hidden: int, n_layers: int) -> None:
        super().__init__()
        if n_layers < 2:
            raise ValueError(f"model.dsc_layers must be >= 2, got {n_layers}")
        blocks: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers - 1):
            blocks += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), nn.LeakyReLU(0.3)]
            width = hidden
        self.body = nn.Sequential(*blocks)
        self.tail = nn.Linear(width, 1, bias=False)
        self.apply(_mlp_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x)).squeeze(-1)


class Projection(nn.Module):
    """Trainable linear projection of the fused patch features; identity when n_layers == 0."""

    def __init__(self, dim: int, n_layers: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*[nn.Linear(dim, dim) for _ in range(n_layers)])
        self.apply(_mlp_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
