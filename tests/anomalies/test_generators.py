"""Both anomaly generators: regions on the foreground, blending, modality choice, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bridgenet.anomalies.gaussian import GaussianAnomalyGenerator
from bridgenet.anomalies.perlin import perlin_mask
from bridgenet.anomalies.texture import (
    SOFT_EDGE_LABEL,
    TextureAnomalyGenerator,
    choose_modalities,
    mask_to_grid,
    structured,
)
from bridgenet.anomalies.textures import load_textures
from bridgenet.config import GaussianConfig, TextureConfig

S = 64


@pytest.fixture(scope="module")
def texture_gen() -> TextureAnomalyGenerator:
    """The paper's generator: crisp regions (soft edges: test_soft_edges_...)."""
    return TextureAnomalyGenerator(
        TextureConfig(soft_edge_prob=0.0), S, ("rgb", "depth"), np.random.default_rng(0), n_masks=8
    )


def _batch(b: int = 6):
    rgb = torch.full((b, 3, S, S), 0.5)
    depth = torch.full((b, 1, S, S), 0.25)
    foreground = torch.zeros(b, S, S, dtype=torch.bool)
    foreground[:, 16:48, 16:48] = True
    return rgb, depth, foreground


def test_perlin_mask_is_binary_non_empty_and_seeded():
    a = perlin_mask(S, np.random.default_rng(3))
    b = perlin_mask(S, np.random.default_rng(3))
    assert a.dtype == bool and a.any() and not a.all()
    np.testing.assert_array_equal(a, b)


def test_texture_regions_fall_on_the_foreground_only(texture_gen):
    rgb, depth, fg = _batch()
    out_rgb, out_depth, region, touched = texture_gen(rgb, depth, fg, torch.Generator().manual_seed(0))
    assert region.shape == (6, S, S)
    assert (region.bool() & ~fg).sum() == 0
    assert region.flatten(1).any(1).all()
    changed = (out_rgb != rgb).any(1) | (out_depth != depth).any(1)
    assert (changed & ~region.bool()).sum() == 0  # nothing changes outside the region
    for i in range(6):
        # Each sample changed exactly the modalities it was told it touched.
        assert bool((out_rgb[i] != rgb[i]).any()) == bool(touched["rgb"][i])
        assert bool((out_depth[i] != depth[i]).any()) == bool(touched["depth"][i])
        assert touched["rgb"][i] or touched["depth"][i]


def test_blend_weight_follows_the_clipped_beta(texture_gen):
    rgb, depth, fg = _batch(32)
    _, out_depth, region, touched = texture_gen(rgb, depth, fg, torch.Generator().manual_seed(1))
    for i in torch.nonzero(touched["depth"]).flatten().tolist():
        inside = region[i].bool()
        # out = beta * x + (1 - beta) * texture with beta in [0.2, 0.8]
        texture = texture_gen.textures  # any texture value lies in [0, 1]
        assert texture.min() >= 0 and texture.max() <= 1
        values = out_depth[i, 0][inside]
        assert values.min() >= 0.2 * 0.25 - 1e-6 and values.max() <= 0.2 * 0.25 + 0.8 + 1e-6


def test_same_seed_same_anomalies(texture_gen):
    rgb, depth, fg = _batch()
    a = texture_gen(rgb, depth, fg, torch.Generator().manual_seed(5))
    b = texture_gen(rgb, depth, fg, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[2], b[2])


def test_a_sample_without_foreground_gets_its_anomaly_anywhere_on_the_image(texture_gen):
    rgb, depth, fg = _batch(4)
    fg[2:] = False  # samples 2 and 3: a flat part, plane removal left nothing
    out_rgb, out_depth, region, _ = texture_gen(rgb, depth, fg, torch.Generator().manual_seed(0))
    assert region.flatten(1).any(1).all()
    assert (region[:2].bool() & ~fg[:2]).sum() == 0  # the others stay on their foreground
    outside = torch.ones(S, S, dtype=torch.bool)
    outside[16:48, 16:48] = False
    assert (region[2:].bool() & outside).any()  # not confined to where an object would be
    changed = (out_rgb != rgb).any(1) | (out_depth != depth).any(1)
    assert changed[2:].flatten(1).any(1).all()


