"""Operator feedback: confirmed parts land in the MVTec layout the readers read, all or nothing,
once each; the next preprocessing trains on the goods and caches the defects as the line split."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from PIL import Image

from bridgenet.data.cache import load_cached_split
from bridgenet.data.mvtec import scan_feedback_category
from bridgenet.data.readers import load_sample
from bridgenet.feedback import FeedbackError, Part, add_feedback, read_parts_csv
from tests.conftest import tiny_params

MINI = ("synth.categories=[bagel]", "data.categories=[bagel]", "synth.n_train=3", "synth.n_validation=2",
        "synth.n_test_good=2", "synth.n_test_per_defect=1", "data.image_size=64")


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """A one-category synthetic set (3 train goods), preprocessed: the source of the operator's parts."""
    from bridgenet.data.synth.dataset import synthesize
    from bridgenet.preprocess import run_preprocess

    root = tmp_path_factory.mktemp("mini")
    params = tiny_params(root, *MINI)
    synthesize(params.synth, Path(params.synth.out), workers=1)
    run_preprocess(params)
    return root


def params_for(mini: Path, tmp_path: Path, *extra: str):
    """The mini set's params with its own feedback root (and cache) under ``tmp_path``."""
    return tiny_params(mini, *MINI, f"feedback.root={tmp_path / 'feedback'}",
                       f"data.cache_dir={tmp_path / 'cache'}", *extra)


def source(mini: Path, split: str = "train", defect: str = "good", stem: str = "000") -> dict[str, Path]:
    folder = mini / "synth" / "bagel" / split / defect
    return {"rgb": folder / "rgb" / f"{stem}.png", "xyz": folder / "xyz" / f"{stem}.tiff",
            "gt": folder / "gt" / f"{stem}.png"}


def a_defect(mini: Path) -> tuple[str, dict[str, Path]]:
    kinds = sorted(p.name for p in (mini / "synth" / "bagel" / "test").iterdir() if p.name != "good")
    return kinds[0], source(mini, "test", kinds[0])


def files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_parts_land_in_the_mvtec_layout_and_read_back_as_given(mini, tmp_path):
    params = params_for(mini, tmp_path)
    good = source(mini, stem="001")
    _, bad = a_defect(mini)
    unmasked = source(mini, "test", "good", "001")
    result = add_feedback(params, "bagel", [
        Part(good["rgb"], good["xyz"], "good", note="confirmed at station 3"),
        Part(bad["rgb"], bad["xyz"], "defect", mask=bad["gt"], kind="dent"),
        Part(unmasked["rgb"], unmasked["xyz"], "defect"),  # no mask: the place is unknown
    ])
    base = tmp_path / "feedback" / "bagel"
    assert files_under(base) == ["feedback.csv", "test/dent/gt/000.png", "test/dent/rgb/000.png",
                                 "test/dent/xyz/000.tiff", "test/line_defect/rgb/000.png",
                                 "test/line_defect/xyz/000.tiff", "train/good/rgb/000.png", "train/good/xyz/000.tiff"]
    assert [row["kind"] for row in result.added] == ["good", "dent", "line_defect"] and not result.duplicates

    samples, problems = scan_feedback_category(base, "bagel")
    assert problems == []
    by_split = {(s.split, s.defect, s.stem): s for s in samples}
    assert sorted(by_split) == [("line", "dent", "000"), ("line", "line_defect", "000"),
                                ("train", "good", "feedback-000")]
    rgb, xyz, gt = load_sample(by_split[("train", "good", "feedback-000")])
    assert np.array_equal(rgb, np.asarray(Image.open(good["rgb"]).convert("RGB")))
    assert np.array_equal(xyz, tifffile.imread(good["xyz"])) and gt is None
    _, _, mask = load_sample(by_split[("line", "dent", "000")])
    assert mask is not None and np.array_equal(mask, np.asarray(Image.open(bad["gt"])) > 0)
    assert by_split[("line", "line_defect", "000")].gt_path is None  # no mask given: none invented
    assert by_split[("line", "dent", "000")].label == 1

    rows = list(csv.DictReader((base / "feedback.csv").open()))
    assert rows[0]["note"] == "confirmed at station 3" and rows[0]["rgb"] == "train/good/rgb/000.png"
    assert rows[1]["gt"] == "test/dent/gt/000.png" and len(rows[1]["mask_sha256"]) == 64
    assert rows[0]["rgb_source"] == str(good["rgb"])


