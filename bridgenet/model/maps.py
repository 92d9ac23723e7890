"""Anomaly-map refinement: the smoothed map raised where the input image says a high region goes on.

The heads score patches on a stride-8 grid whose embeddings each see a 3 x 3 neighbourhood,
so after upsampling and smoothing a defect's high region is a blurred blob: it covers the
defect's core and misses part of its rim. :func:`guided_raise` takes the larger of the map
and its guided filter (He, Sun and Tang, "Guided Image Filtering", ECCV 2010) by the
network's input image: within each window the filter fits the map as a linear function of
the image's channels, so where the image shows the high region's colour going on, the
filtered map goes on with it up to the defect's outline. Taking the larger of the two only
ever raises the map, and never above its own peak, so a good part whose map is flat gains
nothing and no pixel scores above its sample's image score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GUIDE_EPS = 1e-4  # the filter's regulariser, in squared guide units (images in [0, 1])
GUIDE_STEP = 4  # the fast filter's block side: the local models are fitted at a quarter of the side


def _window_sums(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """Sums of ``x`` along ``dim`` over the window i - radius .. i + radius, clipped at both ends:
    one cumulative sum, then differences of two shifted slices of it."""
    n = x.shape[dim]
    sums = x.cumsum(dim)
    shape = list(x.shape)
    shape[dim] = radius + 1
    padded = torch.cat([sums.new_zeros(shape), sums, sums.narrow(dim, n - 1, 1).expand(
        *[radius if d == dim % x.dim() else -1 for d in range(x.dim())])], dim)
    return padded.narrow(dim, 2 * radius + 1, n) - padded.narrow(dim, 0, n)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean of (..., H, W) ``x`` over the (2 radius + 1)^2 window around each pixel, the window
    clipped at the border (each mean over the pixels it holds). The cost does not grow with the
    radius, and sums run along single rows and columns, so they stay small."""
    height, width = x.shape[-2:]
    counts = _window_sums(x.new_ones(height, 1), radius, 0) * _window_sums(x.new_ones(1, width), radius, 1)
    return _window_sums(_window_sums(x, radius, -1), radius, -2) / counts


def _solve(var: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
    """Per pixel, (var + eps) a = cov for a guide of 1 or 3 channels: ``var`` (B, C, C, H, W)
    symmetric, ``cov`` (B, C, H, W) -> a (B, C, H, W). 3 x 3 by the adjugate (a closed form
    that a traced graph keeps)."""
    if var.shape[1] == 1:
        return cov / (var[:, 0] + GUIDE_EPS)
    a, b, c = var[:, 0, 0] + GUIDE_EPS, var[:, 0, 1], var[:, 0, 2]
    d, e, f = var[:, 1, 1] + GUIDE_EPS, var[:, 1, 2], var[:, 2, 2] + GUIDE_EPS
    adj = ((d * f - e * e, c * e - b * f, b * e - c * d),
           (c * e - b * f, a * f - c * c, b * c - a * e),
           (b * e - c * d, b * c - a * e, a * d - b * b))
    det = a * adj[0][0] + b * adj[0][1] + c * adj[0][2]
    return torch.stack([sum(adj[i][j] * cov[:, j] for j in range(3)) for i in range(3)], 1) / det[:, None]


def guided_filter(guide: torch.Tensor, maps: torch.Tensor, radius: int, step: int = 1) -> torch.Tensor:
    """Maps (B, H, W) filtered by ``guide`` (B, C, H, W), C = 1 or 3, window radius ``radius``.

    ``step`` > 1: the fast guided filter (He and Sun, 2015): the local linear model is fitted on
    guide and map averaged over ``step`` x ``step`` pixels (radius / step), its coefficients
    upsampled bilinearly and applied to the full-size guide; ``step``^2 times less work for
    maps as smooth as ours.
    """
    if guide.shape[1] not in (1, 3):
        raise ValueError(f"guided_filter: a guide of 1 or 3 channels, got {guide.shape[1]}")
    full = guide
    if step > 1:
        # block means (ceil_mode: a last, partial block is the mean of the pixels it holds)
        guide = F.avg_pool2d(guide, step, ceil_mode=True)
        maps = F.avg_pool2d(maps.unsqueeze(1), step, ceil_mode=True).squeeze(1)
        radius = max(1, round(radius / step))
    p = maps.unsqueeze(1)
    channels = guide.shape[1]
    mean_i, mean_p = box_mean(guide, radius), box_mean(p, radius)
    cov = box_mean(guide * p, radius) - mean_i * mean_p
    pairs = [(i, j) for i in range(channels) for j in range(i, channels)]
    second = box_mean(torch.stack([guide[:, i] * guide[:, j] for i, j in pairs], 1), radius)
    var = [[None] * channels for _ in range(channels)]
    for k, (i, j) in enumerate(pairs):
        var[i][j] = var[j][i] = second[:, k] - mean_i[:, i] * mean_i[:, j]
    a = _solve(torch.stack([torch.stack(row, 1) for row in var], 1), cov)
    b = mean_p - (a * mean_i).sum(1, keepdim=True)
    coefficients = box_mean(torch.cat([a, b], 1), radius)
    if step > 1:
        coefficients = F.interpolate(coefficients, size=full.shape[-2:], mode="bilinear", align_corners=False)
    return (coefficients[:, :channels] * full).sum(1) + coefficients[:, channels]


def guided_raise(guide: torch.Tensor, maps: torch.Tensor, radius: int) -> torch.Tensor:
    """The larger of ``maps`` (B, H, W) and their (fast, :data:`GUIDE_STEP`) guided filter by
    ``guide`` (B, C, H, W) at ``radius`` input pixels, capped at each map's peak; ``maps`` as
    they are at radius 0."""
    if radius <= 0:
        return maps
    raised = torch.maximum(maps, guided_filter(guide.to(maps.dtype), maps, radius, GUIDE_STEP))
    # a local linear fit overshoots where the image barely varies: never above the map's own peak,
    # so that no pixel scores above its sample's image score
    return torch.minimum(raised, maps.flatten(1).amax(1).view(-1, 1, 1))
