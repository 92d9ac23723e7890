"""Does the drift monitor see a darker line, or a scanner losing points? A trained model meets fresh
goods, as rendered, darkened, or with points dropped from their scans.

    python -m bench.drift --model MODEL --work WORK [--darken 0.05 0.10 0.15 0.30] [--dropout 0.02 0.05 0.10]
                          [--goods 100] [--validation 60] [--seed 1 2 3] [--out bench/results]

``--model`` is a trained ``model.pt`` of a synthetic category. Per data seed of ``--seed``,
the bench renders a fresh synthetic data set of that category with the model's own
``synth`` settings but that seed (other goods than the model was trained and validated
on), ``--validation`` validation goods and ``--goods`` test goods (one training part and
one part per defect type: neither is used), and preprocesses it with the model's data settings into a cache
under ``--work``: the monitor's reference is the model's scores of these validation goods.

Each variant is the test goods as rendered (darkening 0) or with the RGB image darkened by
``d`` (each of ``--darken``: ``rint(rgb * (1 - d))``, uint8; the point clouds unchanged), a
line whose light has dimmed, or with a share ``p`` of each scan's points lost (each of
``--dropout``: every pixel's point set to 0, the sensor's "no measurement", with probability
``p``, seeded by the file name; the images unchanged), a scanner whose lens gathers dust. A variant's goods go through folder predict
(:func:`bridgenet.batch_predict.predict_folder`) into a prediction log of their own, and
one pass of the drift monitor (:func:`bridgenet.monitor.watch.monitor_category`, no MLflow
run) judges that log with the limits of ``params.yaml``'s ``monitor`` section. Per variant:
the status, the limits crossed, PSI, the KS p-value, the flagged rate and its ratio to
the threshold's promise, the no_object rate, the window's mean and median score, brightness
and missing points against the reference, the window size and the pass's figure
(``WORK/.../variants/<variant>/drift.png``). Prints a table and writes ``--out/drift-cpu.json``,
with the share of seeds whose pass said drift per darkening and per dropout.
A seed's data and cache are kept in ``--work`` and reused by a later run with the same sizes.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import PARAMS, RESULTS, machine_info, portable_command, portable_path
from bench.results import write_results

LOGGER = logging.getLogger(__name__)
RESULTS_FILE = "drift-cpu.json"
VARIANT_KEYS = ("status", "crossed", "psi", "psi_bins", "ks_statistic", "ks_pvalue", "flag_rate",
                "flag_rate_limit", "flag_rate_ratio", "no_object_rate", "score_median", "reference_median",
                "n_ok", "n_no_object", "n_error", "n_reference", "brightness_median", "reference_brightness_median",
                "brightness_shift", "brightness_ks_pvalue", "missing_points_median",
                "reference_missing_points_median", "missing_points_increase")


def darken(rgb: np.ndarray, amount: float) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 with every channel times ``1 - amount``, rounded: same shape, uint8."""
    if not 0.0 <= amount < 1.0:
        raise ValueError(f"darken: amount must be in [0, 1), got {amount}")
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ValueError(f"darken: expected a uint8 image, got {rgb.dtype}")
    return np.rint(rgb.astype(np.float64) * (1.0 - amount)).astype(np.uint8)


def darkenings(values: Sequence[float]) -> list[float]:
    """The variants' darkenings: 0 (the goods as rendered) first, then ``values`` ascending, each once."""
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise ValueError(f"--darken: each value must be in [0, 1) (0.15 = 15 % darker), got {bad}")
    return sorted({0.0, *(round(float(v), 6) for v in values)})


def dropouts(values: Sequence[float]) -> list[float]:
    """The dropout variants: ``values`` above 0 ascending, each once (0 is the goods as rendered, run anyway)."""
    bad = [v for v in values if not 0.0 <= v < 1.0]
    if bad:
        raise ValueError(f"--dropout: each value must be in [0, 1) (0.05 = 5 % of the points lost), got {bad}")
    return sorted({round(float(v), 6) for v in values} - {0.0})


