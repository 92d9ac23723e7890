"""The scheduled retraining: `dvc repro` as a Prefect flow, with a timeout and a clear failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def _dvc_project(root: Path, command: str, timeout_minutes: float = 10) -> Path:
    """A git + DVC checkout with one stage running ``command`` and the project's params (with a timeout)."""
    root.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["schedule"]["timeout_minutes"] = timeout_minutes
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"work": {"cmd": command, "outs": ["out.txt"]}}}))
    dvc = str(Path(sys.executable).parent / "dvc")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    return root


def test_the_schedule_runs_dvc_repro_and_dvc_lock_records_what_it_made(tmp_path, prefect_api_url):
    from flows.scheduled import scheduled_retrain_flow

    root = _dvc_project(tmp_path / "ok", "echo made > out.txt")
    result = scheduled_retrain_flow(repo=str(root))
    assert result["stages_run"] == ["work"] and (root / "out.txt").read_text() == "made\n"
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["work"]["outs"][0]["path"] == "out.txt"
    assert scheduled_retrain_flow(repo=str(root))["stages_run"] == []  # nothing changed: nothing re-run


@pytest.mark.parametrize(("command", "minutes", "message"), [
    ("echo broken >&2; exit 3", 10, "dvc repro in .* failed"),
    ("sleep 30; echo late > out.txt", 0.05, "ran past schedule.timeout_minutes"),
])
def test_a_failing_or_hanging_repro_fails_the_flow_run_with_the_reason(tmp_path, prefect_api_url, command,
                                                                        minutes, message):
    from flows.scheduled import ReproFailed, scheduled_retrain_flow

    root = _dvc_project(tmp_path / "bad", command, minutes)
    state = scheduled_retrain_flow(repo=str(root), return_state=True)
    assert state.is_failed()
    with pytest.raises(ReproFailed, match=message):
        state.result()
    assert not (root / "dvc.lock").exists()  # nothing recorded for data that was not made


def test_the_schedule_command_refuses_overrides():
    from bridgenet.cli import main

    result = CliRunner().invoke(main, ["schedule", "--set", "train.epochs=1"])
    assert result.exit_code == 2 and "dvc repro reads the checkout's params.yaml" in result.output