def test_without_a_foreground_anomalies_go_where_the_colour_image_has_structure(texture_gen):
    """A scan without point clouds: a textured part on a plain, noisy dark backdrop. The
    regions fall on the part (within the structure's blur), never far out on the backdrop;
    an image without any structure still takes its anomaly anywhere."""
    gen = torch.Generator().manual_seed(0)
    b = 16
    rgb = 0.03 + 0.01 * torch.rand(b, 3, S, S, generator=gen)  # near-black backdrop, sensor noise
    stripes = (torch.arange(S) // 2 % 2).float().view(1, 1, 1, S).expand(b, 3, 20, S)
    rgb[:, :, 30:50, :] = 0.4 + 0.3 * stripes  # a treaded part: rows 30-49, the full width
    part = torch.zeros(S, S, dtype=torch.bool)
    part[30:50] = True
    mask = structured(rgb)
    assert mask.shape == (b, S, S) and mask[:, 30:50].float().mean() > 0.9
    near = torch.zeros(S, S, dtype=torch.bool)
    near[30 - 6:50 + 6] = True  # the part grown by three blur sigmas (S / 32 = 2 px)
    assert not (mask & ~near).any()
    depth, empty = torch.zeros(b, 1, S, S), torch.zeros(b, S, S, dtype=torch.bool)
    _, _, region, _ = texture_gen(rgb, depth, empty, torch.Generator().manual_seed(1))
    assert region.flatten(1).any(1).all() and not (region.bool() & ~near).any()
    assert (region.bool() & part).sum() > 0.75 * region.sum()  # the part is 31 % of the frame
    assert structured(torch.full((2, 3, S, S), 0.5)).all()  # nothing to tell part from backdrop


def test_modality_choice_frequencies():
    picks = choose_modalities(30000, (0.2, 0.3, 0.5), ("rgb", "depth"), torch.Generator().manual_seed(0))
    rgb_only = (picks["rgb"] & ~picks["depth"]).float().mean()
    depth_only = (picks["depth"] & ~picks["rgb"]).float().mean()
    assert abs(rgb_only - 0.2) < 0.02 and abs(depth_only - 0.3) < 0.02
    single = choose_modalities(5, (1 / 3, 1 / 3, 1 / 3), ("depth",), torch.Generator())
    assert list(single) == ["depth"] and single["depth"].all()


def test_gaussian_levels_have_the_configured_std():
    gen = GaussianAnomalyGenerator(GaussianConfig(sigma=0.05), ("rgb", "depth"))
    x = torch.zeros(200, 3, 32, 32)
    for level, scale in zip(("image", "feature", "projected"), (6, 2, 1)):
        std = float(gen.noise(x, level, torch.Generator().manual_seed(0)).std())
        assert abs(std - 0.05 * scale) < 0.01 * scale


def test_mask_to_grid_marks_any_touched_patch():
    mask = torch.zeros(1, 16, 16)
    mask[0, 0, 9] = 1
    grid = mask_to_grid(mask, (2, 2))
    torch.testing.assert_close(grid, torch.tensor([[[0.0, 1.0], [0.0, 0.0]]]))


def test_texture_sources(tmp_path):
    bundled = load_textures("bundled", 32, np.random.default_rng(0))
    assert bundled.shape[1:] == (32, 32, 3) and len(bundled) >= 10
    assert 0 <= bundled.min() and bundled.max() <= 1
    folder = tmp_path / "dtd" / "images" / "banded"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / "a.jpg")
    assert load_textures(str(tmp_path / "dtd"), 16, np.random.default_rng(0)).shape == (1, 16, 16, 3)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        load_textures(str(tmp_path / "missing"), 16, np.random.default_rng(0))
    (folder / "b.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="b.png"):
        load_textures(str(tmp_path / "dtd"), 16, np.random.default_rng(0))


def test_texture_bank_holds_flat_colours_besides_textures():
    gen = TextureAnomalyGenerator(TextureConfig(), S, ("rgb",), np.random.default_rng(0), n_masks=2, n_flat=5)
    spread = gen.textures.flatten(2).std(-1).amax(-1)  # (K,) largest per-channel spread
    assert (spread == 0).sum() == 5
    with pytest.raises(ValueError, match="n_flat"):
        TextureAnomalyGenerator(TextureConfig(), S, ("rgb",), np.random.default_rng(0), n_flat=-1)


def test_soft_edges_fade_beyond_the_region_and_label_the_halo(texture_gen):
    rgb, depth, fg = _batch(16)
    soft_gen = TextureAnomalyGenerator(
        TextureConfig(soft_edge_prob=1.0, soft_edge_px=4.0), S, ("rgb", "depth"), np.random.default_rng(0), n_masks=8
    )
    _, _, crisp, _ = texture_gen(rgb, depth, fg, torch.Generator().manual_seed(2))
    out_rgb, out_depth, soft, touched = soft_gen(rgb, depth, fg, torch.Generator().manual_seed(2))
    crisp, soft = crisp.bool(), soft.bool()
    assert (crisp & ~soft).sum() == 0  # the halo adds to the region, never takes from it
    # samples whose region is more than a speck and leaves some foreground free
    room = (fg & ~crisp).flatten(1).any(1) & (crisp.flatten(1).sum(1) >= 16)
    assert room.sum() >= 8
    assert (soft & ~crisp).flatten(1).any(1)[room].all()  # each of those got a halo ...
    assert (soft & ~fg).sum() == 0  # ... on the foreground only
    # outside the label the blend weight is below SOFT_EDGE_LABEL: a change of at most
    # 0.1 x (1 - beta_min) x the largest texture-to-input difference (0.75 here)
    change = torch.maximum((out_rgb - rgb).abs().amax(1), (out_depth - depth).abs()[:, 0])
    assert change[~soft].max() < SOFT_EDGE_LABEL * 0.8 * 0.75
    assert change[~fg].max() == 0
    halo = soft & ~crisp
    # the halo fades: its change is weaker than the region's on a flat input, and the label
    # covers only where the blend still shows
    for i in torch.nonzero(touched["depth"]).flatten().tolist():
        delta = (out_depth[i, 0] - depth[i, 0]).abs()
        if halo[i].any() and delta[crisp[i]].max() > 0.05:
            assert delta[halo[i]].mean() < delta[crisp[i]].mean()
            assert delta[halo[i]].max() > 0


@pytest.mark.parametrize("sigma", [1.0, 2.7, 6.0])
def test_the_soft_edges_blur_equals_torchvision_s(sigma):
    from torchvision.transforms.v2.functional import gaussian_blur

    from bridgenet.anomalies.texture import _gaussian_blur

    images = (torch.rand(3, 1, 48, 40, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    size = 2 * int(np.ceil(3 * sigma)) + 1
    torch.testing.assert_close(_gaussian_blur(images, sigma), gaussian_blur(images, [size, size], [sigma, sigma]))
    with pytest.raises(ValueError, match="radius"):
        _gaussian_blur(images[..., :8, :8], 6.0)
