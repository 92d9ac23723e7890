"""Saving and loading trained models and checkpoints (``torch.load(weights_only=True)`` only)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bridgenet.config import Params, params_from_dict, upgrade_stored_params
from bridgenet.files import TMP_SUFFIX, atomic_path

if TYPE_CHECKING:  # the network (and timm) is imported when a model is built, not to load a scripted one
    from bridgenet.model.network import BridgeNet

MODEL_FORMAT = "bridgenet-model/1"
GRAPH_KEY = "graph"  # the TorchScript bytes of the model (fast start), where saved
# what torch.load raises on corrupt, truncated or foreign files
_LOAD_ERRORS = (RuntimeError, pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError,
                KeyError, IndexError, AttributeError, ImportError)


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` through :func:`bridgenet.files.atomic_path`: never half-written."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def remove_interrupted_writes(folder: Path) -> list[Path]:
    """Delete the temporary files that :func:`atomic_save` left in ``folder`` when killed; return them.

    Only its own ``.<name>.pt.<random>.tmp`` files are touched.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.glob(f".*.pt.*{TMP_SUFFIX}") if p.is_file())
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@dataclass
class TrainedModel:
    """A trained network with what it needs at inference time.

    ``foreground_fraction`` is the share of training samples with a foreground
    (an object above the support plane): above 0, an input without one is
    outside what the model knows (``predict.on_empty_foreground``); 0 means the
    category is scored on whole images. Models saved before it was stored load as 1.
    """

    network: BridgeNet
    params: Params
    category: str
    threshold: float
    metrics: dict[str, Any] = field(default_factory=dict)
    epoch: int = -1
    foreground_fraction: float = 1.0
    pixel_threshold: float | None = None  # the anomaly map's threshold (validation goods); None: older model

    def display_range(self) -> tuple[float, float]:
        """Colour range for this model's anomaly maps: [0, 1] for the discriminator's probabilities;
        for standardised scores (memory, fused), from the clean patches' mean (0) to twice the threshold."""
        if self.network.scorer == "discriminator":
            return 0.0, 1.0
        return 0.0, max(2.0 * self.threshold, 1.0)


def save_model(model: TrainedModel, path: Path, history: list[dict[str, Any]] | None = None,
               graph: bytes | None = None) -> None:
    """Write ``model`` to ``path``; ``graph``, its TorchScript bytes
    (:func:`bridgenet.export.traced_graph`), travels along for a fast-starting predict."""
    payload = {
        "format": MODEL_FORMAT,
        "category": model.category,
        "params": model.params.to_dict(),
        "state_dict": model.network.state_dict(),
        "threshold": float(model.threshold),
        "epoch": int(model.epoch),
        "metrics": model.metrics,
        "history": history or [],
        "foreground_fraction": float(model.foreground_fraction),
        "pixel_threshold": None if model.pixel_threshold is None else float(model.pixel_threshold),
    }
    if graph is not None:
        payload[GRAPH_KEY] = torch.frombuffer(bytearray(graph), dtype=torch.uint8)
    atomic_save(payload, path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a model or checkpoint file safely; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except _LOAD_ERRORS as exc:
        # torch's message may advise weights_only=False, which would run the file's code
        raise ValueError(
            f"{path}: not a BridgeNet model file, or a damaged one ({type(exc).__name__}: "
            f"{_first_line(exc)}); rebuild it with `bridgenet train` or fetch it again"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise ValueError(f"{path}: not a BridgeNet model file (format {MODEL_FORMAT!r} expected)")
    return payload


def _first_line(exc: BaseException) -> str:
    """The cause in torch's message, without its advice to load with ``weights_only=False``."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not any("weights_only" in line for line in lines):
        return lines[0] if lines else "no message"
    marker = "WeightsUnpickler error:"
    at = next((i for i, line in enumerate(lines) if marker in line), None)
    cause = "" if at is None else lines[at].split(marker, 1)[1].strip()
    if at is not None and not cause and at + 1 < len(lines):
        cause = lines[at + 1]
    if "weights_only" in cause or "http" in cause:
        cause = ""
    return "content that is not plain tensors and numbers" + (f": {cause}" if cause else "")


def load_model(path: Path, device: torch.device | str = "cpu", graph: bool = False) -> TrainedModel:
    """Rebuild the network from its stored params and weights (backbone included); a
    TorchScript export (``.ts``) loads as its graph, without the model code.

    ``graph``: a model file that carries its traced graph (every one trained since it was
    added) loads as that graph instead, which skips importing timm and torchvision (half of a
    one-sample predict's start-up). Its scores equal the network's to float rounding
    (tests/test_export.py); the network is needed to train, export or move to a GPU.
    """
    from bridgenet.model.scripted import SCRIPTED_SUFFIXES, load_scripted, scripted_model

    if Path(path).suffix in SCRIPTED_SUFFIXES:
        return load_scripted(Path(path), device)
    payload = read_checkpoint(path)
    if graph and GRAPH_KEY in payload:
        return scripted_model(payload[GRAPH_KEY].numpy().tobytes(), f"{path} (its {GRAPH_KEY})", device)
    from bridgenet.model.network import BridgeNet

    params = params_from_dict(upgrade_stored_params(payload["params"]), source=f"{path} (stored params)")
    network = BridgeNet(params.model, weights="none", announce_random=False)
    missing, unexpected = network.load_state_dict(payload["state_dict"], strict=False)
    added = {k for k in missing if k.startswith("memory.") or k in ("score_loc", "score_scale")}
    # before the components' weights existed every component counted (the buffer's ones)
    harmless_weight = {"score_weight"}
    # models from before the relief input read the height map and carry no relief scale
    harmless = {"depth_image.relief_scale"} if params.model.depth_input == "height" else set()
    if unexpected or set(missing) - added - harmless - harmless_weight or (added and params.model.scorer != "discriminator"):
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
        foreground_fraction=float(payload.get("foreground_fraction", 1.0)),
        pixel_threshold=None if payload.get("pixel_threshold") is None else float(payload["pixel_threshold"]),
    )
