"""What the bench scripts share: published commands and paths name no folder of this machine."""

from __future__ import annotations

from pathlib import Path

from bench.common import bench_command, fmt, machine_info, portable_command, portable_path


def test_a_published_command_replaces_folders_by_placeholders_and_leaves_out_what_it_is_told():
    argv = ["--work", "/srv/w", "--out=/srv/o", "--seeds", "0", "1", "--summary-only", "--model", "/m.pt"]
    flags = {"--work": "WORK", "--out": "OUT", "--model": None}
    assert portable_command("real", argv, flags, dropped=("--summary-only",)) == (
        "python -m bench.real --work WORK --out=OUT --seeds 0 1")
    assert portable_command("speed", ["--out=/x", "--configs", "a b"], {"--out": None}) == (
        "python -m bench.speed --configs 'a b'")  # quoted for a shell
    assert bench_command("accuracy", "--seeds", "0") == "python -m bench.accuracy --seeds 0"


def test_a_published_path_is_relative_to_the_folder_that_holds_it_else_its_last_parts():
    roots = {"MODELS0": Path("/srv/a"), "": Path("/srv/b")}
    assert portable_path(Path("/srv/a/x/model.pt"), roots) == "MODELS0/x/model.pt"
    assert portable_path(Path("/srv/b/x/model.pt"), roots) == "x/model.pt"
    assert portable_path(Path("/elsewhere/s/x/model.pt"), roots, keep=2) == "x/model.pt"


def test_cells_and_the_machine_block():
    assert fmt(None) == "–" and fmt({"mean": 0.5, "std": 0.1, "n": 1}) == "0.500"
    assert fmt({"mean": 0.5, "std": 0.1, "n": 2}, digits=1) == "0.5 ± 0.1"
    machine = machine_info("python -m bench.x", threads=1, torch="2")
    assert list(machine) == ["cpu", "cores", "threads", "torch", "date", "command"]
