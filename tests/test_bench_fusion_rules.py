"""The fusion-rule benchmark's pieces: conditional and cross-modal distances, image reductions, rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.fusion_rules import (
    RULES,
    PatchSet,
    conditional_distance,
    image_peaks,
    image_top_mean,
    nearest_k,
    ridge_map,
    ridge_residual,
    rule_scores,
    standardise,
)
from bridgenet.model.memory import nearest_distance


def _rows(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_nearest_k_matches_a_full_sort():
    queries, bank = _rows(50, 6, 0), _rows(300, 6, 1)
    expected = torch.cdist(queries, bank).argsort(1)[:, :7]
    assert torch.equal(nearest_k(queries, bank, 7, chunk=16).sort(1).values, expected.sort(1).values)


def test_conditional_distance_judges_a_patch_among_look_alikes_of_its_other_modality():
    queries, context = _rows(40, 5, 2), _rows(40, 3, 3)
    bank, bank_context = _rows(200, 5, 4), _rows(200, 3, 5)
    index = torch.cdist(context, bank_context).argsort(1)[:, :10]
    brute = torch.stack([torch.cdist(queries[i:i + 1], bank[index[i]]).min() for i in range(40)])
    got = conditional_distance(queries, context, bank, bank_context, 10)
    assert torch.allclose(got, brute, atol=1e-5)
    # with every bank row a look-alike it is the plain nearest-neighbour distance, and never below it
    assert torch.allclose(conditional_distance(queries, context, bank, bank_context, 200),
                          nearest_distance(queries, bank), atol=1e-4)
    assert bool((got >= nearest_distance(queries, bank) - 1e-5).all())


def test_ridge_residual_is_small_where_one_modality_predicts_the_other_and_large_where_not():
    source = _rows(2000, 8, 6)
    target = source @ _rows(8, 4, 7) + 0.5
    weights = ridge_map(source, target, penalty=1e-3)
    assert float(ridge_residual(source, target, weights).max()) < 1e-2
    stained = target.clone()
    stained[:10] += 3.0  # the target changed where the source did not: a stain on an ordinary shape
    residual = ridge_residual(source, stained, weights)
    assert float(residual[:10].min()) > 10 * float(residual[10:].max())


def test_image_reductions_and_standardisation_on_a_hand_worked_case():
    values = torch.tensor([1.0, 5.0, 3.0, 2.0, 2.0, 8.0])
    sample = torch.tensor([0, 0, 0, 1, 1, 1])
    assert image_peaks(values, sample, 2).tolist() == [5.0, 8.0]
    assert image_top_mean(values, sample, 2, 2).tolist() == [4.0, 5.0]
    loc, scale = standardise(values, sample, 2)
    assert loc == pytest.approx(3.5) and scale == pytest.approx(3.0)  # peaks 5 and 8: mean 6.5, 3 above


def _patches(families: list[str]) -> PatchSet:
    sample = torch.arange(len(families)).repeat_interleave(2)
    return PatchSet({}, sample, len(families), families)


def test_rules_score_what_they_say():
    patches = _patches(["good", "appearance"])
    z = {"discriminator": torch.tensor([0.0, 1.0, 0.0, 0.2]), "memory_rgb": torch.tensor([0.0, 0.0, 4.0, 0.0]),
         "memory_depth": torch.tensor([2.0, 0.0, 0.0, 0.0])}
    stats = {c: (0.0, 1.0) for c in z}
    # ours: 0.5 disc + 0.5 max(memory) per patch, then the highest patch
    assert rule_scores("ours", z, patches, stats).tolist() == pytest.approx([1.0, 2.0])
    assert rule_scores("rgb memory only", z, patches, stats).tolist() == pytest.approx([0.5, 2.0])
    assert rule_scores("largest component", z, patches, stats).tolist() == pytest.approx([2.0, 4.0])
    # peak rules: each component's image peak z-scored with the validation goods' peak statistics
    stats = {"discriminator": (1.0, 1.0), "memory_rgb": (0.0, 2.0), "memory_depth": (0.0, 1.0)}
    assert rule_scores("peak z, max", z, patches, stats).tolist() == pytest.approx([2.0, 2.0])
    assert rule_scores("peak z, sum", z, patches, stats).tolist() == pytest.approx([2.0, 1.2])
    assert all(isinstance(text, str) and text for text, _ in RULES.values())
    assert np.isfinite(rule_scores("top-3 mean", z, patches, stats)).all()


def test_published_references_pick_the_seed_and_category_and_the_peer(tmp_path):
    import json

    from bench.fusion_rules import published_references

    def cell(v: float) -> dict:
        return {"fused": {"metrics": {"image_auroc": v}, "families": {"appearance": v - 0.1}}}

    runs = [{"config": c, "seed": s, "category": k, "scores": {"default": cell(v), "hard": cell(v / 2)}}
            for c, s, k, v in [("rgb", 0, "bagel", 0.9), ("rgb", 1, "bagel", 0.8), ("depth", 0, "cable", 0.7)]]
    runs += [{"preset": p, "category": "bagel",
              "modalities": {"fused": {"metrics": {"image_auroc": 0.6}, "families": {"appearance": 0.5}}}}
             for p in ("default", "hard")]
    (tmp_path / "accuracy.json").write_text(json.dumps({"runs": runs}))
    found = published_references(tmp_path, 0, "bagel")
    assert set(found) == {"rgb model (published)", "PatchCore rgb+depth (published)"}
    assert found["rgb model (published)"]["hard"] == {"all": 0.45, "appearance": pytest.approx(0.35)}
    assert found["PatchCore rgb+depth (published)"]["default"]["all"] == 0.6
    assert published_references(tmp_path / "missing", 0, "bagel") == {}
