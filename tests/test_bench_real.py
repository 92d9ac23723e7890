"""The real-data benchmark's bookkeeping: summary over seeds, targets, reuse rule, folder names, peer maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bench.common import PEER
from bench.peers import PeerSettings, fitted_depth_image, ground_truth_size, modality_images
from bench.real import portable_run, published_command
from bench.real_report import PUBLISHED_SOURCE, check_targets, markdown, summarize, variants
from bench.real_runs import (
    base_params,
    bench_digest,
    cache_dir,
    find_categories,
    memory_twin,
    model_dir,
    network_digest,
    params_digest,
    peer_digest,
    rebuild_and_score,
    run_params,
    run_path,
    stored_training,
    train_digest,
)
from bench.results import current_record, read_json, record_rows, rows_frame, write_results
from bridgenet.data.cache import CachedSplit

DEFECTS = ("bent", "cut")


def _cell(image: float, aupro: float, defects: dict[str, float], fpr: float = 0.1) -> dict:
    return {"metrics": {"image_auroc": image, "image_ap": image, "pixel_auroc": 0.99, "aupro_30": aupro,
                        "aupro_1": 0.5},
            "per_defect": defects, "at_threshold": {"fpr": fpr, "recall": 0.8}}


def _run(config: str, seed: int, category: str, image: float, aupro: float = 0.99,
         defects: dict[str, float] | None = None) -> dict:
    """A run record whose every scorer scored ``image`` / ``aupro``."""
    defects = defects if defects is not None else {d: image for d in DEFECTS}
    return {"config": config, "seed": seed, "category": category, "train_seconds": 100.0 + seed,
            "scores": {s: _cell(image, aupro, defects) for s in ("discriminator", "memory", "fused")}}


def _peer(seed: int, category: str, image: float, aupro: float) -> dict:
    cells = {m: {"metrics": _cell(image, aupro, {})["metrics"], "per_defect": {d: image for d in DEFECTS}}
             for m in ("rgb", "depth", "fused")}
    return {"peer": PEER, "seed": seed, "category": category, "modalities": cells,
            "fit_seconds": {"rgb": 10.0, "depth": 20.0, "fused": 30.0}}


def _table(runs: list[dict], peers: list[dict], categories: list[str]) -> dict:
    frame = rows_frame(r for record in [*runs, *peers] for r in record_rows(record))
    return summarize(frame, variants(["rgb+depth", "rgb", "depth"], True), categories)


def test_mean_and_std_over_seeds_per_defect_and_over_categories():
    runs = [_run("rgb+depth", 0, "a", 0.90, defects={"bent": 0.8, "cut": 1.0}),
            _run("rgb+depth", 1, "a", 1.00, defects={"bent": 1.0, "cut": 1.0}),
            _run("rgb+depth", 0, "b", 0.80, defects={"hole": 0.7}),
            _run("rgb+depth", 1, "b", 0.80, defects={"hole": 0.9})]
    table = _table(runs, [_peer(0, "a", 0.7, 0.9)], ["a", "b"])
    full = table["rgb+depth / fused"]
    cell = full["categories"]["a"]["image_auroc"]
    assert cell == pytest.approx({"mean": 0.95, "std": 0.05, "n": 2})
    assert full["categories"]["a"]["defect:bent"] == pytest.approx({"mean": 0.9, "std": 0.1, "n": 2})
    assert "defect:hole" not in full["categories"]["a"] and "defect:hole" in full["categories"]["b"]
    assert full["categories"]["a"]["fpr"]["mean"] == pytest.approx(0.1)
    assert full["categories"]["a"]["train_seconds"]["mean"] == pytest.approx(100.5)
    # the mean category: per seed (0.9 + 0.8) / 2 and (1.0 + 0.8) / 2, then over seeds
    assert full["mean"]["image_auroc"] == pytest.approx({"mean": 0.875, "std": 0.025, "n": 2})
    # the worst defect type of each run: seed 0 (0.8, 0.7), seed 1 (1.0, 0.9)
    assert full["mean"]["worst_defect"]["mean"] == pytest.approx((0.75 + 0.95) / 2)
    assert "rgb / fused" not in table  # nothing ran
    peer = table[f"{PEER} fused"]
    assert peer["categories"]["a"]["train_seconds"]["mean"] == 30.0 and "fpr" not in peer["categories"]["a"]
    assert peer["seeds_complete"] == []  # no seed holds category b


def _passing(category: str = "a") -> tuple[list[dict], list[dict]]:
    runs = [_run("rgb+depth", s, category, 0.97 + 0.01 * s, 0.985) for s in (0, 1)]
    runs += [_run("rgb", s, category, 0.9) for s in (0, 1)] + [_run("depth", s, category, 0.85) for s in (0, 1)]
    return runs, [_peer(s, category, 0.9, 0.95) for s in (0, 1)]


def test_targets_pass_on_good_runs():
    lines = check_targets(_table(*_passing(), ["a"]), ["a"])
    assert len(lines) == 7 and all(line.startswith("PASS: a: ") for line in lines), lines
    assert "image AUROC 0.975 ± 0.005 over 2 seed(s)" in lines[0]
    assert "bent 0.975, cut 0.975" in lines[2]


def test_targets_fail_on_spread_weak_defects_a_better_peer_and_a_weak_depth_model():
    runs, peers = _passing()
    runs[1] = _run("rgb+depth", 1, "a", 1.0, 0.985, defects={"bent": 1.0, "cut": 0.8})  # std 0.015, cut 0.9
    runs[-1] = _run("depth", 1, "a", 0.6)  # depth mean 0.725
    peers = [_peer(s, "a", 0.9, 0.99) for s in (0, 1)]  # AU-PRO ahead of ours
    lines = check_targets(_table(runs, peers, ["a"]), ["a"])
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 4, lines
    assert "std <= 0.01" in failed[0] and "every defect type" in failed[1]
    assert "AU-PRO@0.3" in failed[2] and "PatchCore fused" in failed[2] and "depth / fused" in failed[3]
    assert "bent 0.985, cut 0.885" in failed[1]


def test_targets_skip_what_did_not_run_and_ours_must_lead_rgb_strictly():
    runs = [_run("rgb+depth", 0, "a", 0.96), _run("rgb", 0, "a", 0.96)]
    lines = check_targets(_table(runs, [], ["a", "b"]), ["a", "b"])
    assert any(line.startswith("FAIL: a: rgb+depth / fused image AUROC 0.960 ahead of rgb") for line in lines)
    assert sum(line.startswith("SKIP: a:") for line in lines) == 3  # peer twice, depth once
    assert lines[-1] == "SKIP: b: no rgb+depth / fused run, no target checked"


def test_the_markdown_shows_defect_columns_published_figures_and_targets():
    table = _table(*_passing("cable_gland"), ["cable_gland"])
    machine = {"command": "python -m bench.real --data-root R", "cpu": "cpu", "cores": 2, "torch": "2",
               "date": "2026-01-01"}
    text = markdown(table, ["cable_gland"], check_targets(table, ["cable_gland"]), machine)
    assert "| variant | image AUROC | image AP | pixel AUROC | AU-PRO@0.3 | AU-PRO@0.01 | bent | cut |" in text
    assert f"| PatchCore (RGB only) | {PUBLISHED_SOURCE} | 0.880 |" in text
    assert f"| BTF (RGB + FPFH) | {PUBLISHED_SOURCE} | 0.770 |" in text
    assert "| rgb+depth / fused | measured here | 0.975 ± 0.005 |" in text
    assert "## mean over categories" in text and "- PASS: cable_gland:" in text


def test_a_result_is_reused_only_under_the_params_it_was_made_with(tmp_path):
    root, work = tmp_path / "root", tmp_path / "work"
    base = base_params(root, [])
    params = run_params(base, work, "cable_gland", "rgb+depth", 0)
    path = run_path(work, bench_digest(base), "rgb+depth", 0, "cable_gland")
    write_results(path, {**_run("rgb+depth", 0, "cable_gland", 0.9), "params_digest": params_digest(params)})
    assert current_record(path, params_digest(params))["seed"] == 0

    other_sets = run_params(base_params(root, ["train.epochs=5"]), work, "cable_gland", "rgb+depth", 0)
    other_seed = run_params(base, work, "cable_gland", "rgb+depth", 1)
    other_config = run_params(base, work, "cable_gland", "rgb", 0)
    for other in (other_sets, other_seed, other_config):
        assert params_digest(other) != params_digest(params)
        assert current_record(path, params_digest(other)) is None
    assert current_record(tmp_path / "missing.json", params_digest(params)) is None
    path.write_text("{not json")
    assert current_record(path, params_digest(params)) is None


def test_settings_no_run_reads_reuse_every_result(tmp_path):
    root, work = tmp_path / "root", tmp_path / "work"
    base = base_params(root, [])
    params = run_params(base, work, "cable_gland", "rgb+depth", 0)
    elsewhere = base_params(root, ["promotion.max_fpr_at_threshold=0.5", "tracking.ui_port=5999",
                                   "schedule.cron=0 4 * * 1"])
    other = run_params(elsewhere, work, "cable_gland", "rgb+depth", 0)
    assert bench_digest(elsewhere) == bench_digest(base)
    assert (params_digest(other), train_digest(other)) == (params_digest(params), train_digest(params))


def test_a_work_folder_moved_elsewhere_keeps_its_results(tmp_path):
    root = tmp_path / "root"
    base = base_params(root, [])
    here = run_params(base, tmp_path / "work", "cable_gland", "rgb+depth", 0)
    moved = run_params(base, tmp_path / "elsewhere" / "work", "cable_gland", "rgb+depth", 0)
    assert here.data.cache_dir != moved.data.cache_dir
    for made in (params_digest, train_digest, network_digest):
        assert made(here) == made(moved)
    other_data = run_params(base_params(root, ["data.image_size=320"]), tmp_path / "work", "cable_gland",
                            "rgb+depth", 0)
    assert train_digest(other_data) != train_digest(here)  # another cache is another training

def test_a_change_of_scoring_keys_rescores_the_saved_model_and_any_other_change_retrains(tmp_path):
    root, work = tmp_path / "root", tmp_path / "work"
    base = base_params(root, [])
    params = run_params(base, work, "cable_gland", "rgb+depth", 0)
    model = tmp_path / "model.pt"
    path = run_path(work, bench_digest(base), "rgb+depth", 0, "cable_gland")
    write_results(path, {**_run("rgb+depth", 0, "cable_gland", 0.9), "params_digest": params_digest(params),
                      "train_digest": train_digest(params), "model": str(model)})
    rescored = base_params(root, ["model.fusion_weight=0.25", "model.memory_fusion=max"])
    assert bench_digest(rescored) == bench_digest(base)  # the same model folder
    other = run_params(rescored, work, "cable_gland", "rgb+depth", 0)
    assert current_record(path, params_digest(other)) is None  # its scores are not current
    assert stored_training(path, other) is None  # ... and the model file is gone
    model.write_bytes(b"saved")
    assert stored_training(path, other)["seed"] == 0
    retrained = run_params(base_params(root, ["train.epochs=3"]), work, "cable_gland", "rgb+depth", 0)
    assert stored_training(path, retrained) is None


def test_runs_read_the_configuration_seed_cache_and_category_the_bench_sets(tmp_path):
    base = base_params(tmp_path / "root", ["train.epochs=3", "model.embed_dim=64"])
    params = run_params(base, tmp_path / "work", "cable_gland", "depth", 2)
    assert params.data.root == str((tmp_path / "root").resolve()) and params.data.categories == ("cable_gland",)
    assert params.model.modalities == ("depth",) and params.train.seed == 2 and params.train.epochs == 3
    assert params.model.embed_dim == 64 and params.train.device == "cpu"
    assert Path(params.data.cache_dir) == cache_dir(tmp_path / "work", base)
    assert base_params(tmp_path, ["train.device=auto"]).train.device == "auto"


def test_cache_and_model_folders_follow_the_settings(tmp_path):
    work = tmp_path / "work"
    plain, other_epochs = base_params(tmp_path, []), base_params(tmp_path, ["train.epochs=5"])
    bigger = base_params(tmp_path, ["data.image_size=320"])
    assert cache_dir(work, plain) == cache_dir(work, other_epochs)  # training settings share a cache
    assert cache_dir(work, bigger) != cache_dir(work, plain) and cache_dir(work, bigger).name.startswith("320px-")
    assert cache_dir(work, base_params(tmp_path / "elsewhere", [])) != cache_dir(work, plain)
    digests = {bench_digest(p) for p in (plain, other_epochs, bigger)}
    assert len(digests) == 3
    assert model_dir(work, bench_digest(plain), "rgb", 1, "cable_gland") == (
        work / "models" / bench_digest(plain) / "rgb" / "seed1" / "cable_gland")
    # the peer's result depends on the data and its own settings, not on our training settings
    params = run_params(plain, work, "c", "rgb+depth", 0)
    assert peer_digest(params, {"seed": 0}) == peer_digest(run_params(other_epochs, work, "c", "rgb+depth", 0),
                                                           {"seed": 0})
    assert peer_digest(params, {"seed": 0}) != peer_digest(params, {"seed": 1})
    assert peer_digest(params, {"seed": 0}) != peer_digest(run_params(bigger, work, "c", "rgb+depth", 0),
                                                           {"seed": 0})


def test_categories_are_the_folders_with_a_train_folder(tmp_path):
    for name in ("cable_gland", "bagel"):
        (tmp_path / name / "train").mkdir(parents=True)
    (tmp_path / "notes").mkdir()
    (tmp_path / "license.txt").write_text("")
    assert find_categories(tmp_path) == ["bagel", "cable_gland"]
    with pytest.raises(ValueError, match="notes"):
        find_categories(tmp_path / "notes")
    with pytest.raises(ValueError, match="not a folder"):
        find_categories(tmp_path / "missing")


# ----------------------------------------------------------------------------- bench.peers
def _split(maps_size: int, boxes: list[tuple[int, int, int, int]], frame: tuple[int, int]) -> CachedSplit:
    n, s = len(boxes), maps_size
    return CachedSplit(
        category="c", split="test", rgb=np.zeros((n, s, s, 3), np.uint8), depth=np.zeros((n, s, s), np.float32),
        foreground=np.zeros((n, s, s), bool), labels=np.zeros(n, np.int64), defects=["good"] * n,
        stems=[f"{i:03d}" for i in range(n)], gt=[np.zeros(frame, bool) for _ in range(n)],
        original_sizes=np.array([frame] * n, np.int64), crop_boxes=np.array(boxes, np.int64))


def test_a_map_of_a_cropped_sample_lands_in_its_box():
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, :4, :4] = 1.0  # top-left quarter of the first crop
    maps[1] += 2.0
    maps[1, 4:, 4:] = 5.0  # bottom-right quarter of the second
    split = _split(8, [(10, 20, 16, 16), (0, 0, 40, 60)], (40, 60))
    full = ground_truth_size(maps, split)
    assert full.shape == (2, 40, 60)
    # resized bilinearly 8 -> 16 into the box at (10, 20): its top-left quarter is the 1s (one
    # blended row and column at the quarter's edge), the rest of the box 0
    assert np.all(full[0, 10:17, 20:27] == 1.0) and np.all(full[0, 19:26, 29:36] == 0.0)
    assert 0.0 < full[0, 17, 22] < 1.0
    outside = np.ones((40, 60), bool)
    outside[10:26, 20:36] = False
    assert np.all(full[0][outside] == 0.0)  # the map's minimum
    assert full[0, 12, 22] == 1.0 and full[0, 5, 5] == 0.0
    assert np.allclose(full[1, 25:, 35:], 5.0) and np.allclose(full[1, :15, :25], 2.0)  # whole-frame box


def test_the_peer_reads_the_depth_image_of_the_model_or_the_height_map():
    params = base_params(Path("/nonexistent"), ["model.depth_input=relief"])
    rng = np.random.default_rng(0)
    depth = np.zeros((3, 32, 32), np.float32)
    depth[:, 8:24, 8:24] = 0.5 + 0.05 * rng.random((3, 16, 16), dtype=np.float32)
    split = _split(32, [(0, 0, 32, 32)] * 3, (32, 32))
    split = CachedSplit(**{**split.__dict__, "depth": depth})
    depth_image = fitted_depth_image(params.model, depth, "model")
    from bridgenet.model.network import DepthImage

    expected = DepthImage("relief", params.model.relief_sigma, params.model.relief_gain)
    expected.fit(torch.from_numpy(depth).unsqueeze(1))
    images = modality_images(split, "depth", depth_image, chunk=2)
    assert images.shape == (3, 3, 32, 32) and 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    torch.testing.assert_close(images, expected(torch.from_numpy(depth).unsqueeze(1)))
    assert float(images[:, :, :8].abs().max()) == 0.0  # off the object
    assert fitted_depth_image(params.model, depth, "height") is None
    height = modality_images(split, "depth")
    torch.testing.assert_close(height, torch.from_numpy(depth).unsqueeze(1).expand(-1, 3, -1, -1))
    assert PeerSettings().depth_input == "model"
    with pytest.raises(ValueError, match="depth_input"):
        PeerSettings(depth_input="relief")


def test_the_published_summary_names_no_path_of_this_machine(tmp_path):
    command = published_command(["--data-root", "/srv/scans", "--work=/tmp/w", "--categories", "cable_gland",
                                "--out", "/home/me/out", "--seeds", "0", "1", "--summary-only"])
    assert command == ("python -m bench.real --data-root ROOT --work=WORK --categories cable_gland "
                       "--out OUT --seeds 0 1")
    work = tmp_path / "work"
    run = {"config": "rgb", "model": str(work / "models" / "abc" / "rgb" / "seed0" / "x" / "model.pt")}
    assert portable_run(run, work)["model"] == "models/abc/rgb/seed0/x/model.pt"
    assert portable_run({"model": "/elsewhere/model.pt"}, work)["model"] == "model.pt"
    assert run["model"].startswith(str(tmp_path))  # the record the bench resumes from keeps its path


def test_a_configuration_training_refuses_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    import bridgenet.preprocess
    from bench import real
    from bridgenet.train import TrainingError

    (tmp_path / "root" / "cable_gland" / "train").mkdir(parents=True)
    monkeypatch.setattr(bridgenet.preprocess, "run_preprocess", lambda params: None)
    trained = []

    def train_and_score(params, out_dir, config, seed, category):
        if config == "depth":
            raise TrainingError(f"{category}: no training scan shows an object above the support plane")
        trained.append(config)
        return {**_run(config, seed, category, 0.9), "best_epoch": 3, "epochs": 20}

    monkeypatch.setattr(real, "train_and_score", train_and_score)
    args = real.parse_args(["--data-root", str(tmp_path / "root"), "--work", str(tmp_path / "work"),
                            "--out", str(tmp_path / "out"), "--categories", "cable_gland", "--seeds", "0",
                            "--configs", "depth", "rgb", "--no-peer"])
    lines = list(real.run_jobs(args, base_params(args.data_root, []), args.work))
    assert any("depth seed 0 cable_gland: not trained: cable_gland: no training scan" in line for line in lines)
    assert trained == ["rgb"]


def test_runs_differing_only_in_memory_settings_share_the_trained_weights(tmp_path):
    root, work = tmp_path / "root", tmp_path / "work"
    base = base_params(root, [])
    params = run_params(base, work, "cable_gland", "rgb+depth", 0)
    smaller = run_params(base_params(root, ["model.memory.max_entries=1024", "model.memory.coreset_ratio=0.05"]),
                         work, "cable_gland", "rgb+depth", 0)
    assert train_digest(smaller) != train_digest(params)  # so a saved model is not merely scored again ...
    assert network_digest(smaller) == network_digest(params)  # ... but its weights serve
    for other in (run_params(base_params(root, ["train.epochs=5"]), work, "cable_gland", "rgb+depth", 0),
                  run_params(base, work, "cable_gland", "rgb+depth", 1),
                  run_params(base, work, "cable_gland", "rgb", 0)):
        assert network_digest(other) != network_digest(params)


def test_the_memory_twin_is_a_run_of_the_same_weights_whose_model_is_on_disk(tmp_path):
    root, work = tmp_path / "root", tmp_path / "work"
    base = base_params(root, [])
    params = run_params(base, work, "cable_gland", "rgb+depth", 0)
    smaller = base_params(root, ["model.memory.max_entries=1024"])
    model = tmp_path / "model.pt"
    twin = {**_run("rgb+depth", 0, "cable_gland", 0.9), "network_digest": network_digest(params), "model": str(model)}
    write_results(run_path(work, bench_digest(base), "rgb+depth", 0, "cable_gland"), twin)
    wanted = run_params(smaller, work, "cable_gland", "rgb+depth", 0)
    assert memory_twin(work, wanted, "rgb+depth", 0, "cable_gland") is None  # the model file is gone
    model.write_bytes(b"saved")
    assert memory_twin(work, wanted, "rgb+depth", 0, "cable_gland")["model"] == str(model)
    assert memory_twin(work, wanted, "rgb+depth", 1, "cable_gland") is None  # another seed
    retrained = run_params(base_params(root, ["train.epochs=3"]), work, "cable_gland", "rgb+depth", 0)
    assert memory_twin(work, retrained, "rgb+depth", 0, "cable_gland") is None
    legacy = {key: value for key, value in twin.items() if key != "network_digest"}  # written before the digest
    write_results(run_path(work, bench_digest(base), "rgb+depth", 0, "cable_gland"), legacy)
    assert memory_twin(work, wanted, "rgb+depth", 0, "cable_gland") is None


def test_the_bench_selects_the_bank_again_instead_of_training_when_only_memory_settings_changed(
        tmp_path, monkeypatch):
    import bridgenet.preprocess
    from bench import real

    (tmp_path / "root" / "cable_gland" / "train").mkdir(parents=True)
    monkeypatch.setattr(bridgenet.preprocess, "run_preprocess", lambda params: None)
    args = real.parse_args(["--data-root", str(tmp_path / "root"), "--work", str(tmp_path / "work"),
                            "--out", str(tmp_path / "out"), "--categories", "cable_gland", "--seeds", "0",
                            "--configs", "rgb", "--no-peer", "--set", "model.memory.max_entries=1024"])
    base = base_params(args.data_root, args.sets)
    trained_base = base_params(args.data_root, [])
    model = tmp_path / "model.pt"
    model.write_bytes(b"saved")
    params = run_params(trained_base, args.work, "cable_gland", "rgb", 0)
    write_results(run_path(args.work, bench_digest(trained_base), "rgb", 0, "cable_gland"),
                  {**_run("rgb", 0, "cable_gland", 0.9), "network_digest": network_digest(params),
                   "model": str(model)})
    calls = []

    def rebuild(params, twin, out_dir):
        calls.append((params.model.memory.max_entries, twin["model"], out_dir))
        return {**_run("rgb", 0, "cable_gland", 0.9), "rebuild_seconds": 1.0}

    monkeypatch.setattr(real, "rebuild_and_score", rebuild)
    monkeypatch.setattr(real, "train_and_score", lambda *a: pytest.fail("trained although the weights exist"))
    lines = list(real.run_jobs(args, base, args.work))
    assert calls == [(1024, str(model), model_dir(args.work, bench_digest(base), "rgb", 0, "cable_gland"))]
    assert any("selecting the bank again" in line for line in lines)
    assert read_json(run_path(args.work, bench_digest(base), "rgb", 0, "cable_gland"))["rebuild_seconds"] == 1.0


def test_a_bank_selected_again_gives_the_model_training_under_those_settings_gives(
        tiny_root, trained_bagel, tmp_path):
    from bridgenet.model.io import load_model
    from tests.conftest import tiny_params, train_tiny_bagel

    _, summary, model = trained_bagel
    size = int(model.network.memory.bank("rgb").shape[0])
    other = ("model.memory.max_entries=" + str(size),)  # half the entries per modality: the cap binds
    _, _, direct = train_tiny_bagel(tiny_root, tmp_path / "direct", *other)
    wanted = tiny_params(tiny_root, "train.epochs=8", *other)
    twin = {"config": "rgb+depth", "seed": 0, "category": "bagel", "model": summary.model_path,
            "best_epoch": summary.best_epoch, "epochs": 8, "train_seconds": 1.0}
    record = rebuild_and_score(wanted, twin, tmp_path / "rebuilt")
    rebuilt = load_model(tmp_path / "rebuilt" / "model.pt")
    for m in direct.network.modalities:
        assert rebuilt.network.memory.bank(m).shape[0] == size // 2
    direct_state, rebuilt_state = direct.network.state_dict(), rebuilt.network.state_dict()
    assert direct_state.keys() == rebuilt_state.keys()
    for key, value in direct_state.items():  # weights, bank, calibration: what training gives
        assert torch.allclose(rebuilt_state[key], value, atol=1e-5), key
    assert rebuilt.threshold == pytest.approx(direct.threshold, rel=1e-5)
    assert rebuilt.meta.pixel_threshold == pytest.approx(direct.meta.pixel_threshold, rel=1e-5)
    assert rebuilt.params.model.memory == direct.params.model.memory
    assert record["memory"]["rgb_bank"] == size // 2 and record["rebuilt_from"] == summary.model_path
    assert record["best_epoch"] == summary.best_epoch and record["scores"]["fused"]["metrics"]["image_auroc"] >= 0
