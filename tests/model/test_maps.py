"""The guided map: box means, the guided filter against its definition, and what raising a map does."""

from __future__ import annotations

import pytest
import torch

from bridgenet.model.maps import GUIDE_EPS, box_mean, guided_filter, guided_raise


def _window(x: torch.Tensor, y: int, z: int, r: int) -> torch.Tensor:
    return x[..., max(0, y - r):y + r + 1, max(0, z - r):z + r + 1]


def test_box_means_are_the_means_of_the_clipped_windows():
    x = torch.rand(2, 3, 9, 13, generator=torch.Generator().manual_seed(0))
    means = box_mean(x, 2)
    for y, z in [(0, 0), (4, 6), (8, 12), (0, 7), (5, 0)]:
        assert torch.allclose(means[..., y, z], _window(x, y, z, 2).mean((-1, -2)), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_the_guided_filter_averages_the_local_ridge_fits_of_the_map_on_the_guide(channels):
    """He et al.'s definition: in every window, the map as a linear function of the guide's
    channels (ridge GUIDE_EPS); each pixel the mean of the fits of the windows it lies in."""
    gen = torch.Generator().manual_seed(1)
    guide, maps, r = torch.rand(1, channels, 8, 8, generator=gen), torch.rand(1, 8, 8, generator=gen), 2
    fits = {}
    for y in range(8):
        for z in range(8):
            g = _window(guide[0], y, z, r).reshape(channels, -1)
            p = _window(maps[0], y, z, r).reshape(-1)
            n = g.shape[1]
            gc, pc = g - g.mean(1, keepdim=True), p - p.mean()
            a = torch.linalg.solve(gc @ gc.T / n + GUIDE_EPS * torch.eye(channels), gc @ pc / n)
            fits[y, z] = (a, p.mean() - a @ g.mean(1))
    expected = torch.empty(8, 8)
    for y in range(8):
        for z in range(8):
            around = [fits[v, w] for v in range(max(0, y - r), min(8, y + r + 1))
                      for w in range(max(0, z - r), min(8, z + r + 1))]
            expected[y, z] = sum(a @ guide[0, :, y, z] + b for a, b in around) / len(around)
    assert torch.allclose(guided_filter(guide, maps, r)[0], expected, atol=1e-4)


def test_raising_a_map_along_the_image_reaches_a_stain_rim_and_leaves_the_rest():
    """A dark disc (a stain) on a grey part; the map, as the heads give it, a blob on the disc's
    core. Raised along the image it covers more of the disc's rim, gains nothing on the part
    away from the disc, and never falls anywhere."""
    side, radius = 128, 30
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    distance = ((yy - 64) ** 2 + (xx - 64) ** 2).float().sqrt()
    disc = distance <= radius
    guide = torch.where(disc, 0.2, 0.6).expand(1, 3, side, side).clone()
    maps = torch.exp(-(distance / 18) ** 2)[None]  # high at the core, half way down inside the rim
    raised = guided_raise(guide, maps, 16)
    assert bool((raised >= maps).all()) and float(raised.max()) <= float(maps.max())  # never above the peak
    rim = disc & (distance > radius - 6)
    assert float(raised[0][rim].mean()) > float(maps[0][rim].mean()) + 0.1
    far = distance > radius + 24
    assert torch.allclose(raised[0][far], maps[0][far], atol=0.02)
    assert torch.equal(guided_raise(guide, maps, 0), maps)


def test_a_flat_image_and_a_flat_map_are_left_as_they_are():
    maps = torch.full((2, 64, 64), 0.3)
    assert torch.allclose(guided_raise(torch.full((2, 3, 64, 64), 0.5), maps, 16), maps, atol=1e-5)


def test_a_map_is_never_raised_above_its_own_peak_where_the_filter_overshoots():
    gen = torch.Generator().manual_seed(3)
    guide = 0.5 + 0.01 * torch.rand(4, 3, 96, 96, generator=gen)  # an image that barely varies
    maps = torch.rand(4, 96, 96, generator=gen)
    raised = guided_raise(guide, maps, 16)
    assert torch.equal(raised.flatten(1).amax(1), maps.flatten(1).amax(1)) and bool((raised >= maps).all())
