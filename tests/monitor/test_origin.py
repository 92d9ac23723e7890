"""Which model scored: a registered alias is resolved to its version, a file to its digest."""

from __future__ import annotations

import hashlib

import pytest

# MLflow's SQLAlchemy store warns about its own loader options; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A SQLite registry with bridgenet-bagel versions 1 and 2, @champion on 2 (no model files)."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("bridgenet-bagel")
    for _ in range(2):
        client.create_model_version("bridgenet-bagel", source=str(root / "model"))
    client.set_registered_model_alias("bridgenet-bagel", "champion", "2")
    return uri


def test_an_alias_resolves_to_the_version_it_names_now(registry):
    from bridgenet.tracking.pyfunc import registered_version

    assert registered_version("models:/bridgenet-bagel@champion", registry) == ("bridgenet-bagel", "2")
    assert registered_version("models:/bridgenet-bagel/1", registry) == ("bridgenet-bagel", "1")
    assert registered_version("models:/m-" + "0" * 32, registry) is None
    assert registered_version("runs:/abc/model", registry) is None
    with pytest.raises(FileNotFoundError, match="no version of bridgenet-bagel has the alias gone"):
        registered_version("models:/bridgenet-bagel@gone", registry)


def test_a_registered_model_is_loaded_by_the_pinned_version(registry, tmp_path, monkeypatch):
    from bridgenet.monitor import records
    from bridgenet.tracking import pyfunc

    model_file = tmp_path / "model.pt"
    model_file.write_bytes(b"weights")
    fetched = []
    monkeypatch.setattr(pyfunc, "download_model_file", lambda uri, tracking: fetched.append(uri) or model_file)
    monkeypatch.setattr("bridgenet.model.io.load_model", lambda path, graph=False: f"model at {path}")
    model, origin = records.load_with_origin("models:/bridgenet-bagel@champion", registry)
    assert fetched == ["models:/bridgenet-bagel/2"] and model == f"model at {model_file}"
    assert origin == records.ModelOrigin("bridgenet-bagel", "2", hashlib.sha256(b"weights").hexdigest())
    _, from_file = records.load_with_origin(model_file)
    assert from_file == records.ModelOrigin(None, None, hashlib.sha256(b"weights").hexdigest())
