"""The three scorers on a trained model: memory bank and calibration saved, faint defects, flat parts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from scipy.ndimage import binary_dilation, distance_transform_edt

from bridgenet.data.crop import crop
from bridgenet.model.io import load_model, save_model
from bridgenet.model.scorers import MEMORY, SCORERS
from tests.conftest import tiny_params


@pytest.fixture(scope="module")
def trained(trained_bagel):
    return trained_bagel


def test_training_builds_the_bank_from_foreground_patches_and_calibrates_every_component(trained):
    _, summary, model = trained
    net = model.network
    memory = summary.memory
    for m in net.modalities:
        assert 0 < memory[f"{m}_bank"] <= memory[f"{m}_candidates"]
        assert net.memory.bank(m).shape == (memory[f"{m}_bank"], net.adapter.embed_dim)
    # 12 training samples on a 12 x 12 grid: the foreground rule keeps only part of the 1728 patches
    assert memory["rgb_candidates"] < 12 * 12 * 12
    calibration = summary.calibration
    assert set(calibration) == {f"{c}_{s}" for c in net.components for s in ("loc", "scale", "weight")}
    assert all(calibration[f"{c}_scale"] > 0 and calibration[f"{c}_weight"] == 1 for c in net.components)


def _scores(model, split, scorer):
    from bridgenet.evaluate import score_split

    model.network.scorer = scorer
    return score_split(model, split, 4, torch.device("cpu"))[:2]


def test_a_saved_and_reloaded_model_scores_identically_in_every_mode(trained, tmp_path):
    from bridgenet.evaluate import load_test_split

    params, _, model = trained
    split = load_test_split(params, "bagel")
    reloaded_path = tmp_path / "model.pt"
    save_model(model, reloaded_path)
    reloaded = load_model(reloaded_path)
    for scorer in SCORERS:
        scores, maps = _scores(model, split, scorer)
        again, again_maps = _scores(reloaded, split, scorer)
        np.testing.assert_array_equal(scores, again)
        np.testing.assert_array_equal(maps, again_maps)
    # Scorers differ: memory distances are not the discriminator's probabilities.
    assert not np.allclose(_scores(model, split, "memory")[0], _scores(model, split, "discriminator")[0])
    model.network.scorer = params.model.scorer


def faint_stain(rgb: np.ndarray, mask: np.ndarray, centre: tuple[int, int], radius: float) -> np.ndarray:
    """Darken ``rgb`` by 25 % in a disc around ``centre`` with a soft 3-pixel rim, inside ``mask``.

    Unlike the texture generator's anomalies (textures or flat colours blended at 20-80 %
    into Perlin regions with crisp edges): low contrast, round, soft-edged, no texture.
    """
    yy, xx = np.mgrid[: rgb.shape[0], : rgb.shape[1]]
    distance = np.hypot(yy - centre[0], xx - centre[1])
    weight = np.clip((radius - distance) / 3.0, 0.0, 1.0) * mask
    return (rgb * (1 - 0.25 * weight[..., None])).round().clip(0, 255).astype(np.uint8), weight > 0


def stained_pairs(params, n: int = 6):
    """(intact, stained rgb, stain mask) for ``n`` good bagels rendered outside the data set."""
    from bridgenet.data.synth.dataset import make_sample, render_sample

    synth = params.synth
    for index in range(n):
        scene, _, _ = make_sample(synth.seed + 7, "bagel", "test", "good", index, synth.image_size,
                                  synth.noise_std_m)
        intact = render_sample(scene, None)
        inside = distance_transform_edt(intact.object_mask)  # the stain sits well inside the object
        centre = tuple(int(v) for v in np.unravel_index(np.argmax(inside), inside.shape))
        stained, mask = faint_stain(intact.rgb, intact.object_mask, centre, radius=synth.image_size / 8)
        assert np.abs(stained.astype(int) - intact.rgb).max() <= 0.25 * 255 + 1  # low contrast
        yield intact, stained, mask


def test_a_faint_stain_unlike_any_generated_anomaly_raises_the_fused_score(trained):
    from bridgenet.predict import predict_arrays

    params, _, model = trained
    model.network.scorer = "fused"
    raised = [predict_arrays(model, stained, intact.xyz).score > predict_arrays(model, intact.rgb, intact.xyz).score
              for intact, stained, _ in stained_pairs(params)]
    assert sum(raised) >= 5, raised


def test_the_memory_head_sees_a_faint_stain_where_it_is(trained):
    """The memory head's own RGB distances rise on the stain and peak inside it.

    (On this tiny model, 96 px and 64-wide embeddings, the image score under ``memory``
    alone stays with a depth patch elsewhere; at the default sizes see the benchmark.)
    """
    from bridgenet.preprocess import network_inputs

    params, _, model = trained
    net = model.network.eval()
    inside = 0
    for intact, stained, mask in stained_pairs(params):
        maps = []
        for rgb in (intact.rgb, stained):
            small, depth, _, box, _ = network_inputs(rgb, intact.xyz, params.data, np.random.default_rng(0))
            with torch.no_grad():
                embeddings = net.embed_inputs({
                    "rgb": torch.from_numpy(small).permute(2, 0, 1).float().div(255).unsqueeze(0),
                    "depth": torch.from_numpy(depth).float()[None, None]})
                grid = embeddings["rgb"].shape[-2:]
                every = torch.ones(grid[0] * grid[1], dtype=torch.bool)
                distance = net.patch_components(embeddings, every, MEMORY)["memory_rgb"].view(grid)
            maps.append(distance.numpy())
        rise = maps[1] - maps[0]
        peak = np.unravel_index(np.argmax(rise), rise.shape)
        shown = np.ascontiguousarray(crop(mask, box))  # the stain in the network's view
        cell = F.adaptive_max_pool2d(torch.from_numpy(shown).float()[None], tuple(grid))[0].numpy() > 0
        inside += bool(rise.max() > 0 and binary_dilation(cell)[peak])
    assert inside >= 5


def flatten_point_clouds(root: Path) -> int:
    """Every xyz of ``root`` becomes its support plane alone (a flat part): nothing above it."""
    from bridgenet.data.samples import read_xyz

    count = 0
    for path in root.rglob("xyz/*.tiff"):
        xyz = read_xyz(path)
        valid = xyz[..., 2] != 0
        # The plane through the scan's own table points: a least-squares fit of z on x, y.
        design = np.c_[xyz[valid][:, 0], xyz[valid][:, 1], np.ones(int(valid.sum()))]
        coef = np.linalg.lstsq(design, xyz[valid][:, 2], rcond=None)[0]
        flat = xyz.copy()
        flat[..., 2] = np.where(valid, coef[0] * xyz[..., 0] + coef[1] * xyz[..., 1] + coef[2], 0)
        # an object's points stand nearer the camera than the table: push them back onto it
        tifffile.imwrite(path, flat.astype(np.float32))
        count += 1
    return count


def test_a_category_of_flat_parts_gets_anomalies_and_scores_on_the_whole_image(tiny_root, tmp_path, caplog):
    from bridgenet.predict import predict_arrays
    from bridgenet.preprocess import run_preprocess
    from bridgenet.train import train_category

    data = tmp_path / "synth"
    shutil.copytree(tiny_root / "synth" / "bagel", data / "bagel")
    assert flatten_point_clouds(data) > 0
    params = tiny_params(tmp_path, "data.categories=[bagel]", f"data.root={data}",
                         f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=3")
    run_preprocess(params)
    with caplog.at_level(logging.WARNING, logger="bridgenet.train"):
        summary = train_category(params, "bagel", out_dir=tmp_path / "model")
    warnings = [r.getMessage() for r in caplog.records if "no foreground" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("12 of 12 training samples have no foreground")
    # Anomalies were placed (the validation set has positives) and every patch went into the bank.
    assert "val_image_auroc" in summary.validation
    assert summary.memory["rgb_candidates"] == 12 * 12 * 12
    model = load_model(tmp_path / "model" / "model.pt")
    from bridgenet.data.samples import read_rgb, read_xyz

    folder = data / "bagel" / "test" / "good"
    rgb, xyz = read_rgb(folder / "rgb" / "000.png"), read_xyz(folder / "xyz" / "000.tiff")
    for scorer in SCORERS:
        model.network.scorer = scorer
        clean = predict_arrays(model, rgb, xyz)
        assert np.isfinite(clean.score)
        # the map varies across the whole image, not only where an object would be
        corner, centre = clean.anomaly_map[:20, :20], clean.anomaly_map[40:-40, 40:-40]
        assert corner.std() > 0 and centre.std() > 0
