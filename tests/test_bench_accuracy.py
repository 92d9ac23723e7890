"""The accuracy benchmark's bookkeeping: mean/std over seeds, the mean category, the targets."""

from __future__ import annotations

import json

import pytest

from bench.accuracy import (
    CONFIGS,
    check_targets,
    markdown,
    published_runs,
    readme_block,
    reproduce_command,
    seed_work_results,
    summarize,
    update_readme,
)


def _run(config: str, seed: int, category: str, image: float, geometric: float, appearance: float) -> dict:
    return {"config": config, "seed": seed, "category": category, "train_seconds": 10.0,
            "metrics": {"image_auroc": image, "pixel_auroc": 0.9, "aupro_30": 0.8, "aupro_1": 0.5},
            "families": {"geometric": geometric, "appearance": appearance, "both": 1.0}}


def test_mean_and_std_over_seeds_per_category_and_over_categories():
    runs = [_run("rgb+depth", 0, "a", 0.90, 1.0, 0.8), _run("rgb+depth", 1, "a", 1.00, 1.0, 0.9),
            _run("rgb+depth", 0, "b", 0.80, 0.9, 0.9), _run("rgb+depth", 1, "b", 0.80, 0.9, 0.9)]
    table = summarize(runs, ["rgb+depth", "rgb"], ["a", "b"])
    assert "rgb" not in table  # nothing ran
    cell = table["rgb+depth"]["categories"]["a"]["image_auroc"]
    assert cell["mean"] == pytest.approx(0.95) and cell["std"] == pytest.approx(0.05) and cell["n"] == 2
    overall = table["rgb+depth"]["mean"]
    # per seed: (0.9 + 0.8) / 2 = 0.85 and (1.0 + 0.8) / 2 = 0.9
    assert overall["image_auroc"]["mean"] == pytest.approx(0.875)
    assert overall["image_auroc"]["std"] == pytest.approx(0.025)
    assert overall["image_auroc_appearance"]["mean"] == pytest.approx((0.85 + 0.9) / 2)
    assert "| rgb+depth | **mean** | 0.875 ± 0.025 |" in markdown(table, ["a", "b"])


def test_a_seed_missing_a_category_stays_out_of_the_mean_category():
    runs = [_run("rgb+depth", 0, "a", 0.9, 1, 1), _run("rgb+depth", 0, "b", 0.7, 1, 1),
            _run("rgb+depth", 1, "a", 0.1, 1, 1)]
    table = summarize(runs, ["rgb+depth"], ["a", "b"])
    assert table["rgb+depth"]["seeds_complete"] == [0]
    assert table["rgb+depth"]["mean"]["image_auroc"]["mean"] == pytest.approx(0.8)
    assert table["rgb+depth"]["categories"]["a"]["image_auroc"]["n"] == 2


def test_targets_compare_fusion_with_the_modality_blind_to_each_family():
    runs = [_run("rgb+depth", 0, "a", 0.98, 0.99, 0.97), _run("rgb", 0, "a", 0.9, 0.6, 0.99),
            _run("depth", 0, "a", 0.9, 0.99, 0.6)]
    lines = check_targets(summarize(runs, ["rgb+depth", "rgb", "depth"], ["a"]))
    assert lines[0].startswith("PASS: rgb+depth mean image AUROC 0.980")
    assert lines[1].startswith("PASS: geometric defects (unseen by rgb)")
    assert lines[2].startswith("PASS: appearance defects (unseen by depth)")
    worse = [_run("rgb+depth", 0, "a", 0.96, 0.5, 0.97), *runs[1:]]
    lines = check_targets(summarize(worse, ["rgb+depth", "rgb", "depth"], ["a"]))
    assert lines[0].startswith("FAIL") and lines[1].startswith("FAIL") and lines[2].startswith("PASS")


def test_published_runs_fill_only_what_the_work_folder_lacks_and_only_under_the_same_params(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    out.mkdir()
    work.mkdir()
    same = {**_run("rgb", 0, "a", 0.9, 0.6, 0.99), "params_digest": "abc"}
    other = {**_run("rgb", 1, "a", 0.5, 0.5, 0.5), "params_digest": "old"}
    kept = {**_run("depth", 0, "a", 0.7, 0.99, 0.6), "params_digest": "abc"}
    (out / "accuracy.json").write_text(json.dumps({"runs": [same, other, kept]}))
    (work / "depth-seed0-a.json").write_text(json.dumps({**kept, "metrics": {"image_auroc": 0.1}}))

    assert seed_work_results(work, published_runs(out, "abc")) == 1
    assert json.loads((work / "rgb-seed0-a.json").read_text()) == same
    assert not (work / "rgb-seed1-a.json").exists()  # another params.yaml
    assert json.loads((work / "depth-seed0-a.json").read_text())["metrics"] == {"image_auroc": 0.1}
    assert published_runs(tmp_path / "nowhere", "abc") == []


def test_the_readme_block_names_the_command_machine_and_date_and_replaces_only_its_markers(tmp_path):
    command = reproduce_command([0, 1, 2], list(CONFIGS), None)
    assert command == "python bench/accuracy.py --seeds 0 1 2"
    assert reproduce_command([0], ["rgb"], ["a"]) == "python bench/accuracy.py --seeds 0 --configs rgb --categories a"
    machine = {"command": command, "cpu": "Some CPU", "cores": 2, "torch": "2.14.1", "date": "2026-12-01"}
    table = summarize([_run("rgb+depth", 0, "a", 0.98, 0.99, 0.97)], ["rgb+depth"], ["a"])
    block = readme_block(table, ["a"], check_targets(table), [0], machine)
    assert block.startswith("`python bench/accuracy.py --seeds 0 1 2` on Some CPU, 2 cores, torch 2.14.1, 2026-12-01.")
    readme = tmp_path / "README.md"
    readme.write_text("head\n<!-- accuracy:start -->\nold table\n<!-- accuracy:end -->\ntail\n")
    assert update_readme(block, readme)
    text = readme.read_text()
    assert "old table" not in text and "| rgb+depth | **mean** | 0.980 |" in text
    assert text.startswith("head\n<!-- accuracy:start -->\n`python") and text.endswith("<!-- accuracy:end -->\ntail\n")
    readme.write_text("no markers\n")
    assert not update_readme(block, readme) and readme.read_text() == "no markers\n"
