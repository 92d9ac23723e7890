"""Export a trained model to ONNX or TorchScript: network inputs in, image scores and maps out.

The exported graph is the eval forward of :class:`BridgeNet` with its scorer
(discriminator, memory bank, or both) folded in: ``rgb`` (B, 3, S, S) and ``depth``
(B, 1, S, S) in [0, 1], as ``bridgenet predict`` prepares them from the files, give
``score`` (B,) and ``anomaly_map`` (B, S, S). Reading files and extracting the visible
depth from a point cloud (plane fit, projection) stay in Python. Every patch goes
through the heads and the ones off the object are masked afterwards (the Python
forward skips them instead): same numbers, no data-dependent shapes in the graph.
The decision threshold, the scorer and the input size travel as ONNX metadata.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from bridgenet.model.backbone import drop_unused_blocks
from bridgenet.model.contract import TrainedModel
from bridgenet.model.network import BridgeNet
from bridgenet.model.scripted import EXTRA_FILE, describe

LOGGER = logging.getLogger(__name__)
FORMATS = ("onnx", "torchscript")
ONNX_OPSET = 18


class ExportedScorer(nn.Module):
    """(rgb, depth) -> (score (B,), anomaly_map (B, S, S)) with the network's scorer; no
    boolean indexing, no faiss, so that tracers see a fixed graph."""

    def __init__(self, network: BridgeNet) -> None:
        super().__init__()
        self.network = network.eval()
        # The folded eval head as constants: its cache keys on storage pointers, which tracers lack.
        weight, bias = network.folded_head()
        self.register_buffer("head_weight", weight.detach().clone())
        self.register_buffer("head_bias", bias.detach().clone())

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        result = self.network(rgb, depth, dense=True, head=(self.head_weight, self.head_bias))
        return result.pred_score, result.anomaly_map


def example_inputs(model: TrainedModel, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs of the model's size whose object (depth > 0) is the central half of the image."""
    size = model.params.data.image_size
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(batch, 3, size, size, generator=gen)
    depth = torch.zeros(batch, 1, size, size)
    depth[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 0.5
    return rgb, depth


def metadata(model: TrainedModel) -> dict[str, str]:
    """ONNX metadata: the keys a reader needs at a glance, and the whole :func:`describe` record."""
    return {
        "bridgenet.category": model.category,
        "bridgenet.scorer": model.scorer.name,
        "bridgenet.threshold": repr(float(model.threshold)),
        "bridgenet.image_size": str(model.params.data.image_size),
        "bridgenet.modalities": json.dumps(list(model.network.modalities)),
        "bridgenet.inputs": "rgb (B, 3, S, S) and depth (B, 1, S, S) in [0, 1], as bridgenet predict prepares them",
        "bridgenet.meta": json.dumps(describe(model)),
    }


def export_model(model: TrainedModel, out: Path, fmt: str = "onnx") -> Path:
    """Write ``model`` as ``fmt`` (``onnx`` or ``torchscript``) to ``out``; returns ``out``.

    The file is written beside ``out`` first and moved into place, so a failed export
    leaves an earlier file as it was.
    """
    if fmt not in FORMATS:
        raise ValueError(f"export format {fmt!r}: allowed {FORMATS}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        if fmt == "onnx":
            with _traceable(model) as (wrapper, inputs), torch.no_grad():
                _export_onnx(wrapper, inputs, partial, metadata(model))
        else:
            partial.write_bytes(traced_graph(model))
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    LOGGER.info("exported %s (%s, scorer %s) to %s", model.category, fmt, model.scorer, out)
    return out


def traced_graph(model: TrainedModel) -> bytes:
    """``model`` as a TorchScript file's bytes (what ``--format torchscript`` writes): the graph
    of :class:`ExportedScorer` with :func:`bridgenet.model.scripted.describe` as its extra file.
    ``model.pt`` carries these bytes too, so that ``bridgenet predict`` starts without timm."""
    buffer = io.BytesIO()
    with _traceable(model) as (wrapper, inputs), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript's deprecation notice
        # the grid and image size become constants on purpose (ExportedScorer.forward)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(wrapper, inputs, check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={EXTRA_FILE: json.dumps(describe(model))})
    return buffer.getvalue()


@contextmanager
def _traceable(model: TrainedModel) -> Iterator[tuple[ExportedScorer, tuple[torch.Tensor, torch.Tensor]]]:
    """The wrapper and example inputs to trace, with the backbone in one piece (one graph for any
    batch); the network is left on the CPU, in eval mode, its batching restored."""
    wrapper = ExportedScorer(model.network.cpu()).eval()
    inputs = example_inputs(model, batch=2)  # two, so that the batch axis stays free
    backbone = wrapper.network.backbone
    pieces, backbone.cpu_batch = backbone.cpu_batch, 0
    folding, backbone.fold = backbone.fold, False  # the graph holds the original layers
    blocks = getattr(backbone.net, "blocks", None)
    dropped = drop_unused_blocks(backbone.net)  # but not those after the last level read (restored below)
    try:
        yield wrapper, inputs
    finally:
        backbone.cpu_batch, backbone.fold = pieces, folding
        if dropped:
            backbone.net.blocks = blocks


def _export_onnx(wrapper: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, meta: dict[str, str]) -> None:
    import onnx

    batch = torch.export.Dim("batch", min=1, max=1024)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        torch.onnx.export(
            wrapper, inputs, str(path), input_names=["rgb", "depth"], output_names=["score", "anomaly_map"],
            dynamic_shapes=({0: batch}, {0: batch}), opset_version=ONNX_OPSET, dynamo=True, verbose=False,
        )
    graph = onnx.load(str(path))
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(path))
