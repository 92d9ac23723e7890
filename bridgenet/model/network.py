"""The BridgeNet network: one frozen backbone and one feature adaptation for RGB and depth.

Data flow for a batch of B images of side S (stride-8 grid of side s = S / 8):

    rgb (B, 3, S, S), depth (B, 1, S, S)            inputs in [0, 1]
    -> depth as an image: its local relief           (B, 3, S, S) (``DepthImage``, ``depth_input``)
    -> embed(): backbone + PatchAdapter, shared      (B, D, s, s) per modality
    -> concatenate modalities per patch              (B * s * s, M * D)
    -> projection (trainable linear)                 (B * s * s, M * D)
    -> discriminator MLP -> logit per patch          (B * s * s,)
    -> patches off the (dilated) foreground, depth == 0, scored lowest (``foreground_only``)
    -> anomaly map = patch scores upsampled and smoothed; image score = the map's peak

The patch score depends on ``model.scorer`` (:mod:`bridgenet.model.scorers`).

"Standardised" means (x - loc) / scale with statistics of that component on the scored
patches of the validation goods (:meth:`BridgeNet.calibrate`): 0 is the mean clean patch,
1 the highest patch of a typical good sample. Memory and fused scores are unbounded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bridgenet.config import ModelConfig
from bridgenet.model.backbone import Backbone
from bridgenet.model.contract import ScoreResult
from bridgenet.model.depth_image import DepthImage, gaussian_blur
from bridgenet.model.heads import Discriminator, PatchAdapter, Projection
from bridgenet.model.maps import guided_raise
from bridgenet.model.memory import MemoryBank, matmul_nearest
from bridgenet.model.scorers import SCORERS, Scorer, scorer_named  # noqa: F401  (SCORERS: the names)

LOGGER = logging.getLogger(__name__)
MODALITIES = ("rgb", "depth")

@dataclass
class TrainingLogits:
    """Training-mode output: discriminator logits (P,) of the P kept patches, per kind of input.

    ``clean`` for the clean embeddings; ``negatives`` one entry per generated negative
    (``image``, ``feature``, ``projected`` from the Gaussian generator, ``texture``), in
    the order they were given.
    """

    clean: torch.Tensor
    negatives: dict[str, torch.Tensor]


def foreground_patches(depth: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 1, S, S) depth -> (B, h, w) float: 1 on patches within one patch of the foreground.

    The visible depth is 0 exactly off the object. A sample without any
    foreground keeps every patch, so a failed depth extraction never hides a score.
    """
    foreground = (depth > 0).float()
    patches = F.max_pool2d(F.adaptive_max_pool2d(foreground, grid), 3, stride=1, padding=1).squeeze(1)
    empty = patches.flatten(1).amax(1) == 0
    return torch.where(empty.view(-1, 1, 1), torch.ones_like(patches), patches)


