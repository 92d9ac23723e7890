"""bench.memory_probe: the memory head of an untrained network, judged without training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.memory_probe import PROBE_SETS, main, means, probe_category, probe_model
from tests.conftest import tiny_params


def test_the_probe_builds_the_memory_head_training_builds(tiny_root, trained_bagel):
    _, _, trained = trained_bagel
    probed = probe_model(tiny_params(tiny_root, "train.epochs=8", *PROBE_SETS), "bagel")
    for modality in trained.network.modalities:
        assert torch.equal(probed.network.memory.bank(modality), trained.network.memory.bank(modality))
    memory = [i for i, name in enumerate(trained.network.components) if name.startswith("memory")]
    assert torch.allclose(probed.network.score_loc[memory], trained.network.score_loc[memory])
    assert torch.allclose(probed.network.score_scale[memory], trained.network.score_scale[memory])


def test_the_probe_scores_each_test_split_and_follows_the_settings(tiny_root):
    params = tiny_params(tiny_root, *PROBE_SETS)
    cache = Path(params.data.cache_dir)
    result = probe_category(params, "bagel", {"a": cache, "b": cache})
    first = result["tests"]["a"]
    assert result["tests"]["b"] == first  # the same split scored twice gives the same figures
    assert 0.0 <= first["image_auroc"] <= 1.0 and 0.0 <= first["aupro_30"] <= 1.0
    defects = {p.name for p in (Path(params.data.root) / "bagel" / "test").iterdir()} - {"good"}
    assert set(first["per_defect"]) == defects
    assert all(size > 0 for size in result["bank"].values())
    wider = probe_category(tiny_params(tiny_root, *PROBE_SETS, "model.patch_size=5"), "bagel",
                            {"a": cache, "b": cache})
    assert wider["tests"]["a"] != first
    mean = means([result, wider])["a"]["image_auroc"]
    assert np.isclose(mean, (first["image_auroc"] + wider["tests"]["a"]["image_auroc"]) / 2)
    with pytest.raises(ValueError, match=r"model\.scorer=memory"):  # fused figures never pass as the memory's
        probe_category(tiny_params(tiny_root), "bagel", {"a": cache})


def test_the_command_line_writes_the_settings_and_means_without_local_paths(tiny_root, tmp_path):
    root = Path(tiny_params(tiny_root).data.root)
    sets = [f"--set={o}" for o in ("model.embed_dim=64", "model.dsc_hidden=64",
                                                "data.image_size=96", "model.map_smoothing_sigma=2.0")]
    assert main(["--data-root", str(root), "--categories", "cookie", "--work", str(tmp_path / "w"),
                 "--out", str(tmp_path / "o"), "--name", "t", *sets]) == 0
    written = json.loads((tmp_path / "o" / "memory_probe_t.json").read_text())
    assert written["sets"] == [s.removeprefix("--set=") for s in sets]
    assert [r["category"] for r in written["categories"]] == ["cookie"]
    assert set(written["means"]) == {"test"}
    assert str(tmp_path) not in json.dumps(written["machine"])