def drop_points(xyz: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``xyz`` (H, W, 3) with each pixel's point lost (all three coordinates 0) with probability ``share``."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"drop_points: share must be in [0, 1), got {share}")
    out = np.array(xyz, copy=True)
    out[rng.random(out.shape[:2]) < share] = 0.0
    return out


def variant_name(amount: float, kind: str = "darker") -> str:
    """``darker-0.15``, ``dropout-0.05``; ``darker-0.00`` for the goods as rendered: a folder and log name."""
    return f"{kind}-{amount:.2f}"


def bench_params(model_params: Any, category: str, work: Path, validation: int, goods: int, seed: int) -> Any:
    """The model's own params (of ``category``) with the fresh data set's synth counts and seed,
    folders under ``work`` and ``params.yaml``'s ``monitor`` section (its limits as the project ships them)."""
    from bridgenet.config import load_params
    from bridgenet.config.params import apply_overrides, params_from_dict

    raw = model_params.model_dump(mode="json")
    raw["monitor"] = load_params(PARAMS).monitor.model_dump(mode="json")
    overrides = [
        f"synth.categories=[{category}]", f"data.categories=[{category}]", f"synth.seed={seed}",
        "synth.n_train=1", f"synth.n_validation={validation}", f"synth.n_test_good={goods}",
        "synth.n_test_per_defect=1", "synth.preview=false", f"synth.out={work / 'data'}",
        f"data.root={work / 'data'}", f"data.cache_dir={work / 'cache'}",
        f"feedback.root={work / 'feedback'}", f"eval.reports_dir={work / 'reports'}",
        f"tracking.uri=sqlite:///{work / 'absent' / 'mlflow.db'}",
    ]
    return params_from_dict(apply_overrides(raw, overrides), source="bench.drift", overrides=tuple(overrides))


def render(params: Any) -> Path:
    """The fresh data set under ``synth.out``, rendered once per synth settings (``synth.json`` says which)."""
    from bridgenet.data.synth.dataset import synthesize

    out = Path(params.synth.out)
    stamp = out / "synth.json"
    settings = params.synth.model_dump(mode="json")
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        LOGGER.info("%s: rendered before with these settings", out)
        return out
    synthesize(params.synth, out)
    stamp.write_text(json.dumps(settings, indent=1) + "\n")
    return out


def good_pairs(root: Path, category: str) -> list[tuple[Path, Path]]:
    """The (rgb, xyz) files of ``root/<category>/test/good`` (:func:`bridgenet.predict.find_pairs`)."""
    from bridgenet.predict import find_pairs

    folder = root / category / "test" / "good"
    pairs = find_pairs(folder)
    if not pairs:
        raise FileNotFoundError(f"{folder}/rgb: no test goods")
    return pairs


def darkened_pairs(pairs: list[tuple[Path, Path]], amount: float, folder: Path) -> list[tuple[Path, Path]]:
    """``pairs`` with each RGB image darkened by ``amount`` into ``folder/rgb`` (the xyz files as they are)."""
    from PIL import Image

    if amount == 0.0:
        return pairs
    (folder / "rgb").mkdir(parents=True, exist_ok=True)
    out = []
    for rgb, xyz in pairs:
        target = folder / "rgb" / rgb.name
        with Image.open(rgb) as image:
            Image.fromarray(darken(np.asarray(image.convert("RGB")), amount)).save(target)
        out.append((target, xyz))
    return out


def dropped_pairs(pairs: list[tuple[Path, Path]], share: float, folder: Path) -> list[tuple[Path, Path]]:
    """``pairs`` with ``share`` of each scan's points lost (:func:`drop_points`, seeded by the file's
    name) into ``folder/xyz`` (the RGB files as they are)."""
    import zlib

    import tifffile

    (folder / "xyz").mkdir(parents=True, exist_ok=True)
    out = []
    for rgb, xyz in pairs:
        target = folder / "xyz" / xyz.name
        rng = np.random.default_rng(zlib.crc32(xyz.name.encode()))
        tifffile.imwrite(target, drop_points(tifffile.imread(xyz), share, rng), photometric="minisblack",
                         planarconfig="contig")
        out.append((rgb, target))
    return out


def remove_log(path: Path) -> None:
    """A variant's log from an earlier run, with SQLite's WAL files: each pass sees this run's records only."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        file.unlink(missing_ok=True)


def run_variant(params: Any, model_file: Path, category: str, pairs: list[tuple[Path, Path]], amount: float,
                folder: Path, kind: str = "darker") -> dict[str, Any]:
    """Folder predict of ``pairs`` darkened by ``amount`` (``kind`` darker) or with that share of their
    points lost (``kind`` dropout) into a log of its own, then one monitor pass."""
    import pandas as pd

    from bridgenet.batch_predict import predict_folder
    from bridgenet.monitor.watch import monitor_category

    log = folder / "predictions.sqlite"
    remove_log(log)
    served = darkened_pairs(pairs, amount, folder) if kind == "darker" else dropped_pairs(pairs, amount, folder)
    csv, errors = predict_folder(model_file, served, folder / "predict", heatmaps=False, log=log,
                                 workers=params.predict.workers, batch_size=params.predict.batch_size,
                                 threads=params.predict.threads)
    scores = pd.read_csv(csv)["score"].dropna()
    watched = params.model_copy(update={"monitor": params.monitor.model_copy(update={"log": str(log)})})
    summary = monitor_category(watched, category, model_ref=str(model_file), track=False)
    figure = folder / "drift.png"
    shutil.copyfile(summary["files"]["figure"], figure)
    shutil.copyfile(summary["files"]["summary"], folder / "drift.json")
    return {"darken": amount if kind == "darker" else 0.0, "dropout": amount if kind == "dropout" else 0.0,
            "variant": variant_name(amount, kind), "predict_errors": errors,
            "score_mean": float(scores.mean()) if len(scores) else None,
            **{key: summary[key] for key in VARIANT_KEYS}, "figure": figure}


def table(runs: list[dict[str, Any]]) -> str:
    """Every seed's variants as a plain text table."""
    def num(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    header = (f"{'seed':>4} {'darker':>6} {'drop':>5} {'status':>6} {'crossed':>34} {'PSI':>6} {'KS p':>8} "
              f"{'flagged':>7} {'ratio':>5} {'no_obj':>6} {'mean':>6} {'median':>6} {'light':>6} {'holes':>6} {'n':>4}")
    lines = [header]
    for run in runs:
        for v in run["variants"]:
            lines.append(
                f"{run['synth_seed']:>4} {v['darken']:>6.0%} {v.get('dropout', 0.0):>5.0%} {v['status']:>6} "
                f"{','.join(v['crossed']) or '-':>34} "
                f"{num(v['psi'], '.3f'):>6} {num(v['ks_pvalue'], '.2g'):>8} {num(v['flag_rate'], '.2f'):>7} "
                f"{num(v['flag_rate_ratio'], '.1f'):>5} {num(v['no_object_rate'], '.2f'):>6} "
                f"{num(v['score_mean'], '.3f'):>6} {num(v['score_median'], '.3f'):>6} "
                f"{num(v.get('brightness_shift'), '+.1%'):>6} {num(v.get('missing_points_increase'), '+.1%'):>6} "
                f"{v['n_ok']:>4}")
    return "\n".join(lines)


def detected(runs: list[dict[str, Any]]) -> dict[str, str]:
    """Per darkening (``"0.15"``) and dropout (``"dropout 0.05"``), in how many seeds' passes the
    monitor said drift (``"2/3"``)."""
    counts: dict[str, list[int]] = {}
    for run in runs:
        for v in run["variants"]:
            key = f"dropout {v['dropout']:.2f}" if v.get("dropout") else f"{v['darken']:.2f}"
            hits = counts.setdefault(key, [0, 0])
            hits[0] += v["status"] == "drift"
            hits[1] += 1
    return {key: f"{drift}/{total}" for key, (drift, total) in counts.items()}


def run_seed(model: Any, model_file: Path, work: Path, seed: int, amounts: list[float], validation: int,
             goods: int, losses: Sequence[float] = ()) -> dict[str, Any]:
    """One fresh data set (synth seed ``seed``) and every variant's monitor pass over it."""
    from bridgenet.preprocess import run_preprocess

    category = model.category
    base = work / f"{category}-seed{seed}-val{validation}-goods{goods}"
    params = bench_params(model.params, category, base, validation, goods, seed)
    render(params)
    run_preprocess(params)
    pairs = good_pairs(Path(params.data.root), category)
    variants = [run_variant(params, model_file, category, pairs, amount, base / "variants" / variant_name(amount))
                for amount in amounts]
    variants += [run_variant(params, model_file, category, pairs, share,
                             base / "variants" / variant_name(share, "dropout"), "dropout") for share in losses]
    for v in variants:
        v["figure"] = portable_path(v["figure"], {"WORK": work})
    return {"synth_seed": seed, "served_goods": len(pairs), "variants": variants}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.drift", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a trained model.pt of a synthetic category")
    parser.add_argument("--work", type=Path, default=Path("bench/work/drift"), help="scratch folder")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"where {RESULTS_FILE} goes")
    parser.add_argument("--darken", type=float, nargs="+", default=[0.15],
                        help="RGB darkenings, each a variant (0.15 = 15 %% darker); 0 always runs")
    parser.add_argument("--dropout", type=float, nargs="+", default=[],
                        help="shares of each scan's points lost, each a variant (0.05 = 5 %% of the points)")
    parser.add_argument("--goods", type=int, default=100, help="served goods per variant")
    parser.add_argument("--validation", type=int, default=60, help="validation goods: the monitor's reference")
    parser.add_argument("--seed", type=int, nargs="+", default=[1],
                        help="synthetic data seeds, a fresh data set each (the default data uses 0)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    amounts, losses = darkenings(args.darken), dropouts(args.dropout)
    if args.goods < 1 or args.validation < 2:
        parser.error("--goods must be >= 1 and --validation >= 2")

    import torch

    from bridgenet.config import load_params
    from bridgenet.files import sha256_file
    from bridgenet.model.io import load_model

    model_file = args.model.resolve()
    model = load_model(model_file)
    limits = load_params(PARAMS).monitor
    if limits.min_samples > args.goods:
        LOGGER.warning("--goods %d is below monitor.min_samples %d: every pass will say not enough data",
                       args.goods, limits.min_samples)
    work = args.work.resolve()
    runs = [run_seed(model, model_file, work, seed, amounts, args.validation, args.goods, losses)
            for seed in dict.fromkeys(args.seed)]
    print(table(runs))
    result = {
        "machine": machine_info(portable_command("drift", argv, {"--model": "MODEL", "--work": "WORK", "--out": None}),
                                torch=torch.__version__),
        "model": {"file": "MODEL", "category": model.category, "digest": sha256_file(model_file),
                  "threshold": model.threshold, "threshold_quantile": model.params.train.threshold_quantile,
                  "trained_on": {"synth_seed": model.params.synth.seed, "n_train": model.params.synth.n_train,
                                 "n_validation": model.params.synth.n_validation}},
        "data": {"validation_goods": args.validation, "served_goods": args.goods,
                 "image_size": model.params.synth.image_size},
        "limits": limits.model_dump(mode="json", exclude={"log"}),
        "detected": detected(runs),
        "runs": runs,
    }
    write_results(args.out / RESULTS_FILE, result)
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main()
