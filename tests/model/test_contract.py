"""The model contract: ModelMeta round trip and versions, file kinds, scorers, the scoring-network protocol."""

from __future__ import annotations

import warnings

import pytest
import torch

from bridgenet.config import ModelConfig, Params
from bridgenet.model.contract import (
    CHECKPOINT_FORMAT,
    META_VERSION,
    MODEL_FORMAT,
    ModelMeta,
    ScoringNetwork,
)
from bridgenet.model.io import atomic_save, load_model, read_checkpoint, save_checkpoint
from bridgenet.model.scorers import DISCRIMINATOR, FUSED, MEMORY, scorer_named


def meta() -> ModelMeta:
    return ModelMeta(category="bagel", params=Params(), threshold=0.75, pixel_threshold=0.5,
                     foreground_fraction=0.9, epoch=3, metrics={"val_score": 0.8})


def test_meta_round_trips_and_reads_files_older_than_its_version():
    record = meta().to_dict()
    assert record["meta_version"] == META_VERSION
    assert ModelMeta.from_dict(record, "x") == meta()
    old = {k: v for k, v in record.items() if k not in ("meta_version", "pixel_threshold", "foreground_fraction")}
    read = ModelMeta.from_dict(old, "old.pt")
    assert (read.pixel_threshold, read.foreground_fraction, read.threshold) == (None, 1.0, 0.75)


@pytest.mark.parametrize(("modalities", "entries"), [(["rgb", "depth"], 4096), (["rgb"], 2048)])
def test_a_model_stored_with_a_cap_per_modality_keeps_its_banks(modalities, entries):
    """Until 2026-12-05 the bank cap (``max_bank``) was per modality; a model stored then reads
    with the cap over all its modalities that gives each bank the same size, so growing it
    (``bridgenet bank add``) stops where it stopped before."""
    record = meta().to_dict()
    memory = dict(record["params"]["model"]["memory"])
    memory.pop("max_entries")
    record["params"]["model"] = {**record["params"]["model"], "modalities": modalities,
                                 "memory": {**memory, "max_bank": 2048}}
    read = ModelMeta.from_dict(record, "old.pt").params.model
    assert read.memory.max_entries == entries and read.memory.bank_cap(len(read.modalities)) == 2048


def test_meta_refuses_a_newer_version_and_names_a_missing_entry():
    with pytest.raises(ValueError, match=r"new\.pt: model metadata version 99 is newer"):
        ModelMeta.from_dict({**meta().to_dict(), "meta_version": 99}, "new.pt")
    with pytest.raises(ValueError, match=r"cut\.pt: not a complete BridgeNet model \(no 'threshold' entry\)"):
        ModelMeta.from_dict({k: v for k, v in meta().to_dict().items() if k != "threshold"}, "cut.pt")


def test_a_checkpoint_is_refused_where_a_model_is_expected(tmp_path):
    path = tmp_path / "bagel" / "checkpoint.pt"
    path.parent.mkdir()
    save_checkpoint({"category": "bagel", "epoch": 0, "trainer": {}, "history": []}, path)
    assert read_checkpoint(path, CHECKPOINT_FORMAT)["format"] == CHECKPOINT_FORMAT
    with pytest.raises(ValueError, match=r"checkpoint\.pt is a training checkpoint .* pass the model file beside it"):
        load_model(path)
    # written before checkpoints had their own tag: the model's tag and a trainer entry
    legacy = tmp_path / "legacy.pt"
    atomic_save({"format": MODEL_FORMAT, "category": "bagel", "trainer": {}}, legacy)
    assert read_checkpoint(legacy, CHECKPOINT_FORMAT)["trainer"] == {}
    with pytest.raises(ValueError, match="is a training checkpoint"):
        read_checkpoint(legacy)


def test_a_model_file_is_refused_where_a_checkpoint_is_expected(tmp_path):
    path = tmp_path / "model.pt"
    atomic_save({"format": MODEL_FORMAT, **meta().to_dict(), "state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"model\.pt is a model file, not a training checkpoint"):
        read_checkpoint(path, CHECKPOINT_FORMAT)


def test_scorers_are_chosen_by_name_once():
    assert scorer_named("fused") is FUSED and scorer_named(MEMORY) is MEMORY
    assert DISCRIMINATOR.components(("rgb", "depth")) == ("discriminator",)
    assert FUSED.components(("rgb", "depth")) == ("discriminator", "memory_rgb", "memory_depth")
    assert DISCRIMINATOR.probability and not FUSED.probability
    with pytest.raises(ValueError, match=r"model.scorer: unknown 'nearest'; allowed \('discriminator'"):
        scorer_named("nearest")


def test_the_network_and_the_scripted_graph_meet_the_scoring_protocol():
    from bridgenet.model.network import BridgeNet
    from bridgenet.model.scripted import ScriptedNetwork

    net = BridgeNet(ModelConfig(weights="none", embed_dim=16), announce_random=False).eval()
    assert isinstance(net, ScoringNetwork) and net.scorer is scorer_named(ModelConfig().scorer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        module = torch.jit.script(torch.nn.Identity())
    graph = ScriptedNetwork(module, "memory", ("rgb",), (8, 16))
    assert isinstance(graph, ScoringNetwork) and graph.scorer is MEMORY


def test_a_model_stored_before_the_guided_map_keeps_its_maps():
    record = meta().to_dict()
    record["params"]["model"] = {k: v for k, v in record["params"]["model"].items() if k != "map_guide_radius"}
    assert ModelMeta.from_dict(record, "old.pt").params.model.map_guide_radius == 0
    assert ModelMeta.from_dict(meta().to_dict(), "new.pt").params.model.map_guide_radius == \
        ModelConfig().map_guide_radius > 0
