"""Training-free probe of the memory head: embedding and input settings judged in minutes.

    python -m bench.memory_probe --data-root ROOT [--categories cable_gland ...] [--set key=value ...]
    python -m bench.memory_probe --synthetic [--set key=value ...]
        [--work bench/work-probe] [--out OUT] [--name NAME] [--threads 1]

For each category the network of the given settings is built untrained; its memory bank
and the calibration of its score components are made by training's own code (the
trainer's setup and :func:`bridgenet.training.finish.finish` on the validation split), and
the test split is scored with the ``memory`` scorer by evaluation's own path. The
discriminator never takes a step, so only what the memory head reads counts: backbone
levels (``model.layers``), neighbourhood (``model.patch_size``), the input images
(``data.crop``, ``data.crop_margin``, ``model.depth_input`` ...) and the bank
(``model.memory.*``). A probe takes one to three minutes per category on one core,
against 2 to 15 minutes of training; a setting that loses here rarely gains once trained,
while one that wins must still be trained and measured (``bench.real``, ``bench.accuracy``).

``--data-root``: any MVTec 3D-AD root, preprocessed into ``--work`` as ``bench.real`` does
(one cache per ``data`` setting). ``--synthetic``: the accuracy bench's two rendered presets
under ``--work`` (rendered on first use), scored on the default and the hard test splits.

Prints each category's image AUROC, AU-PRO@0.3 and image AUROC per defect type, and the
means; with ``--out``, writes ``memory_probe_<name>.json``. These read test splits: use
them to discard settings, and say so where a kept one was chosen with them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, machine_info, portable_command
from bench.results import write_results

PROBE_SETS = ("model.scorer=memory",)


def probe_model(params: Any, category: str) -> Any:
    """The untrained network of ``params`` for ``category`` with its memory bank and calibration
    made by training's own code, as a :class:`~bridgenet.model.contract.TrainedModel`."""
    from bridgenet.data.batch import resolve_device
    from bridgenet.data.cache import load_cached_split
    from bridgenet.model.contract import ModelMeta, TrainedModel
    from bridgenet.training.finish import finish
    from bridgenet.training.trainer import Trainer
    from bridgenet.training.validation import build_validation_set

    device = resolve_device("cpu")
    train = load_cached_split(params.data.cache_dir, category, "train", params.data)
    validation = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    network = Trainer(params, train, device).network.eval()
    done = finish(network, build_validation_set(validation, params, network.modalities), device,
                  params.eval.batch_size, params.train.threshold_quantile)
    return TrainedModel(network, ModelMeta(category=category, params=params, threshold=done.threshold,
                                           pixel_threshold=done.pixel_threshold, metrics=done.metrics))


def probe_category(params: Any, category: str, tests: dict[str, Path]) -> dict[str, Any]:
    """One category: :func:`probe_model`, then each of ``tests`` (name -> cache folder holding the
    category's test split) scored by its memory head through evaluation's own path."""
    from bridgenet.data.batch import resolve_device
    from bridgenet.data.cache import load_cached_split
    from bridgenet.evaluate import evaluate_category

    if params.model.scorer != "memory":  # threshold and validation figures follow the params' scorer
        raise ValueError(f"memory probe: params need model.scorer=memory (PROBE_SETS), got {params.model.scorer!r}")
    started = time.perf_counter()
    model = probe_model(params, category)
    result: dict[str, Any] = {"category": category, "bank": {m: int(model.network.memory.bank(m).shape[0])
                                                             for m in model.network.modalities},
                              "validation_image_auroc": model.meta.metrics.get("val_image_auroc"), "tests": {}}
    for name, cache in tests.items():
        split = load_cached_split(cache, category, "test", params.data)
        evaluation, _ = evaluate_category(params, model, split, resolve_device("cpu"))
        result["tests"][name] = {"image_auroc": evaluation.metrics["image_auroc"],
                                 "aupro_30": evaluation.metrics["aupro_30"], "per_defect": evaluation.per_defect}
    result["seconds"] = time.perf_counter() - started
    return result


