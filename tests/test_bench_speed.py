"""The speed benchmark's process isolation (answers come back, a dead child is an error) and its timed windows."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest
import torch

from bench.speed import in_child_process, inference_rate, inference_windows, published_command


class _CountingNetwork(torch.nn.Module):
    """Counts forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, rgb, depth, scorer=None):
        self.calls += 1
        return rgb.sum()


def _answer(x: int, out) -> None:
    out.put({"x": x, "pid": os.getpid()})


def _die(x: int, out) -> None:
    os._exit(3)


def test_the_child_answers_from_its_own_process():
    result = in_child_process(mp.get_context("spawn"), _answer, 7)
    assert result["x"] == 7 and result["pid"] != os.getpid()


def test_a_child_that_dies_without_answering_raises_with_its_exit_code():
    with pytest.raises(RuntimeError, match="exit code 3"):
        in_child_process(mp.get_context("spawn"), _die, 7)


def test_the_published_command_names_no_output_folder():
    assert published_command(["--configs", "default", "--out", "/srv/x", "--no-peer"]) == (
        "python -m bench.speed --configs default --no-peer")
    assert published_command(["--out=/srv/x", "--bank-samples", "40"]) == "python -m bench.speed --bank-samples 40"


def test_inference_windows_warm_up_then_time_each_window_over_at_least_48_samples():
    network = _CountingNetwork()
    rgb, depth = torch.zeros(8, 3, 4, 4), torch.zeros(8, 1, 4, 4)
    rates = inference_windows(network, rgb, depth, torch.device("cpu"), windows=5)
    assert len(rates) == 5 and all(r > 0 for r in rates)
    assert network.calls == 3 + 5 * 6  # 3 warm-up calls, then 6 batches of 8 per window


def test_inference_rate_is_the_median_window(monkeypatch):
    monkeypatch.setattr("bench.speed.inference_windows", lambda *a, **k: [10.0, 30.0, 20.0, 50.0, 25.0])
    assert inference_rate(None, None, None, torch.device("cpu")) == 25.0


def test_fake_parts_cover_what_real_parts_cover_under_each_crop():
    """Scoring and search cost grow with the scored patches: the timed inputs must be as full as real crops."""
    from bench.speed import CROP_COVERAGE, disc_mask, fake_inputs
    from bridgenet.data.crop import CROPS

    assert set(CROP_COVERAGE) == set(CROPS)
    for coverage in CROP_COVERAGE.values():
        assert abs(disc_mask(2, 256, coverage).mean() - coverage) < 0.01
        _, depth = fake_inputs(2, 256, torch.device("cpu"), coverage)
        assert abs(float((depth > 0).float().mean()) - coverage) < 0.01
    from bridgenet.model.network import foreground_patches

    _, depth = fake_inputs(1, 256, torch.device("cpu"), CROP_COVERAGE["object"])
    scored = int(foreground_patches(depth, (32, 32)).sum())
    assert abs(scored - 636) < 0.05 * 636  # real cable_gland in its crop: 636 of 1024 patches scored
