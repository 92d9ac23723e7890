"""Memory-bank head: a patch scores its distance to the nearest clean training patch.

Per modality, the standardised clean patch embeddings of the training goods on the
(dilated) foreground form a bank, reduced by greedy k-centre coreset selection
(PatchCore, Roth et al. CVPR 2022): repeatedly keep the embedding farthest from
those already kept, with distances taken after a fixed random projection to make
them cheap. A test patch's score is its Euclidean distance to the nearest kept
embedding (chunked matrix products, :func:`nearest_distance`); it
needs no anomaly generator, so it sees defects that look like nothing the
generators draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bridgenet.config import MemoryConfig

# queries per product in :func:`nearest_distance`: on 2 CPU cores, 632 queries per sample in a
# 2,048 x 256 bank took 4.5 / 3.7 / 3.6 / 3.6 / 5.5 ms per sample at 256 / 512 / 1,024 / 2,048 /
# 8,192 (one product, the whole batch) per chunk (docs/benchmarks.md, Speed)
SEARCH_CHUNK = 1024


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
    chunk_size: int = 0, oversample: int = 4,
) -> Coreset:
    """Greedy k-centre selection of ``n_keep`` of ``rows`` (N, D) that looks at every row.

    With ``0 < projection_dim < D`` the distances are taken after a seeded Gaussian
    random projection to ``projection_dim`` dimensions (Johnson-Lindenstrauss: the
    selection changes little, the cost falls by D / projection_dim).

    One greedy pass over N rows costs N x kept distance evaluations, too slow at real
    scale (230 real training samples give ~150,000 candidates per modality: 150 s for
    4,096 kept on 2 cores). With ``0 < chunk_size < N`` the selection takes two passes
    instead: the rows, in seeded random order, are cut into chunks of ``chunk_size``; a
    greedy pass in each chunk keeps its share of ``oversample * n_keep`` rows; a second
    greedy pass keeps ``n_keep`` of those. Every row lies within r1 + r2 of a kept row
    (the two passes' radii, by the triangle inequality), and the cost is about
    ``oversample * n_keep * (chunk_size + n_keep)`` whatever N is, so the two passes are taken
    only where that is less than one pass's ``N * n_keep`` (N above about 74,000 rows at the
    defaults); below it one exact greedy pass is both cheaper and tighter. The radius
    returned is measured exactly over all N rows. The first row of each pass is drawn from
    ``generator``; the rest follow deterministically.
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
    if not 0 < chunk_size < n or oversample * (chunk_size + n_keep) >= n:  # one pass is cheaper
        kept, nearest = _greedy(points, n_keep, generator)
        return Coreset(kept, float(nearest.max()))
    order = torch.randperm(n, generator=generator).to(points.device)
    pooled = []
    for start in range(0, n, chunk_size):
        chunk = order[start:start + chunk_size]
        share = max(1, math.ceil(oversample * n_keep * len(chunk) / n))
        pooled.append(chunk[_greedy(points[chunk], share, generator)[0]])
    pool = torch.cat(pooled)
    kept = pool[_greedy(points[pool], n_keep, generator)[0]]
    return Coreset(kept, float(nearest_distance(points, points[kept]).max()))


def _greedy(points: torch.Tensor, n_keep: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact greedy k-centre of ``points`` (N, p): kept indices (K,) and each point's distance
    (N,) to its nearest kept one. Squared distances from one product per step
    (``|x|^2 - 2 x.c + |c|^2``), which reads the points once and allocates nothing N x p."""
    n = points.shape[0]
    n_keep = min(n_keep, n)
    squares = (points * points).sum(1)
    first = int(torch.randint(n, (1,), generator=generator))
    nearest = (squares - 2 * (points @ points[first]) + squares[first]).clamp_min_(0)
    rest = _farthest_first(points, squares, nearest, n_keep - 1)
    return torch.cat([torch.tensor([first], device=points.device), rest]), nearest.sqrt()


def _farthest_first(points: torch.Tensor, squares: torch.Tensor, nearest: torch.Tensor, n_add: int) -> torch.Tensor:
    """``n_add`` greedy k-centre picks (indices into ``points`` (N, p)), each the point farthest
    from everything kept so far; ``nearest`` (N,), each point's squared distance to what is kept
    already, is updated in place. ``squares`` (N,): the points' squared norms."""
    kept = torch.empty(max(n_add, 0), dtype=torch.long, device=points.device)
    for i in range(len(kept)):
        farthest = int(torch.argmax(nearest))
        kept[i] = farthest
        candidate = (squares - 2 * (points @ points[farthest]) + squares[farthest]).clamp_min_(0)
        torch.minimum(nearest, candidate, out=nearest)
    return kept


def grow_coreset(
    bank: torch.Tensor, rows: torch.Tensor, n_add: int, projection_dim: int, generator: torch.Generator,
) -> Coreset:
    """Greedy k-centre continued from a kept ``bank`` (K, D): ``n_add`` of the new ``rows`` (N, D).

    Every entry of ``bank`` stays; each pick is the new row farthest from the bank and from
    the rows picked before it (distances after the same kind of seeded random projection as
    :func:`greedy_coreset`), so new rows that the bank already covers cost no entry. The
    radius returned is measured exactly, in the rows' own space: every new row lies within
    it of the grown bank (``bank`` plus the picked rows).
    """
    if rows.shape[0] == 0:
        raise ValueError("grow_coreset: no new rows to add")
    if bank.shape[0] == 0:
        raise ValueError("grow_coreset: the bank to grow is empty (use greedy_coreset)")
    points = torch.cat([bank, rows]).float()
    if 0 < projection_dim < points.shape[1]:
        points = points @ random_projection(points.shape[1], projection_dim, generator).to(points.device)
    old, new = points[:bank.shape[0]], points[bank.shape[0]:]
    nearest = nearest_distance(new, old).square()
    picked = _farthest_first(new, (new * new).sum(1), nearest, min(n_add, rows.shape[0]))
    grown = torch.cat([bank.float(), rows[picked].float()])
    return Coreset(picked, float(nearest_distance(rows.float(), grown).max()))


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = SEARCH_CHUNK) -> torch.Tensor:
    """Euclidean distance (Q,) of each query row (Q, D) to its nearest ``bank`` row (K, D), exact
    up to float rounding: :func:`matmul_nearest` on ``chunk`` queries at a time, so memory is
    ``chunk`` x K distances (8 MB at the defaults, a 2,048-entry bank) instead of Q x K, and
    the default chunk was among the fastest measured (:data:`SEARCH_CHUNK`).
    """
    if bank.shape[0] == 0:
        raise ValueError("nearest_distance: the memory bank is empty")
    queries, bank = queries.float(), bank.float()
    bank_sq = (bank * bank).sum(1)
    out = [matmul_nearest(queries[start:start + chunk], bank, bank_sq)
           for start in range(0, queries.shape[0], chunk)]
    return torch.cat(out) if out else queries.new_zeros(0)


