"""The accuracy benchmark's bookkeeping: mean/std over seeds, the mean category, the targets."""

from __future__ import annotations

import json

import pytest

from bench.accuracy import published_runs, reproduce_command, seed_work_results
from bench.accuracy_report import (
    LATE,
    check_targets,
    late_fusion_rows,
    markdown,
    readme_block,
    resampled_test_split,
    sampling_line,
    summarize,
    update_readme,
    variants,
)
from bench.accuracy_runs import CONFIGS, TEST_SIZES, caps_unbound
from bench.common import PEER
from bench.results import record_rows, rows_frame


def _cell(image: float, geometric: float, appearance: float) -> dict:
    return {"metrics": {"image_auroc": image, "pixel_auroc": 0.9, "aupro_30": 0.975, "aupro_1": 0.5},
            "families": {"geometric": geometric, "appearance": appearance, "both": 1.0}}


def _row(variant: str, seed: int, category: str, image: float, geometric: float, appearance: float) -> dict:
    """A summary row (bench.results) of the default data set."""
    cell = _cell(image, geometric, appearance)
    values = {**cell["metrics"], **{f"image_auroc_{f}": v for f, v in cell["families"].items()},
              "train_seconds": 10.0}
    return {"preset": "default", "variant": variant, "seed": seed, "category": category, "values": values}


def _run(config: str, seed: int, category: str, cells: dict[str, dict[str, tuple]]) -> dict:
    """A benchmark run: ``cells[preset][scorer] = (image, geometric, appearance)``."""
    return {"config": config, "seed": seed, "category": category, "train_seconds": 10.0,
            "scores": {p: {s: _cell(*v) for s, v in by.items()} for p, by in cells.items()}}


def test_mean_and_std_over_seeds_per_category_and_over_categories():
    rows = [_row("rgb+depth / fused", 0, "a", 0.90, 1.0, 0.8), _row("rgb+depth / fused", 1, "a", 1.00, 1.0, 0.9),
            _row("rgb+depth / fused", 0, "b", 0.80, 0.9, 0.9), _row("rgb+depth / fused", 1, "b", 0.80, 0.9, 0.9)]
    table = summarize(rows_frame(rows), ["rgb+depth / fused", "rgb / fused"], ["a", "b"])
    assert "rgb / fused" not in table  # nothing ran
    cell = table["rgb+depth / fused"]["categories"]["a"]["image_auroc"]
    assert cell["mean"] == pytest.approx(0.95) and cell["std"] == pytest.approx(0.05) and cell["n"] == 2
    overall = table["rgb+depth / fused"]["mean"]
    # per seed: (0.9 + 0.8) / 2 = 0.85 and (1.0 + 0.8) / 2 = 0.9
    assert overall["image_auroc"]["mean"] == pytest.approx(0.875)
    assert overall["image_auroc"]["std"] == pytest.approx(0.025)
    assert overall["image_auroc_appearance"]["mean"] == pytest.approx((0.85 + 0.9) / 2)
    assert "| rgb+depth / fused | **mean** | 0.875 ± 0.025 |" in markdown(table, ["a", "b"])
    assert "| rgb+depth / fused | a |" not in markdown(table, ["a", "b"], mean_only=True)


def test_a_seed_missing_a_category_stays_out_of_the_mean_category():
    rows = [_row("v", 0, "a", 0.9, 1, 1), _row("v", 0, "b", 0.7, 1, 1), _row("v", 1, "a", 0.1, 1, 1)]
    table = summarize(rows_frame(rows), ["v"], ["a", "b"])
    assert table["v"]["seeds_complete"] == [0]
    assert table["v"]["mean"]["image_auroc"]["mean"] == pytest.approx(0.8)
    assert table["v"]["categories"]["a"]["image_auroc"]["n"] == 2