def test_a_list_with_one_bad_row_copies_nothing_and_names_the_row(mini, tmp_path):
    params = params_for(mini, tmp_path)
    good, other = source(mini, stem="000"), source(mini, stem="001")
    small = tmp_path / "small.tiff"
    tifffile.imwrite(small, np.ones((32, 32, 3), np.float32), photometric="rgb")
    listing = tmp_path / "parts.csv"
    listing.write_text("rgb,xyz,verdict\n"
                       f"{good['rgb']},{good['xyz']},good\n"
                       f"{other['rgb']},{small.name},good\n"  # relative to the CSV
                       f"{other['rgb']},{other['xyz']},maybe\n")
    with pytest.raises(FeedbackError) as caught:
        add_feedback(params, "bagel", read_parts_csv(listing))
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith(f"{listing}, line 3: xyz {small} is 32x32, its rgb ")
    assert problems[1] == f"{listing}, line 4: verdict 'maybe': expected one of good, defect"
    assert not (tmp_path / "feedback").exists()

    from bridgenet.cli import main

    result = CliRunner().invoke(main, ["feedback", "-c", "bagel", "--csv", str(listing), *as_cli(params)])
    assert result.exit_code == 1 and "line 3" in result.output and "line 4" in result.output
    assert not (tmp_path / "feedback").exists()


@pytest.mark.parametrize("part, says", [
    (lambda s, d: Part(s["rgb"], s["xyz"], "good", mask=d["gt"]), "a good part has no mask"),
    (lambda s, d: Part(d["rgb"], d["xyz"], "defect", kind="good"), "kind 'good'"),
    (lambda s, d: Part(d["rgb"], d["xyz"], "defect", mask=s["rgb"].with_name("nothing.png")), "is not a file"),
    (lambda s, d: Part(s["xyz"], s["rgb"], "good"), "the readers take .png files only"),
])
def test_each_refusal_names_what_is_wrong(mini, tmp_path, part, says):
    _, bad = a_defect(mini)
    with pytest.raises(FeedbackError, match=says):
        add_feedback(params_for(mini, tmp_path), "bagel", [part(source(mini), bad)])
    assert not (tmp_path / "feedback").exists()


def test_a_good_part_without_an_object_is_refused_before_training_would_be(mini, tmp_path):
    rgb, xyz = tmp_path / "empty.png", tmp_path / "empty.tiff"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(rgb)
    u, v = np.meshgrid(np.linspace(-0.05, 0.05, 64), np.linspace(-0.05, 0.05, 64))
    tifffile.imwrite(xyz, np.dstack([u, v, np.full_like(u, 0.4)]).astype(np.float32), photometric="rgb")
    with pytest.raises(FeedbackError, match="no object above the support plane"):
        add_feedback(params_for(mini, tmp_path), "bagel", [Part(rgb, xyz, "good")])


def test_an_unknown_category_is_refused(mini, tmp_path):
    good = source(mini)
    with pytest.raises(ValueError, match="unknown category 'teapot'"):
        add_feedback(params_for(mini, tmp_path), "teapot", [Part(good["rgb"], good["xyz"], "good")])