class BridgeNet(nn.Module):
    """Shared-backbone RGB + depth patch discriminator (see module docstring)."""

    def __init__(self, cfg: ModelConfig, weights: str | None = None, announce_random: bool = True) -> None:
        super().__init__()
        self.modalities = tuple(m for m in MODALITIES if m in cfg.modalities)
        self.backbone = Backbone(cfg.backbone, weights or cfg.weights, cfg.layers, announce_random,
                                 cfg.backbone_cpu_batch)
        self.adapter = PatchAdapter(self.backbone.channels, cfg.patch_size, cfg.embed_dim)
        fused = cfg.embed_dim * len(self.modalities)
        self.projection = Projection(fused, cfg.pre_proj_layers)
        self.discriminator = Discriminator(fused, cfg.dsc_hidden, cfg.dsc_layers)
        self.smoothing_sigma = cfg.map_smoothing_sigma
        self.guide_radius = cfg.map_guide_radius
        self.image_score = cfg.image_score
        self.memory_fusion = cfg.memory_fusion
        self.depth_image = DepthImage(cfg.depth_input, cfg.relief_sigma, cfg.relief_gain)
        self.foreground_only = cfg.foreground_only
        self.scorer = cfg.scorer
        self.fusion_weight = cfg.fusion_weight
        self.memory = MemoryBank(self.modalities, cfg.embed_dim)
        # Per score component, (loc, scale) of its values on clean validation patches.
        self.components = ("discriminator", *(f"memory_{m}" for m in self.modalities))
        self.register_buffer("score_loc", torch.zeros(len(self.components)))
        self.register_buffer("score_scale", torch.ones(len(self.components)))
        # 0 for a component that does not vary on clean parts (:meth:`calibrate`), else 1.
        self.register_buffer("score_weight", torch.ones(len(self.components)))
        # Per-modality channel statistics of clean training embeddings, so that the
        # Gaussian generator's noise scales are relative to the features' spread.
        for m in self.modalities:
            self.register_buffer(f"{m}_mean", torch.zeros(1, cfg.embed_dim, 1, 1))
            self.register_buffer(f"{m}_std", torch.ones(1, cfg.embed_dim, 1, 1))
        self._folded: tuple[tuple, torch.Tensor, torch.Tensor] | None = None

    def folded_head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eval only: the projection, the first discriminator Linear and its BatchNorm as one affine map.

        All three are affine at eval time, so their product is exact up to float
        rounding and costs one (hidden x fused) matrix per patch instead of three
        matrices (at the reference's widths about 2.3 times fewer FLOPs). Recomputed
        whenever any of their tensors changed (optimizer step, load, device move).
        """
        linear, norm = self.discriminator.body[0], self.discriminator.body[1]
        tensors = [*self.projection.parameters(), linear.weight, linear.bias,
                   norm.weight, norm.bias, norm.running_mean, norm.running_var]
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._folded is None or self._folded[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                weight, bias = linear.weight.float(), linear.bias.float()
                for layer in reversed(self.projection.layers):  # W (P x + b) = (W P) x + W b
                    bias = bias + weight @ layer.bias.float()
                    weight = weight @ layer.weight.float()
                scale = norm.weight.float() / torch.sqrt(norm.running_var.float() + norm.eps)
                weight = weight * scale[:, None]
                bias = (bias - norm.running_mean.float()) * scale + norm.bias.float()
            self._folded = (key, weight, bias)
        return self._folded[1], self._folded[2]

    def score_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Fused patch rows (N, M * D) -> logits (N,); the folded head in eval mode."""
        if self.training:
            return self.discriminator(self.projection(rows))
        return self.folded_scores(rows, *self.folded_head())

    def folded_scores(self, rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Logits (N,) of fused rows (N, M * D) through the folded head ``weight``, ``bias``."""
        hidden = F.linear(rows, weight.to(rows.dtype), bias.to(rows.dtype))
        return self.discriminator.tail(self.discriminator.body[2:](hidden)).squeeze(-1)

    @torch.no_grad()
    def fit_standardization(self, embeddings: dict[str, torch.Tensor]) -> None:
        """Set each modality's channel mean/std from raw training embeddings (N, D, h, w)."""
        for m in self.modalities:
            raw = embeddings[m].float()
            getattr(self, f"{m}_mean").copy_(raw.mean(dim=(0, 2, 3), keepdim=True))
            getattr(self, f"{m}_std").copy_(raw.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6))

    def standardize(self, modality: str, embedding: torch.Tensor) -> torch.Tensor:
        return (embedding - getattr(self, f"{modality}_mean")) / getattr(self, f"{modality}_std")

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {
            "projection": list(self.projection.parameters()),
            "discriminator": list(self.discriminator.parameters()),
        }

    def backbone_input(self, images: torch.Tensor, modality: str) -> torch.Tensor:
        """One modality's images in [0, 1] -> normalised backbone input (B, 3, H, W).

        rgb (B, 3, H, W) (a grey (B, 1, H, W) image is repeated); depth (B, 1, H, W) becomes
        the image of :class:`DepthImage`.
        """
        if modality == "depth":
            images = self.depth_image(images)
        elif images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.backbone.normalize(images)

    def embed_normalized(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """Normalised backbone input (B, 3, H, W) -> patch embeddings (B, D, H/8, W/8).

        With ``modality``, the embedding is standardised with that modality's statistics.
        """
        with torch.no_grad():
            embedding = self.adapter(self.backbone(x))
        return embedding if modality is None else self.standardize(modality, embedding)

    def embed(self, images: torch.Tensor, modality: str, standardized: bool = True) -> torch.Tensor:
        """One modality's images in [0, 1] -> patch embeddings (B, D, H/8, W/8), standardised
        with that modality's statistics unless ``standardized`` is False."""
        return self.embed_normalized(self.backbone_input(images, modality), modality if standardized else None)

    def embed_inputs(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {m: self.embed(inputs[m], m) for m in self.modalities}

    def fuse(self, embeddings: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-modality (B, D, h, w) -> per-patch rows (B * h * w, M * D)."""
        stacked = torch.cat([embeddings[m] for m in self.modalities], dim=1)
        return stacked.permute(0, 2, 3, 1).reshape(-1, stacked.shape[1])

    def project_patches(self, embeddings: dict[str, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Per-modality (B, D, h, w) -> projected rows (P, M * D) of the ``keep`` (B * h * w,) patches."""
        return self.projection(self.fuse(embeddings)[keep])

    def reembed(
        self, clean: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], touched: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """``clean`` embeddings with the ``touched`` (B,) samples of each modality embedded again.

        ``inputs`` are normalised backbone inputs (B, 3, S, S) per modality (:meth:`backbone_input`);
        only the touched samples go through the frozen backbone.
        """
        out = {}
        for m in self.modalities:
            selected = touched.get(m, torch.zeros(len(inputs[m]), dtype=torch.bool)).to(clean[m].device)
            emb = clean[m].clone()
            if bool(selected.any()):
                emb[selected] = self.embed_normalized(inputs[m][selected], m)
            out[m] = emb
        return out

    def training_logits(self, clean: torch.Tensor, negatives: dict[str, torch.Tensor]) -> TrainingLogits:
        """Projected rows (P, M * D) of the clean patches and of each negative -> their logits.

        One discriminator pass over all rows together (its BatchNorm normalises over
        the whole step), in float32.
        """
        rows = [clean, *negatives.values()]
        logits = self.discriminator(torch.cat(rows)).float()
        parts = torch.split(logits, [len(r) for r in rows])
        return TrainingLogits(parts[0], dict(zip(negatives, parts[1:])))

    @property
    def strides(self) -> list[int]:
        """The backbone's strides per feature level (the coarsest is the smallest input side)."""
        return self.backbone.strides

    @property
    def scorer(self) -> Scorer:
        return self._scorer

    @scorer.setter
    def scorer(self, name: str | Scorer) -> None:
        self._scorer = scorer_named(name)

    def patch_components(
        self, embeddings: dict[str, torch.Tensor], keep: torch.Tensor | None, scorer: Scorer,
        head: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Raw patch scores (P,) of the ``keep`` patches (None: every patch), per component that
        ``scorer`` uses: ``discriminator`` logits, ``memory_<m>`` nearest-neighbour distances.

        ``head``: the folded eval head as given tensors (an export's constants) instead of
        :meth:`folded_head`'s cache. Every patch (``keep`` None) is searched by one matrix
        product, which tracers follow; the kept patches go through the bank's own search.
        """
        out: dict[str, torch.Tensor] = {}
        if scorer.uses_discriminator:
            rows = self.fuse(embeddings)
            rows = rows if keep is None else rows[keep]
            out["discriminator"] = (self.score_rows(rows) if head is None else self.folded_scores(rows, *head)).float()
        if scorer.uses_memory:
            if not self.memory.fitted:
                raise RuntimeError(f"model.scorer={scorer} needs the memory bank, which was never built")
            for m in self.modalities:
                emb = embeddings[m]
                rows = emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])
                out[f"memory_{m}"] = (matmul_nearest(rows.float(), self.memory.bank(m)) if keep is None
                                      else self.memory.distances(m, rows[keep]))
        return out

    def standardized(self, name: str, values: torch.Tensor) -> torch.Tensor:
        i = self.components.index(name)
        return (values - self.score_loc[i]) / self.score_scale[i] * self.score_weight[i]

    def kept_patches(self, depth: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B * h * w,) bool: the patches that are scored (all, unless ``foreground_only``)."""
        if self.foreground_only:
            return foreground_patches(depth.float(), grid).flatten() > 0
        return torch.ones(depth.shape[0] * grid[0] * grid[1], dtype=torch.bool, device=depth.device)

    @torch.no_grad()
    def calibrate(self, components: dict[str, torch.Tensor], sample: torch.Tensor) -> dict[str, float]:
        """Set each component's (loc, scale) from its raw scores on clean validation patches.

        ``components`` as from :meth:`patch_components`, ``sample`` (P,) the index of the
        image each patch belongs to. loc is the mean clean patch; scale is how far above it
        a clean image's highest patch lies on average. So 1 means "as high as the worst patch
        of a typical good part" in every component, whatever the shape of its tail: a
        modality with many outlying clean patches does not drown the others when fused.

        A component whose clean peaks sit within float rounding of its mean (the memory
        distances of a modality that shows nothing, such as depth where every point cloud is
        a flat stand-in) carries no information: its weight is set to 0, so it adds nothing
        instead of rounding noise blown up by a tiny scale.
        """
        out = {}
        n = int(sample.max()) + 1
        for name, values in components.items():
            i = self.components.index(name)
            values = values.float()
            loc = values.mean()
            peaks = torch.full((n,), -torch.inf, device=values.device).scatter_reduce(0, sample, values, "amax")
            spread = peaks.mean() - loc
            # distances in the standardised embedding grow with sqrt(width); logits are plain numbers
            floor = 1e-3 * (self.adapter.embed_dim ** 0.5 if name.startswith("memory_") else 1.0)
            self.score_loc[i] = loc
            self.score_scale[i] = spread.clamp_min(1e-6)
            self.score_weight[i] = float(spread > floor)
            if spread <= floor:
                LOGGER.warning("score component %s does not vary on clean validation parts (spread %.3g): "
                               "it is left out of the score", name, float(spread))
            out[f"{name}_loc"], out[f"{name}_scale"] = float(self.score_loc[i]), float(self.score_scale[i])
            out[f"{name}_weight"] = float(self.score_weight[i])
        return out

    def forward(self, rgb: torch.Tensor, depth: torch.Tensor, scorer: str | Scorer | None = None,
                dense: bool = False, head: tuple[torch.Tensor, torch.Tensor] | None = None) -> ScoreResult:
        """rgb (B, 3, S, S) and depth (B, 1, S, S) in [0, 1] -> scores and maps at S x S.

        ``scorer`` overrides ``self.scorer`` for this call. Only the scored patches go through
        the heads, unless ``dense``: then every patch does and the ones off the object are
        masked afterwards (same numbers, no data-dependent shapes: what an export traces).
        """
        scorer = self.scorer if scorer is None else scorer_named(scorer)
        embeddings = self.embed_inputs({"rgb": rgb, "depth": depth})
        b, _, h, w = embeddings[self.modalities[0]].shape
        # the patches not scored get the sample's lowest score (:meth:`result_from_patches`)
        keep = self.kept_patches(depth, (h, w))
        if dense:
            patch = scorer.combine(self, self.patch_components(embeddings, None, scorer, head))
            scores = torch.where(keep.view(b * h * w), patch, torch.inf) if self.foreground_only else patch
        else:
            patch = scorer.combine(self, self.patch_components(embeddings, keep, scorer, head))
            scores = torch.full((b * h * w,), torch.inf, device=patch.device)
            scores[keep] = patch
        guide = rgb if "rgb" in self.modalities else depth
        return self.result_from_patches(scores.view(b, h, w), scorer, guide)

    def result_from_patches(self, scores: torch.Tensor, scorer: Scorer, guide: torch.Tensor) -> ScoreResult:
        """Patch scores (B, h, w), ``inf`` on the patches not scored -> image scores and S x S maps,
        S the side of ``guide`` (B, C, S, S), the RGB input (the depth input without RGB).

        The patches not scored get the sample's lowest score (0 for probabilities); maps are
        upsampled bilinearly and smoothed. The image score is the smoothed map's peak
        (``image_score: map_max``): one hot patch on a good part (a glint, a sensor hole) is
        spread over its neighbours and falls, while a defect spanning a few patches keeps its
        level; ``patch_max`` takes the highest patch as it is. The map is then raised where
        ``guide`` shows a high region going on (``map_guide_radius``,
        :func:`bridgenet.model.maps.guided_raise`): it reaches more of a defect's outline, and
        the image score does not move.
        """
        size = (int(guide.shape[-2]), int(guide.shape[-1]))
        lowest = scores.flatten(1).amin(1).view(-1, 1, 1)
        fill = torch.zeros_like(lowest) if scorer.probability else lowest  # sigmoid(-inf) = 0
        unscored = torch.isinf(scores)
        scores = torch.where(unscored, fill, scores)
        maps = F.interpolate(scores.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        maps = gaussian_blur(maps.squeeze(1), self.smoothing_sigma)
        peak = maps if self.image_score == "map_max" else scores
        raised = maps
        if self.guide_radius > 0:  # raised on the scored patches only: off the object the map stays the floor
            scored = F.interpolate((~unscored).float().unsqueeze(1), size=size, mode="nearest").squeeze(1) > 0
            raised = torch.where(scored, guided_raise(guide, maps, self.guide_radius), maps)
        return ScoreResult(pred_score=peak.flatten(1).amax(dim=1), anomaly_map=raised)