def matmul_nearest(queries: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor | None = None) -> torch.Tensor:
    """Nearest-neighbour distances (Q,) from one ``|b|^2 - 2 q.b`` product, its row minimum, plus
    ``|q|^2`` (a per-row constant, added after the minimum: one Q x K pass fewer): plain torch
    operations, the exported model's search too; memory Q x K. ``bank_sq``, the bank's squared
    row norms, may be given when one bank serves many calls."""
    bank_sq = (bank * bank).sum(1) if bank_sq is None else bank_sq
    d2 = torch.addmm(bank_sq.unsqueeze(0), queries, bank.t(), alpha=-2.0).amin(1) + (queries * queries).sum(1)
    return d2.clamp_min(0.0).sqrt()


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

        Keeps ``coreset_ratio`` of the candidate patches, at most the modality's share of
        ``max_entries`` (:meth:`~bridgenet.config.MemoryConfig.bank_cap`), chosen by
        :func:`greedy_coreset` among all of them.
        Returns each modality's candidate count, bank size and covering radius.
        """
        info: dict[str, float] = {}
        flat_keep = keep.flatten()
        for m in self.modalities:
            emb = embeddings[m]
            rows = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])[flat_keep.to(emb.device)]
            n_keep = cfg.bank_size(rows.shape[0], len(self.modalities))
            coreset = greedy_coreset(rows, n_keep, cfg.projection_dim, generator, cfg.chunk_size)
            setattr(self, f"{m}_bank", rows[coreset.indices].float().contiguous())
            info.update({f"{m}_candidates": float(rows.shape[0]), f"{m}_bank": float(len(coreset.indices)),
                         f"{m}_radius": coreset.radius})
        return info

    @torch.no_grad()
    def extend(
        self, embeddings: dict[str, torch.Tensor], keep: torch.Tensor, cfg: MemoryConfig,
        generator: torch.Generator,
    ) -> dict[str, float]:
        """Add new good parts' (N, D, h, w) embeddings on patches ``keep`` (N, h, w) to every bank.

        The size rule of :meth:`fit` applied to the new candidates: ``coreset_ratio`` of them
        join the bank, so that it stays about that share of every candidate it has seen, and
        it never passes its share of ``max_entries``. They are chosen by :func:`grow_coreset`: the
        bank is kept whole and each new entry is the new patch farthest from it. A bank already
        at its share is instead selected again, that many entries by :func:`greedy_coreset`
        among its entries and the new patches together (``<m>_reselected`` 1). Either way
        every new patch lies within ``<m>_radius`` (exact, in the embedding space) of an
        entry. Returns, per modality, the new candidates, entries added, bank size, radius.
        """
        info: dict[str, float] = {}
        flat_keep, cap = keep.flatten(), cfg.bank_cap(len(self.modalities))
        for m in self.modalities:
            emb, bank = embeddings[m], self.bank(m)
            rows = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])[flat_keep.to(emb.device)].float()
            if rows.shape[0] == 0:
                raise ValueError(f"memory bank {m}: the new parts have no patch to add")
            room = cap - bank.shape[0]
            n_add = min(room, cfg.share(rows.shape[0]))
            if n_add > 0:
                grown = grow_coreset(bank, rows, n_add, cfg.projection_dim, generator)
                new_bank, radius = torch.cat([bank, rows[grown.indices].to(bank.device)]), grown.radius
            else:
                union = torch.cat([bank, rows.to(bank.device)])
                chosen = greedy_coreset(union, cap, cfg.projection_dim, generator, cfg.chunk_size)
                new_bank = union[chosen.indices]
                radius = float(nearest_distance(rows, new_bank).max())
            setattr(self, f"{m}_bank", new_bank.float().contiguous())
            info.update({f"{m}_new_candidates": float(rows.shape[0]), f"{m}_added": float(max(n_add, 0)),
                         f"{m}_bank": float(new_bank.shape[0]), f"{m}_radius": radius,
                         f"{m}_reselected": float(n_add <= 0)})
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
