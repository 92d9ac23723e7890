"""bench.bank_size: a bank rebuilt on a saved model is the bank training would have built."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from bench.bank_size import bank_trainer, cut_banks, rebuilt_banks


def test_a_rebuilt_bank_is_the_trained_one_and_its_first_picks_are_the_cut(trained_bagel):
    from bridgenet.data.cache import load_cached_split

    params, _, model = trained_bagel
    train = load_cached_split(Path(params.data.cache_dir), "bagel", "train", params.data)
    trained = {m: model.network.memory.bank(m) for m in model.network.modalities}
    size = int(trained["rgb"].shape[0])
    assert size < params.model.memory.bank_cap(len(model.network.modalities))  # the cap did not bind

    trainer = bank_trainer(model.network, params, train)  # embeds the training split once for every size
    same = copy.deepcopy(model.network)
    rebuilt_banks(same, trainer, size)  # at the trained size: entry for entry what training kept
    assert all(torch.equal(same.memory.bank(m), trained[m]) for m in trained)

    small, cut = copy.deepcopy(model.network), copy.deepcopy(model.network)
    rebuilt_banks(small, trainer, size // 2)
    cut_banks(cut, size // 2)
    for m in trained:
        assert small.memory.bank(m).shape[0] == size // 2
        assert torch.equal(small.memory.bank(m), cut.memory.bank(m))  # a greedy selection's prefix

    again = copy.deepcopy(model.network)  # each size's selection starts afresh on the same embeddings
    rebuilt_banks(again, trainer, size)
    assert all(torch.equal(again.memory.bank(m), trained[m]) for m in trained)


def test_a_bank_is_not_rebuilt_for_another_embedding_space(trained_bagel):
    from bridgenet.data.cache import load_cached_split

    params, _, model = trained_bagel
    train = load_cached_split(Path(params.data.cache_dir), "bagel", "train", params.data)
    other = copy.deepcopy(model.network)
    other.rgb_mean += 0.01  # another cache or embedding setting: statistics the training split does not give
    with pytest.raises(RuntimeError, match="rgb embedding differs"):
        bank_trainer(other, params, train)


def test_a_trainer_built_at_the_first_size_selects_no_bank_for_nothing(trained_bagel, monkeypatch):
    from bridgenet.data.cache import load_cached_split

    params, _, model = trained_bagel
    train = load_cached_split(Path(params.data.cache_dir), "bagel", "train", params.data)
    trained = {m: model.network.memory.bank(m) for m in model.network.modalities}
    size = int(trained["rgb"].shape[0])
    trainer = bank_trainer(model.network, params, train, size // 2)  # its constructor's bank: the first size
    selections = []
    fit = trainer.fit_memory
    monkeypatch.setattr(trainer, "fit_memory", lambda memory=None: selections.append(memory) or fit(memory))
    small = copy.deepcopy(model.network)
    info = rebuilt_banks(small, trainer, size // 2)
    assert selections == [] and info["rgb_bank"] == size // 2  # no second selection at the same settings
    assert all(small.memory.bank(m).shape[0] == size // 2 for m in trained)
    same = copy.deepcopy(model.network)
    rebuilt_banks(same, trainer, size)  # another size: selected again, entry for entry the trained bank
    assert len(selections) == 1 and all(torch.equal(same.memory.bank(m), trained[m]) for m in trained)
