"""The command line on trained model files: an override evaluate cannot apply is refused naming the
key, and a training checkpoint given where a model is expected is named with what to pass instead."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from bridgenet.cli import main
from bridgenet.evaluate import overrides_not_applied


def params_file(tiny, tmp_path, *overrides: str):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(tiny.params(f"eval.reports_dir={tmp_path / 'reports'}", *overrides).to_dict()))
    return path


def test_evaluate_refuses_a_scorer_override_the_model_file_cannot_apply(tiny, good_models, tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "-c", "bagel", "--params", str(params_file(tiny, tmp_path)),
                                       "--set", "model.scorer=memory"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "--set model.scorer: memory cannot apply" in message
    assert f"{good_models / 'bagel' / 'model.pt'} was trained with model.scorer=fused" in message
    assert "bridgenet train -c bagel" in message
    assert not (tmp_path / "reports").exists()  # nothing was scored


def test_only_overrides_that_change_the_trained_model_are_refused(tiny, good_models):
    params = tiny.params("model.scorer=fused", "train.device=cpu", "eval.batch_size=4", "train.epochs=5")
    given = ["model.scorer=fused", "train.device=cpu", "eval.batch_size=4", "train.epochs=5"]
    assert overrides_not_applied(params, "bagel", given) == {"train.epochs": (5, 2)}  # the model's own: 2
    assert overrides_not_applied(params, "nosuch", given) == {}  # no model file: evaluate names it itself


def test_predict_names_a_training_checkpoint_and_what_to_pass_instead(tiny, good_models):
    checkpoint = good_models / "bagel" / "checkpoint.pt"
    assert checkpoint.is_file()
    sample = tiny.root / "data" / "bagel" / "test" / "good"
    result = CliRunner().invoke(main, ["predict", "--model", str(checkpoint), "--rgb", str(sample / "rgb" / "000.png"),
                                       "--xyz", str(sample / "xyz" / "000.tiff")])
    assert result.exit_code == 1 and "Traceback" not in result.output and "KeyError" not in result.output
    message = " ".join(result.output.split())
    assert f"{checkpoint} is a training checkpoint" in message
    assert f"pass the model file beside it, {good_models / 'bagel' / 'model.pt'}" in message
    assert "models:/bridgenet-bagel@champion" in message
