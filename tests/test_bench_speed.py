"""The speed benchmark's process isolation: answers come back, a dead child is an error."""

from __future__ import annotations

import multiprocessing as mp
import os

import pytest

from bench.speed import in_child_process, published_command


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
