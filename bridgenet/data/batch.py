"""The network's input batch, made from a cached split, and the device it runs on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bridgenet.data.cache import CachedSplit


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Batch:
    """Network inputs in [0, 1]: rgb (B, 3, S, S), depth (B, 1, S, S), foreground (B, S, S) bool."""

    rgb: torch.Tensor
    depth: torch.Tensor
    foreground: torch.Tensor

    @classmethod
    def from_arrays(cls, rgb: np.ndarray, depth: np.ndarray, foreground: np.ndarray) -> Batch:
        """Network-size arrays, as the cache holds them: rgb uint8 (N, S, S, 3), depth float (N, S, S),
        foreground bool (N, S, S)."""
        return cls(
            rgb=torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2).float().div(255.0),
            depth=torch.from_numpy(np.ascontiguousarray(depth)).unsqueeze(1).float(),
            foreground=torch.from_numpy(np.ascontiguousarray(foreground, dtype=bool)),
        )

    @classmethod
    def from_split(cls, split: CachedSplit, index: np.ndarray | slice = slice(None)) -> Batch:
        return cls.from_arrays(split.rgb[index], split.depth[index], split.foreground[index])

    def to(self, device: torch.device) -> Batch:
        return Batch(self.rgb.to(device), self.depth.to(device), self.foreground.to(device))

    def inputs(self) -> dict[str, torch.Tensor]:
        return {"rgb": self.rgb, "depth": self.depth}

    def select(self, index: torch.Tensor | np.ndarray | slice) -> Batch:
        return Batch(self.rgb[index], self.depth[index], self.foreground[index])

    def __len__(self) -> int:
        return self.rgb.shape[0]
