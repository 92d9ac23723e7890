"""How a patch is scored: small objects chosen by name once (:func:`scorer_named`).

    discriminator   sigmoid of the discriminator's logit, in [0, 1] (the paper's head)
    memory          per modality, the distance to the nearest clean training patch
                    (:mod:`bridgenet.model.memory`), standardised; the modalities summed
                    (``memory_fusion: sum``) or the larger taken (``max``)
    fused           fusion_weight * standardised logit + (1 - fusion_weight) * memory score

A scorer names the raw components it needs (``discriminator``: logits; ``memory_<m>``:
nearest-neighbour distances) and combines them; the network computes the components and
holds their standardisation (:meth:`bridgenet.model.network.BridgeNet.calibrate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch


class Scales(Protocol):
    """What combining needs from the network: its modalities, fusion settings and standardisation."""

    modalities: tuple[str, ...]
    memory_fusion: str
    fusion_weight: float

    def standardized(self, name: str, values: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Scorer:
    """One way to score a patch (module docstring). ``probability``: scores in [0, 1], the
    patches off the object score 0; otherwise they get the sample's lowest score."""

    name: str
    uses_discriminator: bool
    uses_memory: bool
    probability: bool

    def __str__(self) -> str:
        return self.name

    def components(self, modalities: tuple[str, ...]) -> tuple[str, ...]:
        """The raw components this scorer reads, in the network's order."""
        out = ("discriminator",) if self.uses_discriminator else ()
        return out + (tuple(f"memory_{m}" for m in modalities) if self.uses_memory else ())

    def combine(self, net: Scales, components: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The patch score from the raw ``components`` (each (P,))."""
        if self.probability:
            return torch.sigmoid(components["discriminator"])
        # Standardised, each modality's 1 is "as high as a clean part's worst patch". Summed, a
        # patch that both modalities find unusual outranks one that either finds unusual alone
        # (real scans: a glint in RGB or a sensor hole in depth is seldom both).
        memory = torch.stack([net.standardized(f"memory_{m}", components[f"memory_{m}"])
                              for m in net.modalities])
        memory = memory.sum(0) if net.memory_fusion == "sum" else memory.amax(0)
        if not self.uses_discriminator:
            return memory
        w = net.fusion_weight
        return w * net.standardized("discriminator", components["discriminator"]) + (1 - w) * memory


DISCRIMINATOR = Scorer("discriminator", uses_discriminator=True, uses_memory=False, probability=True)
MEMORY = Scorer("memory", uses_discriminator=False, uses_memory=True, probability=False)
FUSED = Scorer("fused", uses_discriminator=True, uses_memory=True, probability=False)
SCORERS: dict[str, Scorer] = {s.name: s for s in (DISCRIMINATOR, MEMORY, FUSED)}


def scorer_named(name: str | Scorer) -> Scorer:
    """The scorer called ``name`` (a :class:`Scorer` is returned as it is); unknown names are refused."""
    if isinstance(name, Scorer):
        return name
    try:
        return SCORERS[name]
    except (KeyError, TypeError):
        raise ValueError(f"model.scorer: unknown {name!r}; allowed {tuple(SCORERS)}") from None
