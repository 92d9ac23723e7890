"""How large must the memory bank be? Saved models' banks cut to their first K greedy picks, or rebuilt.

A greedy k-centre selection keeps its entries in the order it picked them, and the first K
picks are the selection it would have made for K (same candidates, same start), so one
trained model answers for every smaller cap without training again. For each model and
each K: each modality's bank cut to its first K entries, calibration and both thresholds
set again on the validation set by training's rules (:func:`bridgenet.training.finish.finish`),
then the test split scored by evaluation's own path; plus the fused forward's time per
sample at batch 8 on one thread (process time, so other work on the machine counts less).

    python -m bench.bank_size --cache CACHE --sizes 4096 2048 1024 --models M1 M2 M3 --out bench/results
                              [--rebuild] [--name NAME]

``--cache``: the preprocessing cache the models were trained on (its validation and test
splits). ``--rebuild``: each model's bank is instead selected again at each size from its
training split (embedded once per model) by training's own code (:class:`bridgenet.training.trainer.Trainer` builds it
before the first step, from embeddings no training step changes, with its own seeded
generator; epochs are chosen on the discriminator alone), so sizes above the trained cap are
measured as training at them would give them. Writes ``bank_size.json`` and ``bank_size.md``
to ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import bench_command, machine_info
from bench.results import write_results


def cut_banks(network: Any, size: int) -> None:
    """Keep each modality's first ``size`` bank entries (the greedy selection's first picks)."""
    for modality in network.modalities:
        setattr(network.memory, f"{modality}_bank", network.memory.bank(modality)[:size].contiguous())


def forward_ms(network: Any, rgb: torch.Tensor, depth: torch.Tensor, repeats: int = 5) -> float:
    """Median process time (ms) per sample of the eval forward on one batch, one torch thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            network(rgb, depth)
            times = []
            for _ in range(repeats):
                start = time.process_time()
                network(rgb, depth)
                times.append(time.process_time() - start)
    finally:
        torch.set_num_threads(previous)
    return float(np.median(times)) / len(rgb) * 1000


def memory_at(params: Any, size: int, modalities: int) -> Any:
    """``params``' memory settings with the cap at ``size`` entries per modality."""
    return params.model.memory.model_copy(update={"max_entries": size * modalities})


def bank_trainer(network: Any, params: Any, train: Any, size: int | None = None) -> Any:
    """Training's own :class:`~bridgenet.training.trainer.Trainer` on the ``train`` split, its clean
    embeddings computed once, checked to be ``network``'s embedding space (or no bank it builds
    would fit the model). Its constructor selects a bank under ``params``' memory settings, capped
    at ``size`` per modality where given (the first size asked for, so that no selection is made
    for nothing)."""
    from bridgenet.data.batch import resolve_device
    from bridgenet.training.trainer import Trainer

    if size is not None:
        params = params.model_copy(update={"model": params.model.model_copy(
            update={"memory": memory_at(params, size, len(network.modalities))})})
    trainer = Trainer(params, train, resolve_device("cpu"))
    for modality in network.modalities:
        for stat in ("mean", "std"):
            # another thread count sums in another order (differences of about 1e-6 here); another
            # cache or embedding setting moves these statistics by far more
            if not torch.allclose(getattr(trainer.network, f"{modality}_{stat}"), getattr(network, f"{modality}_{stat}"),
                                  rtol=1e-4, atol=1e-4):
                raise RuntimeError(f"bank_size --rebuild: the rebuilt {modality} embedding differs from the model's")
    return trainer


def rebuilt_banks(network: Any, trainer: Any, size: int | None = None) -> dict[str, float]:
    """Give ``network`` the banks that training's own code selects on ``trainer``'s embeddings
    (:func:`bank_trainer`): again at ``size`` entries per modality, or, without ``size``, the ones
    the trainer holds (its constructor's, under its params' memory settings, unless selected at a
    size since). Returns that selection's record (sizes, radius, seconds)."""
    if size is not None:
        memory = memory_at(trainer.params, size, len(network.modalities))
        if memory != trainer.memory_config:  # the bank it holds is that selection already
            trainer.fit_memory(memory)
    for modality in network.modalities:
        setattr(network.memory, f"{modality}_bank", trainer.network.memory.bank(modality).clone())
    return dict(trainer.memory_info)


