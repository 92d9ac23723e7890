"""The pyfunc model (logged from code): input checks, loading from the registry, predict via MLflow URIs."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.exceptions import MlflowException

from bridgenet.data.samples import read_rgb, read_xyz
from bridgenet.serving.pyfunc_model import parse_inputs
from bridgenet.serving.spec import example_from_arrays, model_signature
from bridgenet.tracking.pyfunc import download_model_file

INVALID = "INVALID_PARAMETER_VALUE"


def sample(side: int = 16, batch: int | None = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    xyz = np.zeros((side, side, 3), np.float32)
    xyz[..., 2] = 0.5
    if batch is None:
        return {"rgb": rgb, "xyz": xyz}
    return {"rgb": np.repeat(rgb[None], batch, 0), "xyz": np.repeat(xyz[None], batch, 0)}


def real_sample(tiny, defect: str = "good") -> tuple[np.ndarray, np.ndarray]:
    folder = tiny.root / "data" / "bagel" / "test" / defect
    return read_rgb(folder / "rgb" / "000.png"), read_xyz(folder / "xyz" / "000.tiff")


# ------------------------------------------------------------ input checks
def test_parse_inputs_accepts_batches_and_a_single_sample():
    rgb, xyz = parse_inputs(sample(batch=3))
    assert rgb.shape == (3, 16, 16, 3) and xyz.dtype == np.float32
    rgb, xyz = parse_inputs(sample(batch=None))
    assert rgb.shape == (1, 16, 16, 3) and xyz.shape == (1, 16, 16, 3)


def _broken(**changes):
    data = sample(batch=2)
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def _encoded(data):
    import base64
    import io

    import tifffile
    from PIL import Image

    def png(a):
        buffer = io.BytesIO()
        Image.fromarray(a).save(buffer, format="PNG")
        return base64.b64encode(buffer.getvalue()).decode()

    def tiff(a):
        buffer = io.BytesIO()
        tifffile.imwrite(buffer, a)
        return base64.b64encode(buffer.getvalue()).decode()

    return {"rgb_png": np.array([png(a) for a in data["rgb"]]), "xyz_tiff": np.array([tiff(a) for a in data["xyz"]])}


@pytest.mark.parametrize(
    "model_input, message",
    [
        (_broken(xyz=None), r"expected either the tensors \['rgb', 'xyz'\] or the base64 files"),
        # a float image, say scaled to [0, 1], is refused before any cast
        (_broken(rgb=sample(batch=2)["rgb"].astype(np.float32) / 255), "rgb: expected uint8 values 0..255, got dtype float32"),
        (_broken(rgb=sample(batch=2)["rgb"].astype(np.int64) + 200), "rgb: expected uint8 values 0..255, got values from"),
        (_broken(xyz=sample(batch=2)["xyz"].astype(str)), "xyz: expected float32 coordinates"),
        (_broken(xyz=np.where(np.eye(16, dtype=bool)[None, ..., None], np.nan, sample(batch=2)["xyz"])),
         "xyz: holds NaN or Inf"),
        (_broken(xyz=sample(side=12, batch=2)["xyz"]), "must have the same"),
        (_broken(xyz=np.zeros((2, 16, 16, 3), np.float32)), r"empty point cloud .* \[0, 1\]"),
        (
            _broken(
                rgb=np.zeros((0, 16, 16, 3), np.uint8), xyz=np.zeros((0, 16, 16, 3), np.float32)
            ),
            "empty input",
        ),
        (pd.DataFrame({"rgb": [1]}), "expected named inputs"),
        ({"rgb_png": np.array(["not base64!"]), "xyz_tiff": np.array(["AAAA"])}, r"rgb_png\[0\]: not base64"),
        ({**_encoded(sample(batch=1)), "xyz_tiff": np.array(["AAAA"])}, r"xyz_tiff\[0\]: cannot be decoded"),
        ({**_encoded(sample(batch=1)), "rgb": sample(batch=1)["rgb"]}, "expected either"),
    ],
)
def test_malformed_input_is_an_invalid_parameter(model_input, message):
    with pytest.raises(MlflowException, match=message) as info:
        parse_inputs(model_input)
    assert info.value.error_code == INVALID
    assert info.value.get_http_status_code() == 400


def test_json_integers_and_encoded_files_parse_to_the_same_arrays():
    data = sample(batch=2)
    rgb, xyz = parse_inputs(data)
    as_json = parse_inputs({"rgb": data["rgb"].astype(np.int64), "xyz": data["xyz"].astype(np.float64)})
    encoded = parse_inputs(_encoded(data))
    for other in (as_json, encoded):
        np.testing.assert_array_equal(other[0], rgb)
        np.testing.assert_array_equal(other[1], xyz)
        assert other[0].dtype == np.uint8 and other[1].dtype == np.float32


def test_signature_describes_the_outputs_and_leaves_the_inputs_to_the_model():
    signature = model_signature()
    assert signature.inputs is None  # MLflow would cast requests to an input schema before our checks
    assert signature.outputs.input_names() == ["score", "anomaly_map", "anomalous", "status"]
    data = sample(side=100, batch=None)
    example = example_from_arrays(data["rgb"], data["xyz"], size=64)
    assert example["rgb"].shape == (1, 64, 64, 3) and example["xyz"].dtype == np.float32
    assert (example["xyz"][..., 2] == 0.5).all()  # nearest pixel: real points only


# ------------------------------------------------------- from the registry
@pytest.fixture(scope="module")
def champion(registry):
    params = registry["params"]
    mlflow.set_tracking_uri(params.tracking.uri)
    mlflow.set_registry_uri(params.tracking.uri)
    return mlflow.pyfunc.load_model("models:/bridgenet-bagel@champion")


def test_registered_model_scores_real_samples(champion, tiny):
    good_rgb, good_xyz = real_sample(tiny)
    defect = min(
        p.name for p in (tiny.root / "data" / "bagel" / "test").iterdir() if p.name != "good"
    )
    bad_rgb, bad_xyz = real_sample(tiny, defect)
    out = champion.predict(
        {"rgb": np.stack([good_rgb, bad_rgb]), "xyz": np.stack([good_xyz, bad_xyz])}
    )
    assert set(out) == {"score", "anomaly_map", "anomalous", "status"}
    assert out["score"].shape == (2,) and out["score"].dtype == np.float32
    assert (
        out["anomaly_map"].shape == (2, *good_rgb.shape[:2])
        and out["anomaly_map"].dtype == np.float32
    )
    assert out["anomalous"].dtype == bool
    assert np.isfinite(out["score"]).all() and np.isfinite(out["anomaly_map"]).all()
    threshold = champion.unwrap_python_model().model.threshold
    np.testing.assert_array_equal(out["anomalous"], out["score"] > threshold)
    single = champion.unwrap_python_model().predict(None, {"rgb": good_rgb, "xyz": good_xyz})
    assert single["score"][0] == pytest.approx(out["score"][0], abs=1e-6)


def test_the_logged_model_loads_where_bridgenet_is_not_installed(registry, champion, tiny, tmp_path):
    """The package travels in the model's code/ folder: a process that cannot import bridgenet
    (no site processing, so not the editable install; run outside the checkout) loads and scores it."""
    import json
    import subprocess
    import sys
    import sysconfig

    params = registry["params"]
    local = mlflow.artifacts.download_artifacts("models:/bridgenet-bagel@champion",
                                                tracking_uri=params.tracking.uri, dst_path=str(tmp_path / "m"))
    assert (Path(local) / "code" / "bridgenet" / "serving" / "pyfunc_model.py").is_file()
    rgb, xyz = real_sample(tiny)
    np.savez(tmp_path / "sample.npz", rgb=rgb, xyz=xyz)
    purelib, sample = sysconfig.get_paths()["purelib"], str(tmp_path / "sample.npz")
    code = "\n".join([
        f"import sys, json; sys.path.append({purelib!r})",
        "try:\n    import bridgenet\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('bridgenet importable')",
        "import numpy as np, mlflow.pyfunc",
        f"m = mlflow.pyfunc.load_model({local!r}); s = np.load({sample!r})",
        "out = m.predict({'rgb': s['rgb'][None], 'xyz': s['xyz'][None]})",
        "print(json.dumps([float(out['score'][0]), sys.modules['bridgenet'].__file__]))",
    ])
    done = subprocess.run([sys.executable, "-S", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    score, origin = json.loads(done.stdout.strip().splitlines()[-1])
    assert origin.startswith(str(Path(local) / "code"))
    assert score == pytest.approx(float(champion.predict({"rgb": rgb[None], "xyz": xyz[None]})["score"][0]), abs=1e-6)


def test_malformed_input_through_pyfunc_is_invalid_parameter(champion, tiny):
    rgb, xyz = real_sample(tiny)
    for bad in (
        {"rgb": rgb[None]},  # missing input
        {"rgb": rgb[None].astype(np.float32), "xyz": xyz[None]},  # wrong dtype
        {"rgb": rgb[None], "xyz": np.zeros_like(xyz)[None]},
    ):  # ours: empty cloud
        with pytest.raises(MlflowException) as info:
            champion.predict(bad)
        assert info.value.error_code == INVALID, info.value.message


def test_predict_resolves_registry_uris(registry, tiny, tmp_path):
    from bridgenet.cli import main
    from bridgenet.predict import predict_arrays, resolve_model

    params = registry["params"]
    uri = params.tracking.uri
    model = resolve_model("models:/bridgenet-bagel@champion", uri)
    assert model.category == "bagel"
    rgb, xyz = real_sample(tiny)
    prediction = predict_arrays(model, rgb, xyz)
    assert prediction.anomaly_map.shape == rgb.shape[:2] and np.isfinite(prediction.score)
    assert prediction.anomalous == (prediction.score > model.threshold)
    run_id = registry["registered"]["bagel"]["run_id"]
    assert download_model_file(f"runs:/{run_id}/bridgenet-bagel", uri).name == "model.pt"  # the logged model's name
    assert download_model_file(registry["registered"]["bagel"]["model_uri"], uri).is_file()
    folder = tiny.root / "data" / "bagel" / "test" / "good"
    result = CliRunner().invoke(
        main,
        [
            "predict",
            "--model",
            "models:/bridgenet-bagel@champion",
            "--rgb",
            str(folder / "rgb" / "000.png"),
            "--xyz",
            str(folder / "xyz" / "000.tiff"),
            "--heatmap",
            str(tmp_path / "h.png"),
            "--set",
            f"tracking.uri={uri}",
        ],
    )
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output.strip().splitlines()[-1])
    # the CLI scores with the model file's traced graph (the backbone's original layers), the
    # in-process model with its batch norms folded: equal to float rounding
    assert answer["category"] == "bagel" and answer["score"] == pytest.approx(
        prediction.score, abs=1e-5
    )
    assert (tmp_path / "h.png").is_file()


def test_download_uses_the_given_store_as_registry(registry, tmp_path):
    mlflow.set_registry_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # restored after the test
    path = download_model_file("models:/bridgenet-dowel/1", registry["params"].tracking.uri)
    assert path.is_file() and not (tmp_path / "elsewhere.db").exists()


def test_unknown_model_uri_is_named_in_the_error(registry):
    uri = registry["params"].tracking.uri
    with pytest.raises(ValueError, match="name a version"):
        download_model_file("models:/bridgenet-bagel", uri)
    with pytest.raises(FileNotFoundError, match="models:/bridgenet-nothing@champion"):
        download_model_file("models:/bridgenet-nothing@champion", uri)
