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
