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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bridgenet.model.contract import SCRIPTED_FORMAT, ModelMeta, ScoreResult, TrainedModel
from bridgenet.model.scorers import scorer_named

SCRIPTED_SUFFIXES = (".ts", ".torchscript")
EXTRA_FILE = "bridgenet.json"


class ScriptedNetwork(nn.Module):
    """The exported graph behind the scoring-network contract (:class:`ScoringNetwork`)."""

    def __init__(self, module: torch.jit.ScriptModule, scorer: str, modalities: tuple[str, ...],
                 strides: tuple[int, ...]) -> None:
        super().__init__()
        self.module = module
        self.scorer = scorer_named(scorer)
        self.modalities = modalities
        self.strides = strides

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> ScoreResult:
        # Unoptimised execution: the graph executor's profiling runs cost ~1 s on the first
        # calls of a freshly loaded module, which is every call of a one-sample predict.
        with torch.jit.optimized_execution(False):
            score, anomaly_map = self.module(rgb, depth)
        return ScoreResult(score, anomaly_map)


def describe(model: TrainedModel) -> dict[str, Any]:
    """The extra file of a scripted export: the model's meta and the facts of its network."""
    return {"format": SCRIPTED_FORMAT, **model.meta.to_dict(), **model.network_facts()}


def load_scripted(path: Path, device: torch.device | str = "cpu") -> TrainedModel:
    """A TrainedModel whose network is the TorchScript export at ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: not a TorchScript export of bridgenet export ({err})") from None
    return scripted_model(data, str(path), device)


def scripted_model(data: bytes, name: str, device: torch.device | str = "cpu") -> TrainedModel:
    """A TrainedModel from a TorchScript file's bytes (an export, or the graph inside a model.pt);
    ``name`` says where they came from in errors."""
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
            module = torch.jit.load(io.BytesIO(data), map_location=device, _extra_files=extra)
        meta = json.loads(extra[EXTRA_FILE] or "null")
    except (RuntimeError, ValueError, OSError) as err:
        raise ValueError(f"{name}: not a TorchScript export of bridgenet export ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != SCRIPTED_FORMAT:
        raise ValueError(f"{name}: a TorchScript file without bridgenet's {EXTRA_FILE} (export it with "
                         "bridgenet export --format torchscript)")
    network = ScriptedNetwork(module.eval(), meta["scorer"], tuple(meta["modalities"]), tuple(meta["strides"]))
    return TrainedModel(network, ModelMeta.from_dict(meta, name))
