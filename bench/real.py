"""Real-data benchmark: BridgeNet on an MVTec 3D-AD root, over seeds, beside PatchCore and published figures.

    python -m bench.real --data-root ROOT [--categories cable_gland ...] [--seeds 0 1 2]
        [--configs rgb+depth rgb depth] [--work bench/work-real] [--out bench/results]
        [--name mvtec3d] [--no-peer] [--set section.key=value ...] [--threads N] [--summary-only]

ROOT is any MVTec 3D-AD root (``ROOT/<category>/{train,validation,test}/...``); the
data is never copied into the repository, only preprocessed into ``--work``.
``--categories`` defaults to every folder of ROOT that has a ``train`` folder.

Per category the data is preprocessed once into ``--work/cache/<side>px-<hash>``,
a folder named after the ``data:`` settings (``--set data.image_size=320`` gets
its own cache). For every configuration, seed and category one model is trained
on the goods (``train_category``; epochs and thresholds from validation data only)
under ``--work/models/<hash>/<config>/seed<k>/<category>`` (``<hash>``: the
params of this benchmark, params.yaml plus ``--set``) and its test split is
scored once per scorer (``discriminator``, ``memory``, ``fused``):

    rgb+depth   params.yaml as it is
    rgb         model.modalities=[rgb]
    depth       model.modalities=[depth]

``--set`` overrides apply to every run (``train.device`` is ``cpu`` unless set;
``data.root``, ``data.categories`` and ``data.cache_dir`` come from the bench).
Recorded per scorer: image AUROC and AP, pixel AUROC, AU-PRO@0.3 and @0.01,
image AUROC per defect type, FPR and recall at the validation threshold (the
model's own for the scorer it was trained with, else the same rule,
``train.threshold_quantile`` of the validation goods' scores, under that scorer)
and every test sample's image score; per run the training seconds, best epoch,
memory bank and validation metrics.

The peer, anomalib's PatchCore on the same backbone, cache and depth image
(``bench.peers``), is fitted once per seed and category (``--no-peer`` skips
it; it needs the ``bench`` extra). Every result is written to ``--work/results``
as soon as it exists, with a digest of the params it was made under, so an
interrupted benchmark resumes; a result made under other params (params.yaml or
``--set`` changed) is made again: by scoring the saved model again where only scoring
keys changed, by selecting its memory bank again where only ``model.memory`` settings
changed (training builds the bank before the first step and chooses epochs without it, so
the weights are the same; seconds instead of a training), else by training.

The summary (``--out/real_<name>.json`` and ``real_<name>.md``) holds mean ± std
over seeds per configuration / scorer and for the peer (rgb, depth, fused), per
category and as the mean over categories, published figures beside ours (quoted
from the 3D-ADS README, not re-measured), and a target check per category
(lines PASS / FAIL, SKIP where a run it needs is missing).

``bench.real_runs`` makes one run, ``bench.real_report`` the summary; records and
summaries are :mod:`bench.results` records (``read_results`` reads either into a DataFrame).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.common import PEER, REPO, RESULTS, machine_info, portable_command, portable_path
from bench.real_report import (
    PUBLISHED,
    PUBLISHED_SOURCE,
    check_targets,
    headline,
    markdown,
    summarize,
    variants,
)
from bench.real_runs import (
    CONFIGS,
    base_params,
    bench_digest,
    find_categories,
    memory_twin,
    model_dir,
    params_digest,
    peer_place,
    peer_record,
    rebuild_and_score,
    run_params,
    run_path,
    score_run,
    stored_training,
    train_and_score,
)
from bench.results import current_record, record_rows, rows_frame, write_results
from bridgenet.config import ConfigError, Params
from bridgenet.train import TrainingError

LOGGER = logging.getLogger("bench.real")  # not __name__: "__main__" under python -m
BENCH_KEYS = ("data.root", "data.categories", "data.cache_dir")  # set by the bench, not by --set
PATH_FLAGS = {"--data-root": "ROOT", "--work": "WORK", "--out": "OUT"}


def published_command(argv: list[str]) -> str:
    """The command line as it can be published: this machine's paths become ROOT, WORK, OUT.

    ``--summary-only`` is left out: the full command reuses every result and writes the same summary.
    """
    return portable_command("real", argv, PATH_FLAGS, dropped=("--summary-only",))


def portable_run(run: dict[str, Any], work: Path) -> dict[str, Any]:
    """A run record for the summary: its model file relative to WORK, not this machine's path."""
    return {**run, "model": portable_path(Path(run.get("model", "")), {"": work})}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.real", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True, help="an MVTec 3D-AD root (never copied)")
    parser.add_argument("--categories", nargs="+", default=None, help="default: every category under ROOT")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work-real",
                        help="cache, models and per-run results (not committed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="mvtec3d", help="summary files: real_<name>.json and real_<name>.md")
    parser.add_argument("--no-peer", action="store_true", help="do not fit and score PatchCore")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="section.key=value",
                        help="override a parameter of every run (repeatable)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary from --work")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", args.name):
        parser.error(f"--name {args.name!r}: use letters, digits, '_', '.', '+' or '-'")
    try:
        found = find_categories(args.data_root)
    except ValueError as err:
        parser.error(str(err))
    missing = [c for c in args.categories or [] if c not in found]
    if missing:
        parser.error(f"--categories {missing}: not a category folder of {args.data_root} (found {found})")
    args.categories = args.categories or found
    return args


