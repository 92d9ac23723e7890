"""A TorchScript export (``bridgenet export --format torchscript``) loaded as a model to predict with.

Loading one needs torch alone: no timm, torchvision or model code is imported, which
halves a one-sample ``bridgenet predict``'s start-up (bench/serving.py). The export
carries the scorer, both thresholds, the stored params and the backbone's strides in
its ``bridgenet.json`` extra file.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

SCRIPTED_SUFFIXES = (".ts", ".torchscript")
EXTRA_FILE = "bridgenet.json"


@dataclass
class ScriptedResult:
    """Same fields as the network's eval output: ``pred_score`` (B,), ``anomaly_map`` (B, S, S)."""

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor


class ScriptedNetwork(nn.Module):
    """The exported graph behind the network's eval interface (``scorer``, ``strides``)."""

    def __init__(self, module: torch.jit.ScriptModule, scorer: str, modalities: tuple[str, ...],
                 strides: tuple[int, ...]) -> None:
        super().__init__()
        self.module = module
        self.scorer = scorer
        self.modalities = modalities
        self.strides = strides

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> ScriptedResult:
        # Unoptimised execution: the graph executor's profiling runs cost ~1 s on the first
        # calls of a freshly loaded module, which is every call of a one-sample predict.
        with torch.jit.optimized_execution(False):
            score, anomaly_map = self.module(rgb, depth)
        return ScriptedResult(score, anomaly_map)


def describe(model: Any) -> dict[str, Any]:
    """What a scripted export must carry to be loaded as ``model`` (a TrainedModel)."""
    return {
        "format": "bridgenet-scripted/1",
        "category": model.category,
        "scorer": model.network.scorer,
        "modalities": list(model.network.modalities),
        "strides": list(model.network.strides),
        "threshold": float(model.threshold),
        "pixel_threshold": None if model.pixel_threshold is None else float(model.pixel_threshold),
        "foreground_fraction": float(model.foreground_fraction),
        "epoch": int(model.epoch),
        "params": model.params.to_dict(),
    }


def load_scripted(path: Path, device: torch.device | str = "cpu") -> Any:
    """A TrainedModel whose network is the TorchScript export at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: not a TorchScript export of bridgenet export ({err})") from None
    return scripted_model(data, str(path), device)


def scripted_model(data: bytes, name: str, device: torch.device | str = "cpu") -> Any:
    """A TrainedModel from a TorchScript file's bytes (an export, or the graph inside a model.pt);
    ``name`` says where they came from in errors."""
    from bridgenet.config import params_from_dict, upgrade_stored_params
    from bridgenet.model.io import TrainedModel

    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            module = torch.jit.load(io.BytesIO(data), map_location=device, _extra_files=extra)
        meta = json.loads(extra[EXTRA_FILE] or "null")
    except (RuntimeError, ValueError, OSError) as err:
        raise ValueError(f"{name}: not a TorchScript export of bridgenet export ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != "bridgenet-scripted/1":
        raise ValueError(f"{name}: a TorchScript file without bridgenet's {EXTRA_FILE} (export it with "
                         "bridgenet export --format torchscript)")
    params = params_from_dict(upgrade_stored_params(meta["params"]), source=f"{name} (stored params)")
    network = ScriptedNetwork(module.eval(), meta["scorer"], tuple(meta["modalities"]), tuple(meta["strides"]))
    return TrainedModel(network=network, params=params, category=meta["category"], threshold=meta["threshold"],
                        epoch=meta["epoch"], foreground_fraction=meta["foreground_fraction"],
                        pixel_threshold=meta["pixel_threshold"])