def test_a_part_already_recorded_is_a_duplicate_and_numbers_continue(mini, tmp_path):
    params = params_for(mini, tmp_path)
    first, second = source(mini, stem="000"), source(mini, stem="001")
    add_feedback(params, "bagel", [Part(first["rgb"], first["xyz"], "good")], now="2025-01-01T00:00:00Z")
    again = add_feedback(params, "bagel", [Part(first["rgb"], first["xyz"], "defect"),  # same digests
                                           Part(second["rgb"], second["xyz"], "good"),
                                           Part(second["rgb"], second["xyz"], "good")])  # twice in one batch
    assert [d["recorded_as"] for d in again.duplicates] == [
        "good train/good/rgb/000.png (2025-01-01T00:00:00Z)", f"good train/good/rgb/001.png ({again.added[0]['time']})"]
    assert [row["rgb"] for row in again.added] == ["train/good/rgb/001.png"]
    goods = tmp_path / "feedback" / "bagel" / "train" / "good"
    assert files_under(goods) == ["rgb/000.png", "rgb/001.png", "xyz/000.tiff", "xyz/001.tiff"]
    (goods / "rgb" / "007.png").write_bytes((goods / "rgb" / "000.png").read_bytes())  # a number taken by hand
    third = source(mini, stem="002")
    added = add_feedback(params, "bagel", [Part(third["rgb"], third["xyz"], "good")]).added
    assert added[0]["rgb"] == "train/good/rgb/008.png"  # the next free number, nothing overwritten
    assert len(list(csv.DictReader((goods.parent.parent / "feedback.csv").open()))) == 3


def as_cli(params) -> list[str]:
    keys = ("synth.out", "data.root", "data.cache_dir", "feedback.root", "data.categories")
    flat = params.flat()
    return [arg for key in keys for arg in ("--set", f"{key}={json.dumps(flat[key])}")]


def test_the_cli_takes_one_part_and_refuses_a_half_given_one(mini, tmp_path):
    from bridgenet.cli import main

    params = params_for(mini, tmp_path)
    _, bad = a_defect(mini)
    args = ["feedback", "-c", "bagel", "--rgb", str(bad["rgb"]), "--xyz", str(bad["xyz"]), "--verdict", "defect",
            "--mask", str(bad["gt"]), *as_cli(params)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["added"][0]["gt"] == "test/line_defect/gt/000.png" and out["duplicates"] == []
    assert "dvc add" in out["next"]
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and json.loads(again.output[again.output.index("{"):])["duplicates"]
    half = CliRunner().invoke(main, ["feedback", "-c", "bagel", "--rgb", str(bad["rgb"]), *as_cli(params)])
    assert half.exit_code == 2 and "--verdict" in half.output


def test_preprocess_trains_on_the_feedback_goods_and_caches_the_defects_apart(mini, tmp_path):
    from bridgenet.preprocess import run_preprocess

    params = params_for(mini, tmp_path)
    before = load_cached_split(mini / "cache", "bagel", "train")  # the mini set's own cache
    _, bad = a_defect(mini)
    good = source(mini, "validation", "good", "000")  # a good part the training split lacks
    add_feedback(params, "bagel", [Part(good["rgb"], good["xyz"], "good"),
                                   Part(bad["rgb"], bad["xyz"], "defect", mask=bad["gt"]),
                                   Part(bad["rgb"], source(mini, "test", "good", "000")["xyz"], "defect")])
    summary = run_preprocess(params)
    assert summary["failed"] == 0
    train = load_cached_split(params.data.cache_dir, "bagel", "train", params.data)
    assert len(train) == len(before) + 1 and train.stems[-1] == "feedback-000"
    assert train.labels.sum() == 0
    assert len(load_cached_split(params.data.cache_dir, "bagel", "validation", params.data)) == 2
    test = load_cached_split(params.data.cache_dir, "bagel", "test", params.data)
    assert test.fingerprint() == load_cached_split(mini / "cache", "bagel", "test").fingerprint()  # unchanged
    line = load_cached_split(params.data.cache_dir, "bagel", "line", params.data)
    assert line.labels.tolist() == [1, 1] and line.defects == ["line_defect", "line_defect"]
    assert line.known_masks().tolist() == [True, False]
