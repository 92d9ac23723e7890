"""What a trained model is, for every writer and reader of one (torch only, no model code).

- :class:`ModelMeta`: what travels with the weights (category, params, thresholds, selected
  epoch, validation metrics), versioned: ``model.pt`` (:mod:`bridgenet.model.io`), a
  TorchScript export's extra file (:mod:`bridgenet.model.scripted`), ONNX metadata
  (:mod:`bridgenet.export`), the MLflow pyfunc and the model card all write and read it here.
- :class:`ScoringNetwork`: what inference needs from a network, met by
  :class:`bridgenet.model.network.BridgeNet` and by the scripted graph.
- :class:`TrainedModel`: a scoring network with its meta.
- File formats: a model file and a training checkpoint carry different tags, so neither
  passes for the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from bridgenet.config import Params, params_from_dict, upgrade_stored_params
from bridgenet.model.scorers import Scorer

MODEL_FORMAT = "bridgenet-model/1"  # model.pt: the selected epoch, its thresholds, its graph
CHECKPOINT_FORMAT = "bridgenet-checkpoint/1"  # checkpoint.pt: the last epoch's training state
SCRIPTED_FORMAT = "bridgenet-scripted/1"  # a TorchScript export's extra file
META_VERSION = 1  # ModelMeta's layout; files without one are version 0 and load the same


@dataclass(frozen=True)
class ScoreResult:
    """Eval output of a scoring network: ``pred_score`` (B,) and ``anomaly_map`` (B, S, S).

    In [0, 1] for the discriminator; standardised (0 = the mean clean patch) otherwise.
    """

    pred_score: torch.Tensor
    anomaly_map: torch.Tensor


@runtime_checkable
class ScoringNetwork(Protocol):
    """rgb (B, 3, S, S) and depth (B, 1, S, S) in [0, 1] -> :class:`ScoreResult` at S x S."""

    scorer: Scorer
    modalities: tuple[str, ...]

    @property
    def strides(self) -> Sequence[int]: ...

    def __call__(self, rgb: torch.Tensor, depth: torch.Tensor) -> ScoreResult: ...

    def eval(self) -> Any: ...


@dataclass(frozen=True)
class ModelMeta:
    """What a model file says about its weights.

    ``foreground_fraction`` is the share of training samples with a foreground (an object
    above the support plane): above 0, an input without one is outside what the model knows
    (``predict.on_empty_foreground``); 0 means the category is scored on whole images.
    ``pixel_threshold`` is the anomaly map's threshold (None in files older than it).
    """

    category: str
    params: Params
    threshold: float
    pixel_threshold: float | None = None
    foreground_fraction: float = 1.0
    epoch: int = -1
    metrics: Mapping[str, Any] = field(default_factory=dict)
    version: int = META_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain values (JSON- and ``torch.load(weights_only=True)``-safe)."""
        return {
            "meta_version": self.version,
            "category": self.category,
            "params": self.params.to_dict(),
            "threshold": float(self.threshold),
            "pixel_threshold": None if self.pixel_threshold is None else float(self.pixel_threshold),
            "foreground_fraction": float(self.foreground_fraction),
            "epoch": int(self.epoch),
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], source: str) -> ModelMeta:
        """Read :meth:`to_dict`'s output, or an older file's entries (``source`` names it in errors)."""
        version = int(payload.get("meta_version", 0))
        if version > META_VERSION:
            raise ValueError(f"{source}: model metadata version {version} is newer than this BridgeNet "
                             f"reads ({META_VERSION}); upgrade bridgenet")
        try:
            params = params_from_dict(upgrade_stored_params(payload["params"]), source=f"{source} (stored params)")
            pixel = payload.get("pixel_threshold")
            return cls(
                category=str(payload["category"]),
                params=params,
                threshold=float(payload["threshold"]),
                pixel_threshold=None if pixel is None else float(pixel),
                foreground_fraction=float(payload.get("foreground_fraction", 1.0)),
                epoch=int(payload.get("epoch", -1)),
                metrics=dict(payload.get("metrics") or {}),
            )
        except KeyError as missing:
            raise ValueError(f"{source}: not a complete BridgeNet model (no {missing} entry); rebuild it "
                             "with `bridgenet train` or fetch it again") from None


@dataclass
class TrainedModel:
    """A scoring network and its :class:`ModelMeta`."""

    network: ScoringNetwork
    meta: ModelMeta

    @property
    def category(self) -> str:
        return self.meta.category

    @property
    def params(self) -> Params:
        return self.meta.params

    @property
    def threshold(self) -> float:
        return self.meta.threshold

    @property
    def pixel_threshold(self) -> float | None:
        return self.meta.pixel_threshold

    @property
    def foreground_fraction(self) -> float:
        return self.meta.foreground_fraction

    @property
    def epoch(self) -> int:
        return self.meta.epoch

    @property
    def metrics(self) -> Mapping[str, Any]:
        return self.meta.metrics

    @property
    def scorer(self) -> Scorer:
        return self.network.scorer

    def with_meta(self, **changes: Any) -> TrainedModel:
        """The same network with some meta fields replaced (thresholds after a bank update, say)."""
        return TrainedModel(self.network, dataclasses.replace(self.meta, **changes))

    def display_range(self) -> tuple[float, float]:
        """Colour range for this model's anomaly maps: [0, 1] for probabilities; for
        standardised scores (memory, fused), from the clean patches' mean (0) to twice the threshold."""
        if self.scorer.probability:
            return 0.0, 1.0
        return 0.0, max(2.0 * self.threshold, 1.0)

    def network_facts(self) -> dict[str, Any]:
        """What a graph without the model code must be told: scorer, modalities, strides."""
        return {"scorer": self.scorer.name, "modalities": list(self.network.modalities),
                "strides": [int(s) for s in self.network.strides]}
