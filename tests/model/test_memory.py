"""Memory-bank head: coreset selection, nearest-neighbour distances, saving the bank."""

from __future__ import annotations

import pytest
import torch

from bridgenet.config import MemoryConfig, ModelConfig
from bridgenet.model.memory import MemoryBank, greedy_coreset, nearest_distance, random_projection


def clustered_rows(seed: int = 0, n: int = 600, dim: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, dim, generator=gen) * 4
    return centres[torch.randint(12, (n,), generator=gen)] + torch.randn(n, dim, generator=gen) * 0.3


def test_coreset_is_deterministic_for_a_seed():
    rows = clustered_rows()
    first = greedy_coreset(rows, 50, 8, torch.Generator().manual_seed(3))
    again = greedy_coreset(rows, 50, 8, torch.Generator().manual_seed(3))
    other = greedy_coreset(rows, 50, 8, torch.Generator().manual_seed(4))
    assert torch.equal(first.indices, again.indices) and first.radius == again.radius
    assert not torch.equal(first.indices, other.indices)
    assert len(set(first.indices.tolist())) == 50


@pytest.mark.parametrize("projection_dim", [0, 8])
def test_every_dropped_row_lies_within_the_radius_of_a_kept_one(projection_dim):
    rows = clustered_rows()
    coreset = greedy_coreset(rows, 40, projection_dim, torch.Generator().manual_seed(0))
    space = rows
    if projection_dim:  # the selection's own space: the same seeded projection
        space = rows @ random_projection(rows.shape[1], projection_dim, torch.Generator().manual_seed(0))
    dropped = torch.ones(len(rows), dtype=torch.bool)
    dropped[coreset.indices] = False
    nearest = torch.cdist(space[dropped], space[coreset.indices]).amin(1)
    assert float(nearest.max()) <= coreset.radius * (1 + 1e-4)  # cdist vs vector_norm rounding
    # The radius is tight (it is the farthest dropped row's distance) and far below
    # the data's spread: every one of the 12 clusters has a kept row.
    assert float(nearest.max()) == pytest.approx(coreset.radius, rel=1e-4)
    assert coreset.radius < float(torch.cdist(space, space).max()) / 4


@pytest.mark.parametrize("projection_dim", [0, 8])
def test_the_two_pass_selection_covers_every_candidate(projection_dim):
    """Chunked first pass, greedy second pass: every row, in no chunk's favour, lies within the
    returned radius of a kept row, and that radius is close to one exact greedy pass's."""
    rows = clustered_rows(n=3000)
    coreset = greedy_coreset(rows, 40, projection_dim, torch.Generator().manual_seed(0), chunk_size=500)
    again = greedy_coreset(rows, 40, projection_dim, torch.Generator().manual_seed(0), chunk_size=500)
    assert torch.equal(coreset.indices, again.indices) and coreset.radius == again.radius
    assert len(set(coreset.indices.tolist())) == 40
    space = rows
    if projection_dim:
        space = rows @ random_projection(rows.shape[1], projection_dim, torch.Generator().manual_seed(0))
    nearest = torch.cdist(space, space[coreset.indices]).amin(1)
    assert float(nearest.max()) <= coreset.radius * (1 + 1e-4)
    assert float(nearest.max()) == pytest.approx(coreset.radius, rel=1e-4)
    single = greedy_coreset(rows, 40, projection_dim, torch.Generator().manual_seed(0))
    assert coreset.radius <= 1.5 * single.radius
    assert coreset.radius < float(torch.cdist(space, space).max()) / 4  # every cluster has a kept row


def test_one_exact_pass_where_two_would_cost_more():
    """Two passes cost about oversample * K * (chunk + K) distances, one pass N * K: below that
    size one exact greedy pass is taken, the same selection as without chunks."""
    rows = clustered_rows(n=2000)  # 4 * 40 * (500 + 40) > 2000 * 40
    chunked = greedy_coreset(rows, 40, 0, torch.Generator().manual_seed(0), chunk_size=500)
    single = greedy_coreset(rows, 40, 0, torch.Generator().manual_seed(0))
    assert torch.equal(chunked.indices, single.indices) and chunked.radius == single.radius