def measure(model_file: Path, cache: Path, sizes: list[int], rebuild: bool = False) -> list[dict[str, Any]]:
    from bridgenet.data.batch import Batch, resolve_device
    from bridgenet.data.cache import load_cached_split
    from bridgenet.evaluate import evaluate_category
    from bridgenet.model.contract import TrainedModel
    from bridgenet.model.io import load_model
    from bridgenet.training.finish import finish
    from bridgenet.training.validation import build_validation_set

    base = load_model(model_file)
    params, device = base.params, resolve_device("cpu")
    validation = load_cached_split(cache, base.category, "validation", params.data)
    test = load_cached_split(cache, base.category, "test", params.data)
    # the training split embedded once per model, every size's bank selected from it
    trainer = bank_trainer(base.network, params, load_cached_split(cache, base.category, "train", params.data),
                           sizes[0]) if rebuild else None
    probe = Batch.from_split(test, slice(0, 8))
    rows = []
    for size in sizes:
        network = copy.deepcopy(base.network).eval()
        if rebuild:
            rebuilt_banks(network, trainer, size)
        else:
            cut_banks(network, size)
        done = finish(network, build_validation_set(validation, params, network.modalities), device,
                      params.eval.batch_size, params.train.threshold_quantile)
        model = TrainedModel(network, base.meta).with_meta(threshold=done.threshold,
                                                            pixel_threshold=done.pixel_threshold)
        evaluation, _ = evaluate_category(params, model, test, device)
        row = {"model": model_file.parent.parent.name, "category": base.category, "bank_per_modality": size,
               "bank": {m: int(network.memory.bank(m).shape[0]) for m in network.modalities},
               "validation_image_auroc": done.metrics.get("val_image_auroc"),
               "image_auroc": evaluation.metrics["image_auroc"], "aupro_30": evaluation.metrics["aupro_30"],
               "per_defect": evaluation.per_defect, "ms_per_sample_1_thread": forward_ms(network, probe.rgb,
                                                                                         probe.depth)}
        print(row, flush=True)
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], command: str) -> str:
    """Markdown: one line per cap, means (± std) over the models."""
    header = ("| bank per modality | models | validation | test image AUROC | AU-PRO@0.3 | worst defect "
              "(mean over models) | ms per sample, 1 thread |")
    lines = [f"`{command}`", "", header, "|---:|---:|---:|---:|---:|---|---:|"]
    for size in sorted({r["bank_per_modality"] for r in rows}, reverse=True):
        group = [r for r in rows if r["bank_per_modality"] == size]

        def mean(key: str, group: list[dict[str, Any]] = group) -> float:
            return float(np.mean([r[key] for r in group]))

        defects = {d: float(np.mean([r["per_defect"][d] for r in group])) for d in group[0]["per_defect"]}
        worst = min(defects, key=defects.get)
        image = [r["image_auroc"] for r in group]
        lines.append(f"| {size} | {len(group)} | {mean('validation_image_auroc'):.3f} | {np.mean(image):.3f} ± "
                     f"{np.std(image):.3f} | {mean('aupro_30'):.3f} | {worst} {defects[worst]:.3f} | "
                     f"{mean('ms_per_sample_1_thread'):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, required=True, help="the cache the models were trained on")
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 2048, 1024])
    parser.add_argument("--models", type=Path, nargs="+", required=True, help="model.pt files")
    parser.add_argument("--out", type=Path, required=True, help="folder for bank_size[_NAME].json and .md")
    parser.add_argument("--name", default="", help="results as bank_size_NAME.json and .md")
    parser.add_argument("--rebuild", action="store_true",
                        help="select each bank again at each size (sizes above the trained cap too)")
    args = parser.parse_args(argv)
    rows = [row for model_file in args.models for row in measure(model_file, args.cache, args.sizes, args.rebuild)]
    command = bench_command("bank_size", "--cache", "CACHE", "--sizes", *map(str, args.sizes),
                           *(["--rebuild"] if args.rebuild else []), *(["--name", args.name] if args.name else []),
                           "--models", "MODEL...", "--out", "OUT")
    stem = f"bank_size_{args.name}" if args.name else "bank_size"
    write_results(args.out / f"{stem}.json", {"machine": machine_info(command, torch=torch.__version__),
                                              "rows": rows})
    (args.out / f"{stem}.md").write_text(report(rows, command))
    print(report(rows, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
