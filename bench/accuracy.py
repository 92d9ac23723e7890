"""Accuracy benchmark: scorers, modalities and generators, on two data sets, over seeds, beside a peer.

    python -m bench.accuracy [--seeds 0 1 2] [--configs ...] [--work bench/work] [--out bench/results]

Renders and preprocesses two synthetic data sets under ``--work``: the embedded
default set (``synth`` and ``data`` sections of params.yaml) and its ``hard``
preset, whose goods are the same samples but whose test defects look like nothing
the training-time generators draw (faint stains, discolourations, sub-millimetre
bumps and dents, thin scratches, chipped rims). For every configuration, training
seed and category it trains one model on the goods with ``train_category`` (model
selection and thresholds on validation data only) and scores both test splits
once with each scorer (``discriminator``, ``memory``, ``fused``). Configurations:

    rgb+depth       params.yaml as it is (texture generator on, Gaussian generator off)
    rgb             RGB only
    depth           depth only
    +gaussian       RGB + depth with both generators
    gaussian-only   RGB + depth with the Gaussian generator instead of the texture one
    +gaussian-s0.3  +gaussian with sigma 0.3 instead of the paper's 0.02

The peer, anomalib's PatchCore with the same ImageNet weights on RGB and on the
visible depth, fused late (``bench.peers``), is fitted on the same goods and
scored on the same test splits with the same metrics, once per data set and
category (``--no-peer`` skips it; it needs the ``bench`` extra).

A reference row for fusion, ``rgb & depth models / fused``, fuses the ``rgb`` and
``depth`` models of each seed and category late: each model's image scores z-scored
with its own validation goods' scores, the larger of the two (image AUROC only).
It shows what the best of two separately trained single-modality models gives when
nobody knows which modality a defect shows in.

Each (configuration, seed, category) result is written as soon as it exists
(``--work/results``), so an interrupted benchmark resumes where it stopped and
a later call with more seeds only runs what is missing. Runs already published
in ``--out/accuracy.json`` under the same params digest are taken from there
when ``--work`` lacks them (training is deterministic per seed; ``--rerun-published``
trains them anyway). The summary (``--out/accuracy.json``, ``accuracy.md`` and
``accuracy_families.png``, made by ``bench.accuracy_report``) holds mean and standard
deviation over the seeds that are done of image AUROC, pixel AUROC, AU-PRO@0.3 and
AU-PRO@0.01 per data set, configuration, scorer and category, and image AUROC per defect
family (geometric only, appearance only, both). Per-run results and summaries are
:mod:`bench.results` records; ``bench.results.read_results`` reads either into a DataFrame.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench import accuracy_report as report
from bench.accuracy_runs import (
    CONFIGS,
    PRESETS,
    TEST_SIZES,
    caps_unbound,
    model_dir,
    params_digest,
    peer_current,
    prepare_data,
    run_name,
    run_one,
    run_peer,
    score_model,
)
from bench.common import PARAMS, PEER, REPO, RESULTS, bench_command, machine_info
from bench.results import read_json, read_records, record_rows, rows_frame, write_results


def published_runs(out: Path, digest: str, train_digest: str | None = None) -> list[dict[str, Any]]:
    """Per-run results of an earlier summary in ``out`` that were made under the same params digest,
    and its peer records that are current under ``train_digest`` (:func:`peer_current`; None: none)."""
    path = out / "accuracy.json"
    if not path.is_file():
        return []
    try:
        runs = json.loads(path.read_text()).get("runs", [])
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path}: not valid JSON ({err}); move it away or pass --rerun-published") from err
    return [r for r in runs if r.get("params_digest") == digest
            or ("config" not in r and train_digest is not None and peer_current(r, train_digest))]


def seed_work_results(results_dir: Path, runs: list[dict[str, Any]]) -> int:
    """Write each run that ``results_dir`` lacks; returns how many were written."""
    written = 0
    for run in runs:
        path = results_dir / run_name(run)
        if not path.is_file():
            write_results(path, run)
            written += 1
    return written


def reproduce_command(seeds: list[int], configs: list[str], categories: list[str] | None) -> str:
    """The command that trains and scores the runs of this summary (not the flags that only re-summarise)."""
    words = ["--seeds", *map(str, seeds)]
    if configs != list(CONFIGS):
        words += ["--configs", *configs]
    if categories:
        words += ["--categories", *categories]
    return bench_command("accuracy", *words)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--configs", nargs="+", default=["rgb+depth", "rgb", "depth"], choices=list(CONFIGS))
    parser.add_argument("--categories", nargs="+", default=None, help="default: data.categories")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work",
                        help="data, models and per-run results (not committed)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no-peer", action="store_true", help="do not fit and score the peer")
    parser.add_argument("--summary-only", action="store_true", help="only rebuild the summary from --work")
    parser.add_argument("--rescore", action="store_true",
                        help="score every saved model again (after a change to how models score), no training")
    parser.add_argument("--readme", action="store_true", help="also rewrite the accuracy block of docs/benchmarks.md")
    parser.add_argument("--rerun-published", action="store_true",
                        help="train again the runs that --out/accuracy.json already holds")
    return parser.parse_args(argv)


def run_missing(args: argparse.Namespace, work: Path, categories: list[str], memory: Any) -> None:
    """Fit the peer and train / score every run that ``work/results`` lacks or holds under other params."""
    results_dir = work / "results"
    digest, train_digest = params_digest(), params_digest("train")
    prepare_data(work)
    for i, category in enumerate([] if args.no_peer else categories, 1):
        paths = [results_dir / run_name({"preset": p, "category": category}) for p in PRESETS]
        if all(peer_current(read_json(p) or {}, train_digest) for p in paths):
            continue
        print(f"[peer {i}/{len(categories)}] {PEER} {category}", flush=True)
        for path, record in zip(paths, run_peer(work, category)):
            write_results(path, {**record, "train_digest": train_digest, "test_sizes": TEST_SIZES})
    jobs = [(c, s, k) for s in args.seeds for c in args.configs for k in categories]
    for i, (config, seed, category) in enumerate(jobs, 1):
        path = results_dir / run_name({"config": config, "seed": seed, "category": category})
        done = read_json(path) or {}
        trained = done.get("train_digest") == train_digest and caps_unbound(done, memory)
        if trained and done.get("params_digest") == digest and not args.rescore:
            continue
        saved = model_dir(work, config, seed, category) / "model.pt"
        if trained and saved.is_file():
            print(f"[{i}/{len(jobs)}] {config} seed {seed} {category}: scoring the saved model again", flush=True)
            result = {**done, "scores": score_model(work, config, seed, category)}
        else:
            print(f"[{i}/{len(jobs)}] {config} seed {seed} {category}", flush=True)
            result = run_one(work, config, seed, category)
        result.update(params_digest=digest, train_digest=train_digest)
        write_results(path, result)
        for preset, cells in result["scores"].items():
            for scorer, cell in cells.items():
                print(f"    {preset:8s} {scorer:13s} {json.dumps(cell['metrics'])} "
                      f"{json.dumps(cell['families'])}", flush=True)
        print(f"    trained in {result['train_seconds']:.0f} s", flush=True)


def load_current(args: argparse.Namespace, results_dir: Path, categories: list[str],
                 memory: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The runs and peer records of ``results_dir`` made under today's params, for the summary."""
    digest, train_digest = params_digest(), params_digest("train")
    loaded = [r for r in read_records(results_dir, "*.json") if r["category"] in categories and (
        r.get("params_digest") == digest and caps_unbound(r, memory) if "config" in r
        else peer_current(r, train_digest))]
    runs = [r for r in loaded if "config" in r and r["config"] in args.configs and r["seed"] in args.seeds]
    peers = [] if args.no_peer else [r for r in loaded if "preset" in r and "config" not in r]
    return runs, peers


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    from bridgenet.config import load_params

    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = load_params(PARAMS)
    categories = args.categories or list(defaults.data.categories)
    work = args.work.resolve()
    results_dir = work / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    digest = params_digest()
    memory = defaults.model.memory
    if not args.rerun_published:
        reused = seed_work_results(results_dir, published_runs(args.out, digest, params_digest("train")))
        if reused:
            print(f"{reused} runs taken from {args.out / 'accuracy.json'} (same params digest {digest})")
    if not args.summary_only:
        run_missing(args, work, categories, memory)
    runs, peers = load_current(args, results_dir, categories, memory)
    names = report.variants(args.configs, bool(peers))
    frame = rows_frame([*(row for record in [*runs, *peers] for row in record_rows(record)),
                        *(row for preset in PRESETS for row in report.late_fusion_rows(runs, preset))])
    tables = {p: report.summarize(frame[frame["preset"] == p], names, categories) for p in PRESETS}
    machine = machine_info(reproduce_command(args.seeds, args.configs, args.categories), torch=torch.__version__)
    targets = report.check_targets(tables, defaults.model.scorer)
    sampling = [e for p in PRESETS if (e := report.resampled_test_split(runs, p, scorer=defaults.model.scorer))]
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(args.out / "accuracy.json", {
        "machine": machine, "params_digest": digest, "default_scorer": defaults.model.scorer,
        "configs": {c: CONFIGS[c] for c in args.configs}, "categories": categories,
        "results": tables, "targets": targets, "test_split_sampling": sampling, "runs": [*runs, *peers]})
    text = "".join(f"## {p} data\n\n" + report.markdown(t, categories) + "\n" for p, t in tables.items())
    (args.out / "accuracy.md").write_text(text)
    shown = [f"{c} / {defaults.model.scorer}" for c in args.configs[:3]] + [
        n for n in names if n.startswith("rgb+depth /") and not n.endswith(defaults.model.scorer)] + [
        n for n in names if n.startswith(report.LATE)]
    report.plot_families(tables, [*shown, *(n for n in names if n == f"{PEER} rgb+depth")],
                         args.out / "accuracy_families.png")
    print(text)
    print("\n".join(targets + [report.sampling_line(e) for e in sampling]))
    block = report.readme_block(tables, categories, targets, sorted({r["seed"] for r in runs}), machine, sampling)
    if args.readme and not report.update_readme(block):
        print("docs/benchmarks.md has no accuracy markers; left unchanged")
    print(f"wrote {args.out / 'accuracy.json'}, accuracy.md, accuracy_families.png")


if __name__ == "__main__":
    main()