def test_the_two_pass_selection_sees_rows_that_a_random_pool_would_miss():
    """A small cluster of 20 rows among 5,000: the selection keeps one of them whatever the chunking."""
    gen = torch.Generator().manual_seed(5)
    rows = torch.cat([torch.randn(4980, 16, generator=gen), torch.randn(20, 16, generator=gen) * 0.1 + 30])
    coreset = greedy_coreset(rows, 10, 0, torch.Generator().manual_seed(1), chunk_size=1000)
    assert (coreset.indices >= 4980).any()
    assert coreset.radius < 15


def test_coreset_keeps_everything_when_asked_for_more_rows_than_there_are():
    rows = clustered_rows(n=10)
    coreset = greedy_coreset(rows, 20, 0, torch.Generator().manual_seed(0))
    assert sorted(coreset.indices.tolist()) == list(range(10)) and coreset.radius == 0.0


def test_nearest_distance_matches_cdist_across_chunks():
    gen = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(300, 16, generator=gen), torch.randn(70, 16, generator=gen)
    expected = torch.cdist(queries, bank).amin(1)
    assert torch.allclose(nearest_distance(queries, bank, chunk=64), expected, atol=1e-4)
    assert torch.allclose(nearest_distance(bank[:5], bank), torch.zeros(5), atol=1e-3)


def test_the_chunked_search_and_the_graphs_single_product_agree_with_cdist():
    from bridgenet.model.memory import matmul_nearest

    gen = torch.Generator().manual_seed(2)
    queries, bank = torch.randn(2500, 64, generator=gen) * 3, torch.randn(200, 64, generator=gen) * 3
    expected = torch.cdist(queries, bank).amin(1)
    chunked = nearest_distance(queries, bank)  # the default chunk: several products
    single = matmul_nearest(queries, bank)  # the exported graph's one product
    given = matmul_nearest(queries, bank, (bank * bank).sum(1))
    for got in (chunked, single, given):
        assert got.shape == (2500,)
        assert torch.allclose(got, expected, atol=1e-3)
    assert torch.equal(single, given)
    assert nearest_distance(queries[:0], bank).shape == (0,)


def test_bank_fits_on_kept_patches_only_and_survives_a_state_dict_round_trip():
    gen = torch.Generator().manual_seed(0)
    embeddings = {m: torch.randn(3, 8, 4, 4, generator=gen) for m in ("rgb", "depth")}
    keep = torch.zeros(3, 4, 4, dtype=torch.bool)
    keep[:, 1:3, 1:3] = True  # 12 candidate patches
    bank = MemoryBank(("rgb", "depth"), 8)
    assert not bank.fitted
    info = bank.fit(embeddings, keep, MemoryConfig(coreset_ratio=0.5), torch.Generator().manual_seed(0))
    assert info["rgb_candidates"] == 12 and info["rgb_bank"] == 6
    candidates = embeddings["rgb"].permute(0, 2, 3, 1)[keep]
    assert all(any(torch.equal(row, c) for c in candidates) for row in bank.bank("rgb"))
    restored = MemoryBank(("rgb", "depth"), 8)
    restored.load_state_dict(bank.state_dict())
    assert restored.fitted and torch.equal(restored.bank("depth"), bank.bank("depth"))
    assert bank.nbytes() == 2 * 6 * 8 * 4


def test_max_entries_caps_the_banks_together():
    """One modality may fill the whole cap; two share it equally (the search reads every bank)."""
    gen = torch.Generator().manual_seed(0)
    cfg = MemoryConfig(coreset_ratio=1.0, max_entries=10)
    alone = MemoryBank(("rgb",), 4)
    alone.fit({"rgb": torch.randn(2, 4, 8, 8, generator=gen)}, torch.ones(2, 8, 8, dtype=torch.bool), cfg,
              torch.Generator().manual_seed(0))
    assert alone.bank("rgb").shape == (10, 4)
    both = MemoryBank(("rgb", "depth"), 4)
    both.fit({m: torch.randn(2, 4, 8, 8, generator=gen) for m in ("rgb", "depth")},
             torch.ones(2, 8, 8, dtype=torch.bool), cfg, torch.Generator().manual_seed(0))
    assert both.bank("rgb").shape == (5, 4) and both.bank("depth").shape == (5, 4)
    assert MemoryConfig(max_entries=4096).bank_cap(2) == 2048 and MemoryConfig(max_entries=3).bank_cap(4) == 1


