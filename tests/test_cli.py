"""The command line: --help, --version, --params and --set on every verb."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from click.testing import CliRunner

from bridgenet import __version__
from bridgenet.cli import main


def test_version_and_help():
    runner = CliRunner()
    assert __version__ in runner.invoke(main, ["--version"]).output
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0 and "preprocess" in result.output


def test_every_verb_takes_params_and_set():
    runner = CliRunner()
    for name, command in main.commands.items():
        options = {opt for param in command.params for opt in getattr(param, "opts", [])}
        assert {"--params", "--set"} <= options, name
        assert runner.invoke(main, [name, "--help"]).exit_code == 0


def test_set_overrides_reach_the_resolved_params(tmp_path):
    params_file = tmp_path / "p.yaml"
    params_file.write_text("train:\n  epochs: 7\n")
    result = CliRunner().invoke(main, ["params", "--params", str(params_file),
                                       "--set", "data.categories=[a,b]", "--set", "train.seed=5"])
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.output)
    assert resolved["train"]["epochs"] == 7
    assert resolved["train"]["seed"] == 5
    assert resolved["data"]["categories"] == ["a", "b"]


def test_bad_override_exits_with_a_message_naming_the_key():
    result = CliRunner().invoke(main, ["params", "--set", "model.embed_dim=-4"])
    assert result.exit_code == 2
    assert "model.embed_dim" in result.output


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "bridgenet"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True)
    assert __version__ in out.stdout


def test_pipeline_runs_on_the_task_runner_the_params_ask_for(monkeypatch):
    import flows.retrain

    seen = {}

    def fake_flow(**kwargs):
        seen["runner"] = fake_flow.runner
        return {"categories": kwargs["categories"]}

    def with_options(task_runner):
        fake_flow.runner = task_runner
        return fake_flow

    monkeypatch.setattr(flows.retrain.retrain_flow, "with_options", with_options)
    result = CliRunner().invoke(main, ["pipeline", "--set", "dask.n_workers=1", "-c", "bagel"])
    assert result.exit_code == 0, result.output
    assert type(seen["runner"]).__name__ == "ThreadPoolTaskRunner" and seen["runner"]._max_workers == 1
    result = CliRunner().invoke(main, ["pipeline", "--set", "dask.n_workers=2", "-c", "bagel"])
    assert result.exit_code == 0, result.output
    assert type(seen["runner"]).__name__ == "DaskTaskRunner"
    # Called directly (a deployment without options), categories run one at a time.
    assert flows.retrain.retrain_flow.task_runner._max_workers == 1


def test_an_unknown_category_lists_the_known_ones(tmp_path):
    data = tmp_path / "data"
    for name in ("bagel", "cookie"):
        (data / name / "train" / "good" / "rgb").mkdir(parents=True)
        (data / name / "train" / "good" / "xyz").mkdir(parents=True)
    args = ["--set", f"data.root={data}", "--set", "data.categories=[]", "--set", f"data.cache_dir={tmp_path / 'c'}"]
    result = CliRunner().invoke(main, ["train", "-c", "nosuch", *args])
    assert result.exit_code == 2
    assert "unknown category nosuch; known: bagel, cookie" in result.output


def test_a_bad_set_value_is_blamed_on_the_override_not_the_file():
    result = CliRunner().invoke(main, ["params", "--set", "train.epochs=-1"])
    assert result.exit_code == 2
    assert "from the override --set train.epochs=-1" in result.output and "invalid override" in result.output