def test_runs_and_the_peer_flatten_into_one_row_per_preset_variant_seed_and_category():
    run = _run("rgb", 1, "a", {"default": {"memory": (0.9, 0.5, 0.99)}, "hard": {"memory": (0.7, 0.5, 0.8)}})
    peer = {"preset": "hard", "category": "a", "fit_seconds": {"rgb": 1.0, "depth": 2.0, "fused": 3.0},
            "modalities": {m: _cell(0.6, 0.6, 0.6) for m in ("rgb", "depth", "fused")}}
    frame = rows_frame([*record_rows(run), *record_rows(peer)])
    hard = frame[frame["preset"] == "hard"]
    assert list(hard["variant"]) == ["rgb / memory", f"{PEER} rgb", f"{PEER} depth", f"{PEER} rgb+depth"]
    assert hard.iloc[0]["image_auroc"] == 0.7 and hard.iloc[0]["seed"] == 1
    assert hard.iloc[0]["image_auroc_appearance"] == 0.8 and list(hard["train_seconds"]) == [10.0, 1.0, 2.0, 3.0]
    assert list(frame.loc[frame["preset"] == "default", "variant"]) == ["rgb / memory"]
    assert variants(["rgb"], True)[-1] == f"{PEER} rgb+depth" and len(variants(["rgb"], False)) == 3
    assert variants(["rgb", "depth"], False)[-1] == f"{LATE} / fused"


def _scored(config: str, seed: int, scores: list[float], validation: list[float]) -> dict:
    families = ["good"] * 4 + ["appearance"] * 2 + ["geometric"] * 2
    cell = {**_cell(0.5, 0.5, 0.5), "image_scores": scores, "sample_families": families,
            "validation_scores": validation}
    return {"config": config, "seed": seed, "category": "a", "train_seconds": 10.0, "scores": {"hard": {"fused": cell}}}


def test_late_fusion_z_scores_each_model_on_its_own_validation_goods_and_takes_the_larger():
    # RGB sees the appearance defects, depth the geometric ones; depth's scores are 100 x larger,
    # so a max of the raw scores would hear depth only
    rgb = _scored("rgb", 0, [0.1, 0.2, 0.1, 0.2, 0.9, 0.8, 0.2, 0.1], [0.1, 0.2])
    depth = _scored("depth", 0, [10, 20, 10, 20, 20, 10, 90, 80], [10, 20])
    rows = late_fusion_rows([rgb, depth, _scored("depth", 1, [0.0] * 8, [0.0, 1.0])], "hard")
    assert len(rows) == 1  # the seed-1 depth model has no rgb partner
    row = rows[0]
    assert row["variant"] == f"{LATE} / fused" and row["seed"] == 0 and row["preset"] == "hard"
    assert row["values"] == {"image_auroc": 1.0, "image_auroc_appearance": 1.0, "image_auroc_geometric": 1.0,
                             "train_seconds": 20.0}
    table = summarize(rows_frame(rows), [f"{LATE} / fused"], ["a"])
    assert "| rgb & depth models / fused | **mean** | 1.000 | – | – | – | 1.000 | 1.000 | – | 1 |" in markdown(table, ["a"])
    # runs scored before per-sample scores were kept give no row; nor another preset
    old = {**depth, "scores": {"hard": {"fused": _cell(0.5, 0.5, 0.5)}}}
    assert late_fusion_rows([rgb, old], "hard") == [] and late_fusion_rows([rgb, depth], "default") == []


def _tables(full: tuple, rgb: tuple, depth: tuple, hard_fused: float, hard_disc: float, peer: float) -> dict:
    rows = {"default": [_row("rgb+depth / fused", 0, "a", *full), _row("rgb / fused", 0, "a", *rgb),
                        _row("depth / fused", 0, "a", *depth)],
            "hard": [_row("rgb+depth / fused", 0, "a", hard_fused, 0.9, 0.9),
                     _row("rgb+depth / discriminator", 0, "a", hard_disc, 0.9, 0.9),
                     _row(f"{PEER} rgb+depth", 0, "a", peer, 0.9, 0.9)]}
    names = [*variants(["rgb+depth", "rgb", "depth"], True)]
    return {p: summarize(rows_frame(r), names, ["a"]) for p, r in rows.items()}


