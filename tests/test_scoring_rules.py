"""The scoring-rules bench: its table and the paths it publishes."""

from __future__ import annotations

from pathlib import Path

import torch

from bench.scoring_rules import _memory, markdown, published_model


def test_memory_components_sum_or_take_the_larger():
    z = {"discriminator": torch.tensor([9.0]), "memory_rgb": torch.tensor([1.0, 4.0]),
         "memory_depth": torch.tensor([3.0, 2.0])}
    assert _memory(z, "sum").tolist() == [4.0, 6.0]
    assert _memory(z, "max").tolist() == [3.0, 4.0]


def test_published_model_paths_are_relative_to_their_models_folder(tmp_path):
    roots = [tmp_path / "synthetic", tmp_path / "real"]
    model = roots[1] / "abc" / "rgb" / "seed0" / "cable_gland" / "model.pt"
    assert published_model(model, roots) == "MODELS1/abc/rgb/seed0/cable_gland/model.pt"
    assert published_model(Path("/x/y/a/b/c/model.pt"), roots) == "a/b/c/model.pt"


def test_the_table_has_a_row_per_rule_and_a_column_per_split():
    table = {"validation": {"memory sum | patch max": {"mean": 0.9, "std": 0.01}},
             "test": {"memory sum | patch max": {"mean": 0.95, "std": 0.02}}}
    text = markdown(table)
    assert "| combination | image score | validation | test |" in text
    assert "| memory sum | patch max | 0.900 ± 0.010 | 0.950 ± 0.020 |" in text


def test_the_aupro_table_lists_only_the_map_rules_scored_against_masks():
    table = {"validation": {"memory sum | patch max": {"mean": 0.9, "std": 0.01},
                            "memory sum | map max s4": {"mean": 0.91, "std": 0.01}},
             "test": {"memory sum | patch max": {"mean": 0.95, "std": 0.02},
                      "memory sum | map max s4": {"mean": 0.96, "std": 0.02, "aupro_mean": 0.93, "aupro_std": 0.005}}}
    text = markdown(table)
    assert "| combination | map | test |" in text
    assert "| memory sum | sigma 4 | 0.930 ± 0.005 |" in text
    assert "| memory sum | patch max | 0.900 ± 0.010 | 0.950 ± 0.020 |" in text
    assert text.count("| memory sum |") == 3  # two image-score rows, one map row


def test_map_aupros_score_each_combination_against_the_masks_in_the_frame():
    """A map that fires exactly on the defect beats one that fires beside it, at every sigma."""
    from types import SimpleNamespace

    import numpy as np

    from bench.scoring_rules import AUPRO_SIGMAS, map_aupros

    n, size, grid = 4, 64, 8  # 2 goods, 2 defects; 8 x 8 patches of 8 px; crop = whole frame
    gt = [np.zeros((size, size), bool) for _ in range(n)]
    for mask in gt[2:]:
        mask[8:16, 8:16] = True  # patch (1, 1)
    split = SimpleNamespace(gt=gt, defects=["good", "good", "dent", "dent"], rgb=np.zeros((n, size, size, 3)),
                            crop_boxes=np.array([[0, 0, size, size]] * n), original_sizes=np.array([[size, size]] * n),
                            known_masks=lambda: np.ones(n, bool))
    on, beside = torch.zeros(n, grid, grid), torch.zeros(n, grid, grid)
    on[2:, 1, 1] = 5.0
    beside[2:, 2, 3] = 5.0
    z = {"discriminator": beside, "memory_rgb": on, "memory_depth": torch.zeros(n, grid, grid)}
    cells = map_aupros(z, split, {"discriminator": 1 / 3, "memory_rgb": 1 / 3, "memory_depth": 1 / 3})
    for sigma in AUPRO_SIGMAS:
        right, wrong = cells[f"memory rgb alone | map max s{sigma:g}"], cells[f"discriminator | map max s{sigma:g}"]
        assert right["aupro_30"] > 0.9 and wrong["aupro_30"] < right["aupro_30"] - 0.3
    assert set(cells["memory rgb alone | map max s4"]["per_defect_aupro"]) == {"dent"}
    assert "per_defect_aupro" not in cells["memory rgb alone | map max s2"]
