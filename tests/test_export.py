"""ONNX and TorchScript exports reproduce the torch model's scores and maps, scorer included."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bridgenet.export import export_model
from bridgenet.model.scorers import SCORERS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def test_inputs(trained_bagel):
    from bridgenet.data.batch import Batch
    from bridgenet.evaluate import load_test_split

    params, _, _ = trained_bagel
    split = load_test_split(params, "bagel")
    # goods and defects, with their objects (depth > 0) as preprocessing left them
    index = np.r_[np.flatnonzero(split.labels == 0)[:2], np.flatnonzero(split.labels == 1)[:2]]
    batch = Batch.from_split(split, index)
    return batch.rgb, batch.depth


@pytest.mark.parametrize("scorer", SCORERS)
def test_onnx_export_matches_torch_in_every_mode(trained_bagel, test_inputs, tmp_path, scorer):
    _, _, model = trained_bagel
    rgb, depth = test_inputs
    model.network.scorer = scorer
    try:
        path = export_model(model, tmp_path / "model.onnx", "onnx")
        with torch.no_grad():
            expected = model.network(rgb, depth)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        score, anomaly_map = session.run(["score", "anomaly_map"], {"rgb": rgb.numpy(), "depth": depth.numpy()})
        np.testing.assert_allclose(score, expected.pred_score.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(anomaly_map, expected.anomaly_map.numpy(), atol=1e-4, rtol=0)
        assert len(set(np.round(score, 4))) == len(score)  # four samples, four scores: not a constant
        meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert meta["bridgenet.scorer"] == scorer
        assert float(meta["bridgenet.threshold"]) == model.threshold
        assert int(meta["bridgenet.image_size"]) == rgb.shape[-1]
    finally:
        model.network.scorer = trained_bagel[0].model.scorer


def test_torchscript_export_matches_torch(trained_bagel, test_inputs, tmp_path):
    _, _, model = trained_bagel
    rgb, depth = test_inputs
    path = export_model(model, tmp_path / "model.ts", "torchscript")
    extra = {"bridgenet.json": ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    with torch.no_grad():
        expected = model.network(rgb, depth)
        score, anomaly_map = loaded(rgb, depth)
    torch.testing.assert_close(score, expected.pred_score, atol=1e-4, rtol=0)
    torch.testing.assert_close(anomaly_map, expected.anomaly_map, atol=1e-4, rtol=0)
    assert json.loads(extra["bridgenet.json"])["scorer"] == model.network.scorer.name
    # the stride-32 stages the default layers never read are not in the graph
    names = {name for name, _ in loaded.named_parameters()}
    assert any(".blocks.4." in n for n in names) and not any(".blocks.5." in n for n in names)


def predict_in_a_new_process(model_path, rgb, xyz) -> tuple[float, list[str]]:
    """``predict_files`` in a fresh interpreter: its score and which of timm, torchvision and
    the network's module it imported."""
    import subprocess
    import sys

    code = ("import sys, json; from bridgenet.predict import predict_files; "
            f"r = predict_files({str(model_path)!r}, {str(rgb)!r}, {str(xyz)!r}); "
            "print(json.dumps([r['score'], sorted(m for m in ('timm', 'torchvision', 'bridgenet.model.network') "
            "if m in sys.modules)]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    score, imported = json.loads(done.stdout.strip().splitlines()[-1])
    return score, imported


def test_predict_with_a_torchscript_export_equals_the_model_and_imports_no_model_code(
        trained_bagel, tiny_root, tmp_path):
    from bridgenet.model.io import save_model
    from bridgenet.predict import predict_files

    _, _, model = trained_bagel
    save_model(model, tmp_path / "model.pt")
    export_model(model, tmp_path / "model.ts", "torchscript")
    folder = tiny_root / "synth" / "bagel" / "test" / "contamination"
    for rgb in sorted((folder / "rgb").iterdir())[:2]:
        xyz = folder / "xyz" / f"{rgb.stem}.tiff"
        built = predict_files(tmp_path / "model.pt", rgb, xyz)
        scripted = predict_files(tmp_path / "model.ts", rgb, xyz)
        assert scripted["score"] == pytest.approx(built["score"], abs=1e-4)
        assert {k: scripted[k] for k in ("anomalous", "threshold", "pixel_threshold", "scorer", "category")} == {
            k: built[k] for k in ("anomalous", "threshold", "pixel_threshold", "scorer", "category")}
    score, imported = predict_in_a_new_process(tmp_path / "model.ts", rgb, xyz)
    assert imported == [] and score == pytest.approx(scripted["score"], abs=1e-6)


def test_a_trained_model_file_carries_its_graph_and_predict_starts_without_model_code(trained_bagel, tiny_root):
    from pathlib import Path

    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.model.io import GRAPH_KEY, load_model, read_checkpoint
    from bridgenet.model.network import BridgeNet
    from bridgenet.model.scripted import ScriptedNetwork
    from bridgenet.predict import predict_arrays, predict_files

    _, summary, model = trained_bagel
    path = Path(summary.model_path)
    assert read_checkpoint(path)[GRAPH_KEY].numel() > 1_000_000  # the graph holds the weights too
    assert isinstance(load_model(path).network, BridgeNet)  # to evaluate, export, resume: the network
    assert isinstance(load_model(path, graph=True).network, ScriptedNetwork)
    folder = tiny_root / "synth" / "bagel" / "test"
    samples = [min((folder / kind / "rgb").iterdir()) for kind in ("good", "contamination")]
    predicted = []
    for rgb in samples:
        xyz = rgb.parent.parent / "xyz" / f"{rgb.stem}.tiff"
        built = predict_arrays(model, read_rgb(rgb), read_xyz(xyz))
        answer = predict_files(path, rgb, xyz)  # the graph: what bridgenet predict uses
        assert answer["score"] == pytest.approx(built.score, abs=1e-5)
        assert answer["anomalous"] == built.anomalous and answer["scorer"] == model.network.scorer.name
        predicted.append(answer["score"])
    assert predicted[0] != pytest.approx(predicted[1], abs=1e-3)  # two samples, two scores
    score, imported = predict_in_a_new_process(path, rgb, xyz)
    assert imported == [] and score == pytest.approx(predicted[1], abs=1e-6)  # threads: rounding


def test_a_model_whose_graph_cannot_be_traced_is_saved_without_it(trained_bagel, tmp_path, monkeypatch, caplog):
    import bridgenet.export
    from bridgenet.model.io import GRAPH_KEY, load_model, read_checkpoint, save_model
    from bridgenet.model.network import BridgeNet
    from bridgenet.train import fast_start_graph

    _, _, model = trained_bagel

    def untraceable(_model):
        raise RuntimeError("a backbone the tracer cannot follow")

    monkeypatch.setattr(bridgenet.export, "traced_graph", untraceable)
    graph = fast_start_graph(model)
    assert graph is None and "saved without its traced graph (a backbone the tracer" in caplog.text
    save_model(model, tmp_path / "model.pt", graph=graph)
    assert GRAPH_KEY not in read_checkpoint(tmp_path / "model.pt")
    assert isinstance(load_model(tmp_path / "model.pt", graph=True).network, BridgeNet)  # built instead


def test_a_torchscript_file_that_is_not_an_export_is_refused(tmp_path):
    from bridgenet.model.io import load_model

    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "other.ts"))
    with pytest.raises(ValueError, match="bridgenet export --format torchscript"):
        load_model(tmp_path / "other.ts")
    (tmp_path / "broken.ts").write_bytes(b"nonsense")
    with pytest.raises(ValueError, match="broken.ts: not a TorchScript export"):
        load_model(tmp_path / "broken.ts")


def test_a_failed_export_keeps_the_earlier_file(trained_bagel, tmp_path):
    _, _, model = trained_bagel
    out = tmp_path / "model.onnx"
    out.write_bytes(b"earlier export")
    with pytest.raises(ValueError, match="export format"):
        export_model(model, out, "tflite")
    assert out.read_bytes() == b"earlier export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_export_command_writes_the_file_and_reports_scorer_and_threshold(trained_bagel, tmp_path):
    from click.testing import CliRunner

    from bridgenet.cli import main
    from bridgenet.model.io import save_model

    _, _, model = trained_bagel
    save_model(model, tmp_path / "model.pt")
    out = tmp_path / "exported" / "model.ts"
    result = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "model.pt"), "--format", "torchscript",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["scorer"] == model.network.scorer.name and report["threshold"] == model.threshold
    assert torch.jit.load(str(out)) is not None
    missing = CliRunner().invoke(main, ["export", "--model", str(tmp_path / "nosuch.pt"), "--out", str(out)])
    assert missing.exit_code != 0 and "nosuch.pt" in missing.output