def run_jobs(args: argparse.Namespace, base: Params, work: Path) -> Iterator[str]:
    """Preprocess each category, then train / score every missing run and fit every missing peer.

    Yields progress lines (one per run started, then its headline numbers).
    """
    from bridgenet.preprocess import run_preprocess

    bench = bench_digest(base)
    for category in args.categories:
        params = run_params(base, work, category, args.configs[0], args.seeds[0])
        yield f"preprocess {category} into {params.data.cache_dir}"
        run_preprocess(params)
    jobs = [(seed, category, config) for seed in args.seeds for category in args.categories
            for config in [*args.configs, *([] if args.no_peer else [PEER])]]
    for i, (seed, category, config) in enumerate(jobs, 1):
        tag = f"[{i}/{len(jobs)}] {config} seed {seed} {category}"
        if config == PEER:
            yield from run_peer_job(base, work, category, seed, tag)
            continue
        params = run_params(base, work, category, config, seed)
        path = run_path(work, bench, config, seed, category)
        if current_record(path, params_digest(params)) is not None:
            yield f"{tag}: done before ({path})"
            continue
        saved = stored_training(path, params)
        if saved is not None:
            yield f"{tag}: scoring the saved model again (only scoring keys changed)"
            saved["scores"], saved["test"] = score_run(params, Path(saved["model"]), category)
            saved["params_digest"] = params_digest(params)
            write_results(path, saved)
            for scorer, cell in saved["scores"].items():
                yield headline(f"{config} / {scorer}", cell)
            continue
        twin = memory_twin(work, params, config, seed, category)
        if twin is not None:
            yield f"{tag}: selecting the bank again on {twin['model']} (only memory settings changed)"
            record = rebuild_and_score(params, twin, model_dir(work, bench, config, seed, category))
            write_results(path, record)
            for scorer, cell in record["scores"].items():
                yield headline(f"{config} / {scorer}", cell)
            yield f"    bank selected again in {record['rebuild_seconds']:.0f} s; wrote {path}"
            continue
        yield f"{tag}: training"
        try:
            record = train_and_score(params, model_dir(work, bench, config, seed, category), config, seed, category)
        except TrainingError as err:  # e.g. depth alone on scans without an object: the other runs go on
            yield f"{tag}: not trained: {err}"
            continue
        write_results(path, record)
        for scorer, cell in record["scores"].items():
            yield headline(f"{config} / {scorer}", cell)
        yield (f"    trained in {record['train_seconds']:.0f} s (best epoch {record['best_epoch']} of "
               f"{record['epochs']}); wrote {path}")


def run_peer_job(base: Params, work: Path, category: str, seed: int, tag: str) -> Iterator[str]:
    """Fit and score the peer for one seed and category unless a current result exists."""
    params, expected, path = peer_place(base, work, category, seed)
    if current_record(path, expected) is not None:
        yield f"{tag}: done before ({path})"
        return
    yield f"{tag}: fitting on rgb, then on depth"
    record = peer_record(Path(params.data.root), params, category, seed)
    write_results(path, record)
    for modality, cell in record["modalities"].items():
        yield headline(f"{PEER} {modality}", cell)
    fit = record["fit_seconds"]
    yield f"    fitted in {fit['rgb']:.0f} + {fit['depth']:.0f} s; wrote {path}"


def load_results(args: argparse.Namespace, base: Params, work: Path) -> tuple[list[dict], list[dict]]:
    """The current results of the requested runs and peers (others are left out)."""
    bench = bench_digest(base)
    runs, peers = [], []
    for seed in args.seeds:
        for category in args.categories:
            for config in args.configs:
                params = run_params(base, work, category, config, seed)
                record = current_record(run_path(work, bench, config, seed, category), params_digest(params))
                if record is not None:
                    runs.append(record)
            if not args.no_peer:
                _, expected, path = peer_place(base, work, category, seed)
                record = current_record(path, expected)
                if record is not None:
                    peers.append(record)
    return runs, peers


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work.resolve()
    ignored = [s for s in args.sets if s.split("=", 1)[0].strip() in BENCH_KEYS]
    if ignored:
        LOGGER.warning("--set %s: the bench sets %s itself; ignored", ignored, ", ".join(BENCH_KEYS))
    try:
        base = base_params(args.data_root, args.sets)
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if not args.summary_only:
        for line in run_jobs(args, base, work):
            print(line, flush=True)
    runs, peers = load_results(args, base, work)
    frame = rows_frame(row for record in [*runs, *peers] for row in record_rows(record))
    table = summarize(frame, variants(args.configs, not args.no_peer), args.categories)
    targets = check_targets(table, args.categories)
    machine = machine_info(published_command(sys.argv[1:] if argv is None else argv),
                           threads=torch.get_num_threads(), torch=torch.__version__)
    text = markdown(table, args.categories, targets, machine)
    json_path, md_path = args.out / f"real_{args.name}.json", args.out / f"real_{args.name}.md"
    write_results(json_path, {
        "name": args.name, "machine": machine, "data_root": "ROOT",
        "categories": args.categories, "seeds": args.seeds, "configs": {c: CONFIGS[c] for c in args.configs},
        "set": args.sets, "bench_digest": bench_digest(base), "results": table, "targets": targets,
        "published": {"source": PUBLISHED_SOURCE, "figures": PUBLISHED},
        "runs": [portable_run(run, work) for run in runs], "peers": peers})
    md_path.write_text(text)
    print(text)
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
