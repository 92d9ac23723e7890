"""Saving and loading trained models and checkpoints (``torch.load(weights_only=True)`` only)."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bridgenet.config import Params, params_from_dict
from bridgenet.model.network import BridgeNet

MODEL_FORMAT = "bridgenet-model/1"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never half-written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class TrainedModel:
    """A trained network with what it needs at inference time."""

    network: BridgeNet
    params: Params
    category: str
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int = -1


def save_model(model: TrainedModel, path: Path, history: list[dict[str, Any]] | None = None) -> None:
    atomic_save(
        {
            "format": MODEL_FORMAT,
            "category": model.category,
            "params": model.params.to_dict(),
            "state_dict": model.network.state_dict(),
            "threshold": float(model.threshold),
            "epoch": int(model.epoch),
            "metrics": model.metrics,
            "history": history or [],
        },
        path,
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a model or checkpoint file safely; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign files raise many types
        raise ValueError(f"{path}: not a BridgeNet model file ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a BridgeNet model file (format {MODEL_FORMAT!r} expected)")
    return payload


def load_model(path: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """Rebuild the network from its stored params and weights (backbone included)."""
    payload = read_checkpoint(path)
    stored = payload["params"]
    if "scorer" not in stored.get("model", {}):
        # Written before the memory-bank head existed: the discriminator was its only scorer.
        stored = {**stored, "model": {**stored.get("model", {}), "scorer": "discriminator"}}
    params = params_from_dict(stored, source=f"{path} (stored params)")
    network = BridgeNet(params.model, weights="none", announce_random=False)
    missing, unexpected = network.load_state_dict(payload["state_dict"], strict=False)
    added = {k for k in missing if k.startswith("memory.") or k in ("score_loc", "score_scale")}
    if unexpected or set(missing) - added or (added and params.model.scorer != "discriminator"):
        raise ValueError(f"{path}: weights do not fit the stored model params "
                         f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    network.to(device).eval()
    return TrainedModel(
        network=network,
        params=params,
        category=payload["category"],
        threshold=float(payload["threshold"]),
        metrics=payload.get("metrics", {}),
        epoch=int(payload.get("epoch", -1)),
    )
