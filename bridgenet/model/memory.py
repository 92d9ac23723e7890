"""Memory-bank head: a patch scores its distance to the nearest clean training patch.

Per modality, the standardised clean patch embeddings of the training goods on the
(dilated) foreground form a bank, reduced by greedy k-centre coreset selection
(PatchCore, Roth et al. CVPR 2022): repeatedly keep the embedding farthest from
those already kept, with distances taken after a fixed random projection to make
them cheap. A test patch's score is its Euclidean distance to the nearest kept
embedding (found with faiss on the CPU, a chunked matrix product elsewhere); it
needs no anomaly generator, so it sees defects that look like nothing the
generators draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

try:  # faiss-cpu is a runtime dependency; without it the torch search gives the same distances
    import faiss
except ImportError:  # pragma: no cover - exercised only where faiss is missing
    faiss = None

from bridgenet.config import MemoryConfig


@dataclass
class Coreset:
    """Indices (K,) of the kept rows and the covering radius in the selection space.

    Every row of the input lies within ``radius`` of a kept row (in the space the
    distances were measured in: the random projection when one was used).
    """

    indices: torch.Tensor
    radius: float


def random_projection(dim: int, projection_dim: int, generator: torch.Generator) -> torch.Tensor:
    """(dim, projection_dim) Gaussian matrix scaled to keep distances in expectation."""
    return torch.randn(dim, projection_dim, generator=generator) / projection_dim**0.5


def greedy_coreset(
    rows: torch.Tensor, n_keep: int, projection_dim: int, generator: torch.Generator,
    max_candidates: int = 0,
) -> Coreset:
    """Greedy k-centre selection of ``n_keep`` of ``rows`` (N, D).

    With ``0 < projection_dim < D`` the distances are taken after a seeded Gaussian
    random projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss: the
    selection changes little, the cost falls by D / projection_dim). With
    ``0 < max_candidates < N`` the greedy passes run over a seeded random subset of
    that many rows (each pass reads every candidate, so the cost is candidates x
    kept); the radius is still measured over all ``N`` rows. The first kept row is
    drawn from ``generator``; the rest follow deterministically.
    """
    n = rows.shape[0]
    if n == 0:
        raise ValueError("greedy_coreset: no rows to select from")
    if n_keep < 1:
        raise ValueError(f"greedy_coreset: n_keep must be >= 1, got {n_keep}")
    points = rows.float()
    if 0 < projection_dim < points.shape[1]:
        points = points @ random_projection(points.shape[1], projection_dim, generator).to(points.device)
    if n_keep >= n:
        return Coreset(torch.arange(n, device=rows.device), 0.0)
    pool = None
    if 0 < max_candidates < n:
        pool = torch.randperm(n, generator=generator)[:max(max_candidates, n_keep)].sort().values.to(points.device)
    candidates = points if pool is None else points[pool]
    first = int(torch.randint(candidates.shape[0], (1,), generator=generator))
    kept = torch.empty(n_keep, dtype=torch.long, device=rows.device)
    kept[0] = first
    nearest = torch.linalg.vector_norm(candidates - candidates[first], dim=1)
    for i in range(1, n_keep):
        farthest = int(torch.argmax(nearest))
        kept[i] = farthest
        nearest = torch.minimum(nearest, torch.linalg.vector_norm(candidates - candidates[farthest], dim=1))
    if pool is None:
        return Coreset(kept, float(nearest.max()))
    kept = pool[kept]
    return Coreset(kept, float(nearest_distance(points, points[kept]).max()))


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Euclidean distance (Q,) of each query row (Q, D) to its nearest ``bank`` row (K, D).

    On the CPU, faiss's exact flat search (about twice the speed of the matrix
    product below, bench/speed.py); elsewhere chunked ``|q|^2 - 2 q.b + |b|^2``
    matrix products. Both are exact up to float rounding; memory is bounded by
    ``chunk`` x K.
    """
    if bank.shape[0] == 0:
        raise ValueError("nearest_distance: the memory bank is empty")
    queries, bank = queries.float(), bank.float()
    if faiss is not None and queries.device.type == "cpu" and bank.device.type == "cpu" and len(queries):
        return _faiss_nearest(queries, bank)
    out = [matmul_nearest(queries[start:start + chunk], bank) for start in range(0, queries.shape[0], chunk)]
    return torch.cat(out) if out else queries.new_zeros(0)


def matmul_nearest(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour distances (Q,) from one ``|q|^2 - 2 q.b + |b|^2`` product: plain
    torch operations (the exported model's search); memory Q x K."""
    bank_sq = (bank * bank).sum(1)
    d2 = torch.addmm(bank_sq.unsqueeze(0), queries, bank.t(), alpha=-2.0) + (queries * queries).sum(1, keepdim=True)
    return d2.amin(1).clamp_min(0.0).sqrt()


def _faiss_nearest(queries: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    faiss.omp_set_num_threads(torch.get_num_threads())  # the same cap as torch's (no oversubscription)
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(np.ascontiguousarray(bank.detach().numpy()))
    d2, _ = index.search(np.ascontiguousarray(queries.detach().numpy()), 1)
    return torch.from_numpy(d2[:, 0]).clamp_min(0.0).sqrt()


class MemoryBank(nn.Module):
    """One bank (K, D) of clean patch embeddings per modality, saved with the model.

    The banks are buffers whose size is known only after :meth:`fit`; loading a
    state dict resizes them to the stored shapes.
    """

    def __init__(self, modalities: tuple[str, ...], dim: int) -> None:
        super().__init__()
        self.modalities = modalities
        for m in modalities:
            self.register_buffer(f"{m}_bank", torch.zeros(0, dim))

    def bank(self, modality: str) -> torch.Tensor:
        return getattr(self, f"{modality}_bank")

    @property
    def fitted(self) -> bool:
        return all(self.bank(m).shape[0] > 0 for m in self.modalities)

    @torch.no_grad()
    def fit(
        self, embeddings: dict[str, torch.Tensor], keep: torch.Tensor, cfg: MemoryConfig,
        generator: torch.Generator,
    ) -> dict[str, float]:
        """Fill every modality's bank from (N, D, h, w) embeddings on patches ``keep`` (N, h, w).

        Keeps ``coreset_ratio`` of the candidate patches, at most ``max_bank``, chosen
        among at most ``max_candidates`` of them.
        Returns each modality's candidate count, bank size and covering radius.
        """
        info: dict[str, float] = {}
        flat_keep = keep.flatten()
        for m in self.modalities:
            emb = embeddings[m]
            rows = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])[flat_keep.to(emb.device)]
            n_keep = min(cfg.max_bank, max(1, round(cfg.coreset_ratio * rows.shape[0])))
            coreset = greedy_coreset(rows, n_keep, cfg.projection_dim, generator, cfg.max_candidates)
            setattr(self, f"{m}_bank", rows[coreset.indices].float().contiguous())
            info.update({f"{m}_candidates": float(rows.shape[0]), f"{m}_bank": float(len(coreset.indices)),
                         f"{m}_radius": coreset.radius})
        return info

    def distances(self, modality: str, rows: torch.Tensor) -> torch.Tensor:
        """(P, D) standardised patch embeddings -> (P,) distance to the nearest bank entry."""
        return nearest_distance(rows, self.bank(modality))

    def nbytes(self) -> int:
        return sum(self.bank(m).numel() * self.bank(m).element_size() for m in self.modalities)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for m in self.modalities:
            stored = state_dict.get(f"{prefix}{m}_bank")
            if stored is not None:
                setattr(self, f"{m}_bank", torch.empty_like(stored, device=self.bank(m).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
