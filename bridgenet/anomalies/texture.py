"""Unified Texture Anomaly Generator: Perlin regions on the foreground filled with blended texture.

Beyond the paper, a region's blend may fade out beyond its rim (``soft_edge_prob``), the label
covering the fade: real stains and worn spots have no crisp outline. A sample without any
foreground (no point cloud, a flat part) gets its regions where its colour image has structure
(:func:`structured`), the part rather than the plain backdrop around it.

All per-step work is tensor indexing on the training device: Perlin masks and
resized textures are drawn once into banks when the generator is built.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from bridgenet.anomalies.perlin import perlin_mask
from bridgenet.anomalies.textures import load_textures
from bridgenet.config import TextureConfig

MODALITY_CHOICES = ("rgb", "depth", "both")
SOFT_EDGE_LABEL = 0.1  # a softened region's label: where its blend weight reaches this


def _dihedral(images: torch.Tensor) -> torch.Tensor:
    """All 8 flips/rotations of (K, ..., S, S) stacked to (8K, ..., S, S)."""
    views = []
    for flipped in (images, images.flip(-1)):
        views += [torch.rot90(flipped, k, dims=(-2, -1)) for k in range(4)]
    return torch.cat(views)


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, 1, H, W) blurred with a Gaussian of ``sigma`` pixels (radius 3 sigma, reflected borders).

    The values of torchvision's ``gaussian_blur``, which convolves with the full square kernel;
    here each axis is one product with the blur's banded matrix: 5 ms instead of 160 ms for a
    batch of 8 at 256 px and sigma 6 on one CPU thread.
    """
    radius = int(np.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()

    def along(n: int) -> torch.Tensor:  # (n, n): output i = sum_j matrix[i, j] * input j
        if radius >= n:
            raise ValueError(f"soft edges: blur radius {radius} px does not fit an image side of {n} px")
        rows = torch.arange(n, device=images.device).view(n, 1).expand(n, len(kernel))
        cols = (rows + torch.arange(-radius, radius + 1, device=images.device)).abs()  # reflected at 0 ...
        cols = torch.where(cols > n - 1, 2 * (n - 1) - cols, cols)  # ... and at n - 1
        matrix = torch.zeros(n, n, dtype=images.dtype, device=images.device)
        return matrix.index_put_((rows, cols), kernel.expand(n, -1), accumulate=True)

    return along(images.shape[-2]) @ images @ along(images.shape[-1]).T


def structured(rgb: torch.Tensor) -> torch.Tensor:
    """(B, S, S) bool: where each (B, 3, S, S) image has local structure, the part rather than a
    plain backdrop; the whole image where it has none.

    The grey image's gradient magnitude, blurred over 1/32 of the side, above its Otsu
    threshold (scikit-image's; no setting to choose). Where a scan gives no foreground, this
    is where anomalies go: spread over the whole frame, most would land on the backdrop, which
    teaches the discriminator little about the part (docs/benchmarks.md, "Without point clouds").
    """
    from skimage.filters import threshold_otsu

    grey = rgb.float().mean(1, keepdim=True)
    dx = (grey[..., :, 1:] - grey[..., :, :-1]).abs()
    dy = (grey[..., 1:, :] - grey[..., :-1, :]).abs()
    energy = F.pad(dx, (0, 1)) + F.pad(dy, (0, 0, 0, 1))
    energy = _gaussian_blur(energy, max(1.0, rgb.shape[-1] / 32))[:, 0]
    out = []
    for e in energy.cpu().numpy():
        mask = e > threshold_otsu(e) if e.max() > e.min() else np.ones_like(e, bool)
        out.append(mask if mask.any() else np.ones_like(e, bool))
    return torch.from_numpy(np.stack(out)).to(rgb.device)


def placement(foreground: torch.Tensor, rgb: torch.Tensor) -> torch.Tensor:
    """(B, S, S) bool where anomalies may go: the foreground, or, in a sample without any,
    where its colour image has structure (:func:`structured`, computed for those samples only)."""
    allowed = foreground.to(torch.bool).clone()
    empty = ~allowed.flatten(1).any(1)
    if bool(empty.any()):
        allowed[empty] = structured(rgb[empty])
    return allowed


def choose_modalities(
    batch: int, probs: tuple[float, float, float], modalities: tuple[str, ...], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Which samples each modality's perturbation touches: {modality: (B,) bool}.

    Draws rgb-only / depth-only / both with ``probs``; with one modality
    present, every sample perturbs that one.
    """
    if len(modalities) == 1:
        return {modalities[0]: torch.ones(batch, dtype=torch.bool)}
    choice = torch.multinomial(torch.tensor(probs), batch, replacement=True, generator=generator)
    return {"rgb": choice != 1, "depth": choice != 0}


class TextureAnomalyGenerator:
    """Blend textures into Perlin regions of the foreground.

    ``__call__(rgb (B,3,S,S), depth (B,1,S,S), foreground (B,S,S) bool, generator)``
    returns perturbed rgb, perturbed depth, the region mask (B, S, S) float and
    {modality: (B,) bool} telling which samples each modality's change touched.
    """

    def __init__(
        self,
        cfg: TextureConfig,
        image_size: int,
        modalities: tuple[str, ...],
        rng: np.random.Generator,
        n_masks: int = 48,
        device: torch.device | str = "cpu",
        n_flat: int = 32,
    ) -> None:
        if n_masks < 1:
            raise ValueError(f"n_masks must be >= 1, got {n_masks}")
        if n_flat < 0:
            raise ValueError(f"n_flat must be >= 0, got {n_flat}")
        self.cfg = cfg
        self.modalities = modalities
        masks = np.stack([
            perlin_mask(image_size, rng, cfg.perlin_min_scale, cfg.perlin_max_scale, cfg.threshold)
            for _ in range(n_masks)
        ])
        self.masks = _dihedral(torch.from_numpy(masks)).to(device)  # (8M, S, S) bool
        textures = torch.from_numpy(load_textures(cfg.source, image_size, rng)).permute(0, 3, 1, 2)
        # Flat random colours beside the textures: a stain or discolouration has no texture,
        # and in depth a flat fill is a plateau, i.e. a dent or bump with a crisp rim.
        flat = torch.from_numpy(rng.uniform(0.0, 1.0, (n_flat, 3, 1, 1)).astype(np.float32))
        flat = flat.expand(-1, -1, image_size, image_size)
        self.textures = torch.cat([_dihedral(textures), flat]).to(device)  # (8K + n_flat, 3, S, S)

    def regions(self, allowed: torch.Tensor, generator: torch.Generator, tries: int = 8) -> torch.Tensor:
        """(B, S, S) bool Perlin regions inside ``allowed`` (:func:`placement`); the first
        non-empty of ``tries`` draws."""
        b = allowed.shape[0]
        picks = torch.randint(len(self.masks), (b, tries), generator=generator).to(self.masks.device)
        candidates = self.masks[picks] & allowed.unsqueeze(1)  # (B, tries, S, S)
        non_empty = candidates.flatten(2).any(-1)  # (B, tries)
        first = torch.where(non_empty.any(1), non_empty.float().argmax(1), torch.zeros_like(picks[:, 0]))
        return candidates[torch.arange(b, device=allowed.device), first]

    def __call__(
        self, rgb: torch.Tensor, depth: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        b, device = rgb.shape[0], rgb.device
        allowed = placement(foreground, rgb)
        region = self.regions(allowed, generator).to(rgb.dtype)
        texture = self.textures[torch.randint(len(self.textures), (b,), generator=generator).to(device)]
        beta = torch.normal(self.cfg.beta_mean, self.cfg.beta_std, (b,), generator=generator)
        beta = beta.clamp(self.cfg.beta_min, self.cfg.beta_max).to(device).view(b, 1, 1, 1)
        touched = choose_modalities(b, self.cfg.modality_probs, self.modalities, generator)
        m = region.unsqueeze(1)
        if self.cfg.soft_edge_prob > 0:
            m, region = self.soften(m, allowed, generator)
        out = {"rgb": rgb, "depth": depth}
        sources = {"rgb": texture, "depth": texture.mean(dim=1, keepdim=True)}
        for name, selected in touched.items():
            weight = m * selected.to(device).view(b, 1, 1, 1)
            blended = (1 - beta) * sources[name] + beta * out[name]
            out[name] = out[name] * (1 - weight) + blended * weight
        return out["rgb"], out["depth"], region, touched

    def soften(
        self, m: torch.Tensor, allowed: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, S, S) blend weights and (B, S, S) labels of regions ``m`` (B, 1, S, S).

        A share ``soft_edge_prob`` of the samples gets a halo: the blend fades out beyond the
        region's rim over about two sigma (sigma drawn in [1, ``soft_edge_px``] pixels), on the
        ``allowed`` part only, as a stain or a worn spot fades into the surface around it; its label
        then covers the halo where the blend weight is at least SOFT_EDGE_LABEL. The rest stay crisp.
        """
        b = m.shape[0]
        soft = (torch.rand(b, generator=generator) < self.cfg.soft_edge_prob).to(m.device).view(b, 1, 1, 1)
        sigma = 1.0 + float(torch.rand(1, generator=generator)) * (self.cfg.soft_edge_px - 1.0)
        halo = (2 * _gaussian_blur(m, sigma)).clamp(0, 1)
        halo = torch.maximum(halo * allowed.unsqueeze(1).to(m.dtype), m)
        weights = torch.where(soft, halo, m)
        return weights, (weights >= SOFT_EDGE_LABEL).squeeze(1).to(m.dtype)


def mask_to_grid(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, S, S) mask -> (B, h, w) patch labels: a patch is anomalous if any pixel is."""
    return F.adaptive_max_pool2d(mask.unsqueeze(1).float(), grid).squeeze(1)