def means(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per test set: image AUROC and AU-PRO@0.3 averaged over the categories."""
    names = results[0]["tests"] if results else {}
    return {name: {key: float(np.mean([r["tests"][name][key] for r in results])) for key in ("image_auroc", "aupro_30")}
            for name in names}


def real_setup(data_root: Path, work: Path, sets: list[str], categories: list[str] | None) -> tuple[Any, list[str]]:
    """Params for an MVTec 3D-AD root with the probe's settings, preprocessed into ``work``."""
    from bench.real_runs import base_params, cache_dir, find_categories
    from bridgenet.config import params_from_dict
    from bridgenet.preprocess import run_preprocess

    base = base_params(data_root, [*PROBE_SETS, *sets])
    raw = base.to_dict()
    raw["data"]["categories"] = categories or find_categories(data_root)
    raw["data"]["cache_dir"] = str(cache_dir(work, base))
    params = params_from_dict(raw, source=f"memory probe of {data_root} with --set {sets}")
    run_preprocess(params)
    return params, list(params.data.categories)


def synthetic_setup(work: Path, sets: list[str]) -> tuple[Any, dict[str, Path]]:
    """Params for the accuracy bench's default preset with the probe's settings, and both presets'
    test caches (a ``data`` setting gets caches of its own, preprocessed from the same renders)."""
    from bench.accuracy_runs import PRESETS, data_overrides, prepare_data
    from bench.real_runs import digest
    from bridgenet.config import load_params, params_from_dict
    from bridgenet.preprocess import run_preprocess

    prepare_data(work)
    data_sets = [s for s in sets if s.startswith("data.")]
    caches: dict[str, Path] = {}
    for preset in PRESETS:
        params = load_params(REPO / "params.yaml", [*data_overrides(work, preset), *data_sets])
        if data_sets:
            raw = params.to_dict()
            raw["data"]["cache_dir"] = f"{params.data.cache_dir}-{digest(sorted(data_sets))[:10]}"
            params = params_from_dict(raw, source=f"memory probe, {preset} preset, --set {data_sets}")
            run_preprocess(params)
        caches[preset] = Path(params.data.cache_dir)
    params = load_params(REPO / "params.yaml", [*data_overrides(work, "default"), *PROBE_SETS, *sets])
    raw = params.to_dict()
    raw["data"]["cache_dir"] = str(caches["default"])
    return params_from_dict(raw, source=f"memory probe, synthetic, --set {sets}"), caches


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-root", type=Path, help="an MVTec 3D-AD root")
    source.add_argument("--synthetic", action="store_true", help="the accuracy bench's two presets")
    parser.add_argument("--categories", nargs="+", help="--data-root: these folders (default: every one)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override (repeatable)")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work-probe")
    parser.add_argument("--out", type=Path, help="folder for memory_probe_<name>.json")
    parser.add_argument("--name", default="probe")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.synthetic:
        params, tests = synthetic_setup(args.work, args.sets)
        categories = list(params.data.categories)
    else:
        params, categories = real_setup(args.data_root, args.work, args.sets, args.categories)
        tests = {"test": Path(params.data.cache_dir)}
    results = []
    for category in categories:
        result = probe_category(params, category, tests)
        results.append(result)
        cells = "; ".join(f"{name} {t['image_auroc']:.3f} / {t['aupro_30']:.3f} "
                          + " ".join(f"{d} {v:.3f}" for d, v in t["per_defect"].items())
                          for name, t in result["tests"].items())
        print(f"{category}: {cells} ({result['seconds']:.0f} s)", flush=True)
    summary = means(results)
    for name, cell in summary.items():
        print(f"mean {name}: image AUROC {cell['image_auroc']:.4f}, AU-PRO@0.3 {cell['aupro_30']:.4f} "
              f"({' '.join(args.sets) or 'params.yaml'})")
    if args.out:
        command = portable_command("memory_probe", argv, {"--data-root": "ROOT", "--work": "WORK", "--out": "OUT"})
        write_results(args.out / f"memory_probe_{args.name}.json",
                      {"machine": machine_info(command, torch=torch.__version__, threads=args.threads),
                       "sets": args.sets, "means": summary, "categories": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
