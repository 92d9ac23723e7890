"""Inputs that used to pass silently: duplicate keys, no params file, a mistyped store, a
corrupt weights file, an RGBA image."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from bridgenet.config import ConfigError, load_params
from bridgenet.data.samples import read_rgb
from bridgenet.model.io import load_model
from bridgenet.tracking.store import configure_tracking
from tests.reliability.conftest import make_params


def test_duplicate_key_in_params_is_an_error_naming_it(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 5\n  batch_size: 4\n  epochs: 50\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'epochs' \(line 4; first on line 2\)"):
        load_params(path)


def test_running_without_params_file_says_which_defaults_are_used(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING, logger="bridgenet.config")
    params = load_params()
    assert params.data.root == "data/mvtec3d_synth"
    message = " ".join(r.getMessage() for r in caplog.records)
    assert f"no params.yaml in {tmp_path}: running on the built-in defaults" in message
    assert "data.root=data/mvtec3d_synth" in message and "tracking.uri=sqlite:///mlflow.db" in message


@pytest.mark.parametrize("where", ["missing_folder/mlflow.db", "mlfow.db"])
def test_mistyped_sqlite_store_is_refused_and_nothing_is_created(tmp_path, where):
    (tmp_path / "mlflow.db").write_bytes(b"")  # the store the user meant
    params = make_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / where}",
                         "tracking.create=false")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=r"no tracking store at .*set tracking.create=true"):
        configure_tracking(params)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_new_store_is_created_when_asked(tmp_path):
    params = make_params(tmp_path, f"tracking.uri=sqlite:///{tmp_path / 'new' / 'mlflow.db'}")
    configure_tracking(params)
    assert (tmp_path / "new" / "mlflow.db").stat().st_size > 0


@pytest.mark.parametrize("content", [os.urandom(2000), b"", b"PK\x03\x04 not a zip"])
def test_corrupt_weights_never_suggest_weights_only_false(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"model.pt: not a BridgeNet model file") as err:
        load_model(path)
    text = str(err.value)
    assert "weights_only" not in text and err.value.__cause__ is None


def test_rgba_alpha_is_dropped_with_a_warning(tmp_path, caplog):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:2, :, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    caplog.set_level(logging.WARNING, logger="bridgenet.data.readers")
    assert read_rgb(tmp_path / "a.png").shape == (8, 8, 3)
    assert "a.png: alpha channel dropped (16 of 64 pixels not opaque)" in caplog.text
