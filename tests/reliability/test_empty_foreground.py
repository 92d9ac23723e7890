"""No object, no alarm: a flat point cloud (part missing) and a tiny image at inference.

The flat scene goes through ``predict_arrays``, ``bridgenet predict`` and the
pyfunc model (whose ``INVALID_PARAMETER_VALUE`` is the REST server's HTTP
400); preprocessing of such samples is in ``test_cache.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from mlflow.exceptions import MlflowException
from PIL import Image

from bridgenet.cli import main
from bridgenet.config import PredictConfig
from bridgenet.model.io import load_model, read_checkpoint
from bridgenet.predict import NoObjectError, predict_arrays
from tests.reliability.conftest import rgb_image, scene, write_params_file


@pytest.fixture(scope="module")
def model(small):
    return load_model(small.root / "models" / "bagel" / "model.pt")


def with_policy(model, policy: str):
    params = model.params.model_copy(update={"predict": PredictConfig(on_empty_foreground=policy)})
    return model.with_meta(params=params)


def test_train_stores_that_the_model_was_trained_with_objects(small, model):
    assert read_checkpoint(small.root / "models" / "bagel" / "model.pt")["foreground_fraction"] == 1.0
    assert model.foreground_fraction == 1.0


def test_model_saved_before_the_key_existed_counts_as_trained_with_objects(small, tmp_path):
    payload = read_checkpoint(small.root / "models" / "bagel" / "model.pt")
    del payload["foreground_fraction"]
    torch.save(payload, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").foreground_fraction == 1.0


def test_flat_point_cloud_is_flagged_never_good(model):
    prediction = predict_arrays(model, rgb_image(1), scene(1, flat=True))
    top = model.display_range()[1]  # 1 for the discriminator; twice the threshold for fused scores
    assert top > model.threshold
    assert prediction.status == "no_object" and prediction.anomalous and prediction.score == top
    assert prediction.anomaly_map.shape == (64, 64) and (prediction.anomaly_map == top).all()
    normal = predict_arrays(model, rgb_image(1), scene(1))
    assert normal.status == "ok" and normal.score != top  # really scored


def test_flat_point_cloud_is_refused_with_the_error_policy(model):
    with pytest.raises(NoObjectError, match="no object found above the support plane.*=error"):
        predict_arrays(with_policy(model, "error"), rgb_image(1), scene(1, flat=True))
    with pytest.raises(NoObjectError):  # the caller's policy wins over the model's
        predict_arrays(model, rgb_image(1), scene(1, flat=True), on_empty_foreground="error")


def test_category_trained_without_any_object_keeps_whole_image_scoring(model):
    whole_image = model.with_meta(foreground_fraction=0.0)
    prediction = predict_arrays(whole_image, rgb_image(1), scene(1, flat=True))
    assert prediction.status == "ok" and np.isfinite(prediction.score)
    assert prediction.score != model.display_range()[1]  # scored, not the no-object marker


def test_input_smaller_than_the_backbone_stride_is_refused(model):
    rgb, xyz = rgb_image(1)[:4, :4], scene(1)[:4, :4]
    with pytest.raises(ValueError, match=r"input is 4x4 pixels; the model needs at least 16x16"):
        predict_arrays(model, rgb, xyz)


def write_pair(folder: Path, flat: bool) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rgb, xyz = folder / "rgb.png", folder / "xyz.tiff"
    Image.fromarray(rgb_image(2)).save(rgb)
    tifffile.imwrite(xyz, scene(2, flat=flat))
    return rgb, xyz


def test_cli_predict_reports_status_or_exits_non_zero(small, tmp_path):
    params_file = write_params_file(small.params(), tmp_path / "params.yaml")
    model_file = small.root / "models" / "bagel" / "model.pt"

    def predict(folder: Path, *extra: str):
        rgb, xyz = write_pair(tmp_path / folder.name, flat=folder.name == "flat")
        return CliRunner().invoke(main, ["predict", "--model", str(model_file), "--rgb", str(rgb),
                                         "--xyz", str(xyz), "--params", str(params_file), *extra])

    good = predict(Path("good"))
    assert good.exit_code == 0 and json.loads(good.stdout)["status"] == "ok", good.output
    flagged = predict(Path("flat"))
    assert flagged.exit_code == 0, flagged.output
    answer = json.loads(flagged.stdout)
    assert answer["status"] == "no_object" and answer["anomalous"] is True
    assert answer["score"] == pytest.approx(load_model(model_file).display_range()[1])
    assert answer["score"] > answer["threshold"]
    refused = predict(Path("flat"), "--set", "predict.on_empty_foreground=error")
    assert refused.exit_code == 1 and "NoObjectError: no object found" in refused.output


def pyfunc(model):
    from bridgenet.serving.pyfunc_model import BridgeNetPyfunc

    wrapper = BridgeNetPyfunc()
    wrapper.model = model
    return wrapper


def test_pyfunc_marks_a_flat_sample_in_a_batch(model):
    batch = {"rgb": np.stack([rgb_image(3), rgb_image(4)]),
             "xyz": np.stack([scene(3), scene(4, flat=True)])}
    out = pyfunc(model).predict(None, batch)
    assert out["status"].tolist() == ["ok", "no_object"]
    top = model.display_range()[1]
    assert out["anomalous"][1] and out["score"][1] == pytest.approx(top) and out["score"][0] != pytest.approx(top)


@pytest.mark.parametrize("rgb, xyz, message", [
    (rgb_image(3), scene(3, flat=True), "sample 0: no object found"),
    (rgb_image(3)[:4, :4], scene(3)[:4, :4], "sample 0: input is 4x4 pixels"),
])
def test_pyfunc_refusals_are_invalid_parameter_values(model, rgb, xyz, message):
    with pytest.raises(MlflowException, match=message) as err:
        pyfunc(with_policy(model, "error")).predict(None, {"rgb": rgb[None], "xyz": xyz[None]})
    assert err.value.error_code == "INVALID_PARAMETER_VALUE"  # HTTP 400 from the scoring server
