"""The PatchCore peer: offline weights in anomalib's backbone, output structure, a planted defect."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("anomalib")

from bench.peers import (
    FAMILIES,
    FUSED,
    METRICS,
    MODALITIES,
    PeerSettings,
    build_patchcore,
    run_peer,
)
from bridgenet.model.backbone import Backbone
from tests.conftest import tiny_params


def test_the_peer_backbone_holds_our_offline_weights():
    params = tiny_params(Path("/nonexistent"))
    peer = build_patchcore(params.model, PeerSettings())
    ours = Backbone(params.model.backbone, params.model.weights, params.model.layers)
    images = torch.rand(1, 3, 64, 64)
    theirs = peer.feature_extractor(images)
    for layer, expected in zip(params.model.layers, ours(images)):
        torch.testing.assert_close(theirs[layer], expected, rtol=1e-4, atol=1e-4)


def _plant_defect(cache: Path, category: str) -> tuple[str, str]:
    """Paint one anomalous test sample's defect region magenta and raise it; returns (stem, defect)."""
    with (cache / category / "index.csv").open(newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["split"] == "test" and r["label"] == "1")
    entry = cache / row["cache_path"]
    with np.load(entry) as data:
        arrays = {k: data[k].copy() for k in data.files}
    size = arrays["rgb"].shape[0]
    region = np.zeros((size, size), dtype=bool)
    region[size // 3: 2 * size // 3, size // 3: 2 * size // 3] = True
    arrays["rgb"][region] = (255, 0, 255)
    arrays["depth"][region] = np.clip(arrays["depth"][region] + 0.4, 0, 1)
    np.savez_compressed(entry, **arrays)
    return row["stem"], row["defect"]


def test_run_peer_reports_every_modality_and_a_planted_defect_outscores_the_goods(tiny_root, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_root / "cache", cache)
    stem, defect = _plant_defect(cache, "bagel")
    params = tiny_params(tiny_root)

    result = run_peer(tiny_root / "synth", cache, "bagel", params, PeerSettings(coreset_ratio=0.2))

    assert result["category"] == "bagel" and result["n_train"] == 12 and result["n_validation"] == 4
    for modality in (*MODALITIES, FUSED):
        assert set(result[modality]["metrics"]) == set(METRICS)
        assert set(result[modality]["families"]) <= set(FAMILIES)
        assert all(0.0 <= v <= 1.0 for v in result[modality]["metrics"].values())
    for modality in MODALITIES:
        assert result[modality]["fit_seconds"] > 0 and result[modality]["infer_seconds_per_sample"] > 0
        assert result[modality]["embedding_dim"] == 40 + 112  # Lite0's stride-8 and stride-16 stages
    test = result["test"]
    assert len(test["stems"]) == len(test["labels"]) == result["n_test"]
    planted = next(i for i, (s, d) in enumerate(zip(test["stems"], test["defects"])) if (s, d) == (stem, defect))
    goods = [i for i, label in enumerate(test["labels"]) if label == 0]
    for modality in (*MODALITIES, FUSED):
        scores = np.asarray(test["scores"][modality])
        assert scores[planted] > scores[goods].max(), modality


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="coreset_ratio"):
        PeerSettings(coreset_ratio=0.0)
    with pytest.raises(ValueError, match="input_stats"):
        PeerSettings(input_stats="mvtec")
