"""The one inference path: prepared inputs -> the network -> scores and maps, in the frame.

Training's validation, ``evaluate``, ``predict`` (one sample, folder, list), serving and the
benches all score through :func:`score`; exports trace the same network forward
(``dense``: :class:`bridgenet.export.ExportedScorer`). Preparing a sample from its files
(visible depth, crop) is :func:`bridgenet.preprocess.network_inputs`, the same for the
cache and for online prediction; :meth:`bridgenet.data.batch.Batch.from_arrays` turns its arrays into a batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from bridgenet.data.batch import Batch
from bridgenet.data.crop import paste_maps
from bridgenet.model.contract import ScoringNetwork
from bridgenet.model.scorers import Scorer


@dataclass(frozen=True)
class Scored:
    """Image scores (N,), maps at network size (N, S, S) and, where boxes were given, in the
    frame the boxes lie in (N, H, W)."""

    scores: np.ndarray
    maps: np.ndarray
    frames: np.ndarray | None = None


@torch.inference_mode()
def score(
    network: ScoringNetwork,
    batch: Batch,
    device: torch.device | str,
    batch_size: int,
    scorer: str | Scorer | None = None,
    boxes: np.ndarray | None = None,
    frame: tuple[int, int] | None = None,
) -> Scored:
    """Score every sample of ``batch`` in pieces of ``batch_size`` on ``device``.

    ``scorer`` overrides the network's for this call (a :class:`BridgeNet` only). With
    ``boxes`` (N, 4) and ``frame`` (H, W), the maps are also pasted back into the frame
    (:func:`bridgenet.data.crop.paste_maps`): the boxes are the crops the inputs show.
    """
    if (boxes is None) != (frame is None):
        raise ValueError("score: boxes and frame go together")
    network.eval()
    extra = {} if scorer is None else {"scorer": scorer}
    scores, maps, frames = [], [], []
    for start in range(0, len(batch), batch_size):
        part = slice(start, start + batch_size)
        result = network(batch.rgb[part].to(device), batch.depth[part].to(device), **extra)
        small = result.anomaly_map.float().cpu()
        scores.append(result.pred_score.float().cpu())
        maps.append(small)
        if boxes is not None:
            frames.append(paste_maps(small, np.asarray(boxes)[part], frame))
    return Scored(torch.cat(scores).numpy(), torch.cat(maps).numpy(),
                  torch.cat(frames).numpy() if frames else None)