def test_memory_scorer_without_a_bank_is_refused():
    from bridgenet.model.network import BridgeNet

    net = BridgeNet(ModelConfig(scorer="memory", weights="none", embed_dim=16), announce_random=False).eval()
    with pytest.raises(RuntimeError, match="memory bank"):
        net(torch.rand(1, 3, 64, 64), torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="model.scorer"):
        net.scorer = "nearest"


def _bank_with(rows: torch.Tensor, cfg: MemoryConfig) -> MemoryBank:
    bank = MemoryBank(("rgb",), rows.shape[1])
    grid = rows.T.reshape(1, rows.shape[1], 1, len(rows))  # (1, D, 1, N): one "image" of N patches
    bank.fit({"rgb": grid}, torch.ones(1, 1, len(rows), dtype=torch.bool), cfg, torch.Generator().manual_seed(0))
    return bank


@pytest.mark.parametrize("projection_dim", [0, 8])
def test_extending_keeps_the_bank_and_covers_every_new_patch(projection_dim):
    """A new cluster far from the bank gets entries; the old entries stay, in front; every new
    patch lies within the reported radius (exact space) of an entry; size: ratio x new ones."""
    cfg = MemoryConfig(coreset_ratio=0.1, max_entries=1000, projection_dim=projection_dim)
    old = clustered_rows(seed=0, n=600)
    bank = _bank_with(old, cfg)
    before = bank.bank("rgb").clone()
    gen = torch.Generator().manual_seed(5)
    new = torch.randn(300, old.shape[1], generator=gen) * 0.3 + 40.0  # a feature the bank lacks
    assert float(nearest_distance(new, before).min()) > 100
    info = bank.extend({"rgb": new.T.reshape(1, -1, 1, 300)}, torch.ones(1, 1, 300, dtype=torch.bool), cfg,
                       torch.Generator().manual_seed(0))
    after = bank.bank("rgb")
    assert torch.equal(after[:len(before)], before)
    assert info["rgb_added"] == 30 and len(after) == len(before) + 30 and info["rgb_reselected"] == 0
    nearest = torch.cdist(new, after).amin(1)
    assert float(nearest.max()) <= info["rgb_radius"] * (1 + 1e-4)
    assert float(nearest.max()) == pytest.approx(info["rgb_radius"], rel=1e-3)
    assert info["rgb_radius"] < 5  # the cluster's own spread, not its distance to the old bank


def test_new_patches_the_bank_covers_add_nothing_new_to_the_radius():
    """Patches like the training ones stay within about the bank's own radius."""
    cfg = MemoryConfig(coreset_ratio=0.1, max_entries=1000, projection_dim=0)
    bank = _bank_with(clustered_rows(seed=0, n=600), cfg)
    fit_radius = float(torch.cdist(clustered_rows(seed=0, n=600), bank.bank("rgb")).amin(1).max())
    similar = clustered_rows(seed=0, n=900)[600:]  # the same clusters, new draws
    info = bank.extend({"rgb": similar.T.reshape(1, -1, 1, 300)}, torch.ones(1, 1, 300, dtype=torch.bool), cfg,
                       torch.Generator().manual_seed(0))
    assert info["rgb_radius"] <= fit_radius * 1.01


def test_a_full_bank_is_selected_again_over_old_and_new_and_still_covers_the_new_patches():
    cfg = MemoryConfig(coreset_ratio=0.5, max_entries=60, projection_dim=0)
    bank = _bank_with(clustered_rows(seed=0, n=600), cfg)
    assert len(bank.bank("rgb")) == 60
    new = torch.randn(100, 32, generator=torch.Generator().manual_seed(1)) * 0.3 + 40.0
    info = bank.extend({"rgb": new.T.reshape(1, -1, 1, 100)}, torch.ones(1, 1, 100, dtype=torch.bool), cfg,
                       torch.Generator().manual_seed(0))
    assert info["rgb_reselected"] == 1 and len(bank.bank("rgb")) == 60
    assert float(torch.cdist(new, bank.bank("rgb")).amin(1).max()) <= info["rgb_radius"] * (1 + 1e-4)
    assert info["rgb_radius"] < 5


def test_extending_with_no_patch_is_refused():
    cfg = MemoryConfig(projection_dim=0)
    bank = _bank_with(clustered_rows(n=100), cfg)
    with pytest.raises(ValueError, match="no patch to add"):
        bank.extend({"rgb": torch.zeros(1, 32, 1, 4)}, torch.zeros(1, 1, 4, dtype=torch.bool), cfg,
                    torch.Generator().manual_seed(0))
