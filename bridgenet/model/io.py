"""Saving and loading trained models and checkpoints (``torch.load(weights_only=True)`` only)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from bridgenet.files import TMP_SUFFIX, atomic_path
from bridgenet.model.contract import CHECKPOINT_FORMAT, MODEL_FORMAT, ModelMeta, TrainedModel

FILE_KINDS = {MODEL_FORMAT: "model file", CHECKPOINT_FORMAT: "training checkpoint"}
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


def save_model(model: TrainedModel, path: Path, history: list[dict[str, Any]] | None = None,
               graph: bytes | None = None) -> None:
    """Write ``model`` to ``path``; ``graph``, its TorchScript bytes
    (:func:`bridgenet.export.traced_graph`), travels along for a fast-starting predict."""
    payload = {"format": MODEL_FORMAT, **model.meta.to_dict(), "state_dict": model.network.state_dict(),
               "history": history or []}
    if graph is not None:
        payload[GRAPH_KEY] = torch.frombuffer(bytearray(graph), dtype=torch.uint8)
    atomic_save(payload, path)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a training checkpoint (``train --resume`` reads it): its own format, so that it is
    refused where a model file is expected."""
    atomic_save({"format": CHECKPOINT_FORMAT, **state}, path)


def read_checkpoint(path: Path, expected: str = MODEL_FORMAT) -> dict[str, Any]:
    """Load a model file (``expected`` MODEL_FORMAT) or a training checkpoint (CHECKPOINT_FORMAT)
    safely; errors name the file and, for the other kind of BridgeNet file, what to pass instead."""
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
    found = _file_format(payload)
    if found == expected:
        return payload
    if found == CHECKPOINT_FORMAT:  # train writes it beside model.pt to resume training
        category = payload.get("category", "<category>")
        raise ValueError(
            f"{path} is a training checkpoint (the last epoch's training state, for `bridgenet train "
            f"--resume`), not a model; pass the model file beside it, {path.parent / 'model.pt'} (the "
            f"selected epoch, with its threshold), or a registered model such as "
            f"models:/bridgenet-{category}@champion")
    if found == MODEL_FORMAT:
        raise ValueError(f"{path} is a model file, not a training checkpoint (`bridgenet train --resume` "
                         "reads checkpoint.pt)")
    raise ValueError(f"{path}: not a BridgeNet {FILE_KINDS[expected]} (format {expected!r} expected)")


def _file_format(payload: Any) -> str | None:
    """The file's format tag; checkpoints written before they had their own carry the model's
    tag and a ``trainer`` entry."""
    if not isinstance(payload, dict):
        return None
    found = payload.get("format")
    return CHECKPOINT_FORMAT if found == MODEL_FORMAT and "trainer" in payload else found


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

    meta = ModelMeta.from_dict(payload, str(path))
    params = meta.params
    if "state_dict" not in payload:
        raise ValueError(f"{path}: not a complete BridgeNet model file (no 'state_dict' entry); rebuild it "
                         "with `bridgenet train` or fetch it again")
    network = BridgeNet(params.model, weights="none", announce_random=False)
    missing, unexpected = network.load_state_dict(payload["state_dict"], strict=False)
    added = {k for k in missing if k.startswith("memory.") or k in ("score_loc", "score_scale")}
    # before the components' weights existed every component counted (the buffer's ones)
    harmless_weight = {"score_weight"}
    # models from before the relief input read the height map and carry no relief scale
    harmless = {"depth_image.relief_scale"} if params.model.depth_input == "height" else set()
    if unexpected or set(missing) - added - harmless - harmless_weight or (added and network.scorer.uses_memory):
        raise ValueError(f"{path}: weights do not fit the stored model params "
                         f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})")
    network.to(device).eval()
    return TrainedModel(network, meta)