def test_targets_for_the_default_scorer_against_single_modalities_heads_and_the_peer():
    lines = check_targets(_tables((0.995, 0.99, 0.985), (0.9, 0.6, 0.98), (0.9, 0.99, 0.6), 0.9, 0.8, 0.85),
                          "fused")
    assert lines[0].startswith("PASS: default data, rgb+depth / fused: mean image_auroc 0.995")
    assert all(line.startswith("PASS") for line in lines), lines
    assert any("hard data: fused image AUROC 0.900 >= PatchCore rgb+depth 0.850" in line for line in lines)
    # appearance below the RGB-only model, and the peer beats fused on the hard set
    lines = check_targets(_tables((0.995, 0.99, 0.985), (0.9, 0.6, 0.995), (0.9, 0.99, 0.6), 0.9, 0.8, 0.95),
                          "fused")
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 2
    assert "default data, appearance defects" in failed[0] and "PatchCore" in failed[1]


def test_published_runs_fill_only_what_the_work_folder_lacks_and_only_under_the_same_params(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    cells = {"default": {"fused": (0.9, 0.6, 0.99)}}
    same = {**_run("rgb", 0, "a", cells), "params_digest": "abc"}
    other = {**_run("rgb", 1, "a", cells), "params_digest": "old"}
    kept = {**_run("depth", 0, "a", cells), "params_digest": "abc"}
    (out / "accuracy.json").write_text(json.dumps({"runs": [same, other, kept]}))
    (work / "depth-seed0-a.json").write_text(json.dumps({**kept, "scores": {}}))

    assert seed_work_results(work, published_runs(out, "abc")) == 1
    assert json.loads((work / "rgb-seed0-a.json").read_text()) == same
    assert not (work / "rgb-seed1-a.json").exists()  # another params.yaml
    assert json.loads((work / "depth-seed0-a.json").read_text())["scores"] == {}
    assert published_runs(tmp_path / "nowhere", "abc") == []
    # the peer's records come back too where its goods, settings and test splits are current
    peer = {"preset": "default", "category": "a", "train_digest": "t1", "test_sizes": TEST_SIZES, "values": {}}
    stale = {**peer, "category": "b", "train_digest": "t0"}
    (out / "accuracy.json").write_text(json.dumps({"runs": [same, peer, stale]}))
    assert published_runs(out, "abc") == [same]
    assert published_runs(out, "abc", "t1") == [same, peer]
    assert seed_work_results(work, published_runs(out, "abc", "t1")) == 1
    assert json.loads((work / "peer-default-a.json").read_text()) == peer


def test_the_readme_block_names_the_command_machine_and_date_and_replaces_only_its_markers(tmp_path):
    command = reproduce_command([0, 1, 2], list(CONFIGS), None)
    assert command == "python -m bench.accuracy --seeds 0 1 2"
    assert reproduce_command([0], ["rgb"], ["a"]) == "python -m bench.accuracy --seeds 0 --configs rgb --categories a"
    machine = {"command": command, "cpu": "Some CPU", "cores": 2, "torch": "2.14.1", "date": "2026-12-01"}
    rows = rows_frame([_row("rgb+depth / fused", 0, "a", 0.98, 0.99, 0.97)])
    tables = {"default": summarize(rows, ["rgb+depth / fused"], ["a"])}
    block = readme_block(tables, ["a"], check_targets(tables, "fused"), [0], machine)
    assert block.startswith("`python -m bench.accuracy --seeds 0 1 2` on Some CPU, 2 cores, torch 2.14.1, 2026-12-01.")
    readme = tmp_path / "README.md"
    readme.write_text("head\n<!-- accuracy:start -->\nold table\n<!-- accuracy:end -->\ntail\n")
    assert update_readme(block, readme)
    text = readme.read_text()
    assert "old table" not in text and "| rgb+depth / fused | **mean** | 0.980 |" in text and "**default data**" in text
    assert text.startswith("head\n<!-- accuracy:start -->\n`python") and text.endswith("<!-- accuracy:end -->\ntail\n")
    readme.write_text("no markers\n")
    assert not update_readme(block, readme) and readme.read_text() == "no markers\n"


def test_a_run_is_reused_under_its_own_bank_caps_or_where_no_cap_bound():
    from bridgenet.config import MemoryConfig

    run = {"memory": {"rgb_candidates": 9000.0, "rgb_bank": 900.0, "depth_candidates": 13126.0, "depth_bank": 1313.0}}
    assert caps_unbound(run, MemoryConfig(coreset_ratio=0.1, max_entries=8192))
    # the new cap binds (1313 > 2000 / 2), the stored cap bound, the stored random pool bound
    assert not caps_unbound(run, MemoryConfig(coreset_ratio=0.1, max_entries=2000))
    capped = {"memory": {**run["memory"], "depth_bank": 1000.0}}
    assert not caps_unbound(capped, MemoryConfig(coreset_ratio=0.1))
    pooled = {**run, "memory_caps": {"max_bank": 4096, "max_candidates": 10000}}
    assert not caps_unbound(pooled, MemoryConfig(coreset_ratio=0.1))
    assert not caps_unbound({"memory": {}}, MemoryConfig())  # no bank recorded: train again
    # trained under today's cap per modality, which bound: the bank is the one training builds today,
    # whether the record states it per modality (max_bank, before 2026-12-05) or over both (max_entries)
    for caps in ({"max_bank": 1000}, {"max_entries": 2000}):
        assert caps_unbound({**capped, "memory_caps": caps}, MemoryConfig(coreset_ratio=0.1, max_entries=2000))
        assert not caps_unbound({**capped, "memory_caps": caps}, MemoryConfig(coreset_ratio=0.1))
    # one modality gets the whole of max_entries: a bound cap of 1000 per modality is not today's 2000
    alone = {"memory": {"rgb_candidates": 30000.0, "rgb_bank": 1000.0}, "memory_caps": {"max_bank": 1000}}
    assert not caps_unbound(alone, MemoryConfig(coreset_ratio=0.1, max_entries=2000))
    assert caps_unbound(alone, MemoryConfig(coreset_ratio=0.1, max_entries=1000))


def _sampled(category: str, seed: int, scores: list[float]) -> dict:
    run = _scored("rgb+depth", seed, scores, [0.0, 1.0])
    return {**run, "category": category}


def test_the_test_split_sampling_interval_resamples_goods_and_defects_and_is_zero_only_for_a_clean_split():
    clean = [_sampled("a", s, [0.1, 0.2, 0.1, 0.2, 0.9, 0.8, 0.7, 0.6]) for s in (0, 1)]
    entry = resampled_test_split(clean, "hard", draws=200)
    assert entry["value"] == 1.0 and entry["std"] == 0.0 and entry["low"] == entry["high"] == 1.0
    assert entry["test_samples"] == {"a": 8}
    # one good above two defects: the point value is 14/16 and other draws of the samples move it both ways
    mixed = [_sampled("a", 0, [0.1, 0.2, 0.1, 0.75, 0.9, 0.8, 0.7, 0.6]), _sampled("b", 0, [0.0, 0.0, 0.1, 0.2, 1, 1, 1, 1])]
    entry = resampled_test_split(mixed, "hard", draws=500)
    assert entry["value"] == pytest.approx((14 / 16 + 1) / 2)
    assert entry["std"] > 0.01 and entry["low"] < entry["value"] <= entry["high"] == 1.0
    assert "95 % within" in sampling_line(entry) and "16 in all" in sampling_line(entry)
    # another config, another preset, or runs without per-sample scores: nothing to resample
    assert resampled_test_split(mixed, "default") is None
    assert resampled_test_split(mixed, "hard", config="rgb") is None
    assert resampled_test_split([_run("rgb+depth", 0, "a", {"hard": {"fused": (0.9, 0.9, 0.9)}})], "hard") is None
