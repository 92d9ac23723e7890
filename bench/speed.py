"""Speed benchmark: depth extraction, training and inference throughput, memory bank, memory, FLOPs.

    python -m bench.speed [--configs default reference size-320 size-384] [--train-samples N]
                          [--out bench/results] [--no-peer] [--bank-samples 40 230 1000]

For each configuration (``default``: params.yaml, timed on a 392-sample epoch; ``compiled``:
the same with ``predict.compile_backbone``, its first call holding the compile;
``reference``: the reference code's widths, embedding and discriminator 1536, timed
on a 40-sample epoch as the reference was; ``size-320`` and ``size-384``: the defaults
at larger inputs) on the CPU, and on CUDA where present:
training samples per second and seconds per epoch, inference samples per second at
batch 1 and 8 (and at batch 8 with each scorer and, on the CPU, with the backbone on pieces of
1, 2, 4 and 8 images, ``model.backbone_cpu_batch``; the median of 7 timed windows, batch 1 and 8
keep every window), the memory bank's size and build time,
model FLOPs per sample (torch.utils.flop_counter) and the achieved
fraction of this machine's measured fp32 matrix-multiply throughput, and peak resident
memory (each configuration runs in its own process so peaks do not mix). Inputs are
random arrays of the configured size whose object (depth > 0) is a centred disc covering
what real parts cover under ``data.crop`` (:data:`CROP_COVERAGE`): speed depends on that
area (patches off the object are neither scored nor searched), not on the content. Beside them,
anomalib's PatchCore (``--no-peer`` skips it) and our memory bank fitted on the same
40 fake goods: fit seconds, bank size and inference samples per second at batch 8.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import queue
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import PARAMS, RESULTS, machine_info, portable_command
from bench.results import write_results

CONFIGS = {
    "default": [],
    # the backbone through torch.compile (predict.compile_backbone: folder predict, serving)
    "compiled": ["predict.compile_backbone=true"],
    "reference": ["model.embed_dim=1536", "model.dsc_hidden=1536"],
    # larger inputs, for the resolution trade (docs/benchmarks.md, "Real scans")
    "size-320": ["data.image_size=320"],
    "size-384": ["data.image_size=384"],
}
EPOCH_SAMPLES = {"default": 392, "compiled": 392, "reference": 40, "size-320": 392, "size-384": 392}


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# Share of the network input that a part covers, as a centred disc. What costs is the number of
# scored patches (the foreground dilated by one patch: scored, and searched in the banks). In the
# object-centred crop (``data.crop: object``) real cable_gland scans score 636 of 1024 patches
# per sample (foreground 45 % of the 256 px input; the renders: bagel 714, cookie 760, dowel 374,
# cable 244); a disc over 46 % scores 632. In the whole frame (``none``) the renders fill about a
# quarter of the input (a disc over 25 %: 352).
CROP_COVERAGE = {"object": 0.46, "none": 0.25}


def disc_mask(n: int, size: int, coverage: float) -> np.ndarray:
    """(n, size, size) bool: a centred disc covering ``coverage`` of the image."""
    ys, xs = np.mgrid[:size, :size] - (size - 1) / 2
    disc = ys**2 + xs**2 <= coverage * size * size / np.pi
    return np.broadcast_to(disc, (n, size, size)).copy()


def fake_split(n: int, size: int, coverage: float):
    from bridgenet.data.cache import CachedSplit

    rng = np.random.default_rng(0)
    foreground = disc_mask(n, size, coverage)
    return CachedSplit(
        category="bench", split="train",
        rgb=rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8),
        depth=rng.random((n, size, size), dtype=np.float32) * foreground,
        foreground=foreground, labels=np.zeros(n, dtype=np.int64),
        defects=["good"] * n, stems=[f"{i:03d}" for i in range(n)],
        gt=[np.zeros((size, size), dtype=bool)] * n, original_sizes=np.full((n, 2), size),
        crop_boxes=np.tile(np.array([0, 0, size, size]), (n, 1)),
    )


def fake_inputs(batch: int, size: int, device: torch.device, coverage: float) -> tuple[torch.Tensor, torch.Tensor]:
    rgb = torch.rand(batch, 3, size, size, device=device)
    depth = torch.rand(batch, 1, size, size, device=device)
    return rgb, depth * torch.from_numpy(disc_mask(batch, size, coverage)).unsqueeze(1).to(device)


CPU_BATCHES = (1, 2, 4, 8)  # model.backbone_cpu_batch values timed at batch 8 (8: the whole batch)
WINDOWS = 7  # timed windows per inference rate: the median is reported, the spread beside it


@torch.inference_mode()
def inference_windows(network: torch.nn.Module, rgb: torch.Tensor, depth: torch.Tensor, device: torch.device,
                      scorer: str | None = None, windows: int = WINDOWS) -> list[float]:
    """Samples per second of the eval forward on one batch, in ``windows`` windows of >= 48
    samples each after 3 warm-up calls. One window is about 1.5 s on 2 cores, where a
    neighbour's burst moves it by 10 %; the median of several is what a line would see."""
    for _ in range(3):
        network(rgb, depth, scorer)
    sync(device)
    repeats = max(3, 48 // len(rgb))
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(repeats):
            network(rgb, depth, scorer)
        sync(device)
        rates.append(len(rgb) * repeats / (time.perf_counter() - start))
    return rates


def inference_rate(network: torch.nn.Module, rgb: torch.Tensor, depth: torch.Tensor, device: torch.device,
                   scorer: str | None = None, windows: int = WINDOWS) -> float:
    """Median samples per second over :func:`inference_windows`."""
    return float(np.median(inference_windows(network, rgb, depth, device, scorer, windows)))


def measure(name: str, overrides: list[str], device_name: str, train_samples: int, queue: mp.Queue) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from bridgenet.config import load_params
    from bridgenet.model.scorers import SCORERS
    from bridgenet.training.trainer import Trainer

    params = load_params(PARAMS, [*overrides, f"train.device={device_name}",
                                                  f"train.max_samples_per_epoch={train_samples}"])
    device = torch.device(device_name)
    size = params.data.image_size
    coverage = CROP_COVERAGE[params.data.crop]
    split = fake_split(train_samples, size, coverage)
    start = time.perf_counter()
    trainer = Trainer(params, split, device)
    setup_s = time.perf_counter() - start  # includes embedding every clean sample once
    trainer.epoch()  # warm-up
    sync(device)
    start = time.perf_counter()
    trainer.epoch()
    sync(device)
    epoch_s = time.perf_counter() - start
    network = trainer.network.eval()
    network.backbone.compile_cpu = params.predict.compile_backbone  # the backbone compiles on the CPU only
    result = {"config": name, "overrides": overrides, "device": device_name, "image_size": size,
              "object_coverage": coverage,
              "embed_dim": params.model.embed_dim, "dsc_hidden": params.model.dsc_hidden,
              "train_samples": train_samples, "setup_seconds": setup_s, "seconds_per_epoch": epoch_s,
              "train_samples_per_s": train_samples / epoch_s}
    result.update(scorer=network.scorer.name, memory=trainer.memory_info,
                  epochs=params.train.epochs,
                  # the bank is built once per run: its share of each of train.epochs epochs
                  seconds_per_epoch_with_bank=epoch_s + trainer.memory_info["memory_seconds"]
                  / max(params.train.epochs, 1))
    rgb, depth = fake_inputs(8, size, device, coverage)
    with torch.inference_mode():
        start = time.perf_counter()
        network(rgb, depth)  # a compiled backbone compiles here (pieces of model.backbone_cpu_batch)
        sync(device)
        result["first_call_seconds_b8"] = time.perf_counter() - start
    for batch in (1, 8):
        rgb, depth = fake_inputs(batch, size, device, coverage)
        rates = inference_windows(network, rgb, depth, device)
        result[f"infer_samples_per_s_b{batch}"] = float(np.median(rates))
        result[f"infer_samples_per_s_b{batch}_windows"] = [round(r, 2) for r in rates]
    for scorer in SCORERS:  # every scorer at batch 8, the default one included
        result[f"infer_samples_per_s_b8_{scorer}"] = inference_rate(network, rgb, depth, device, scorer)
    if device.type == "cpu":  # the backbone's piece size suits one machine's caches, not every one
        chosen, by_pieces = network.backbone.cpu_batch, {}
        for pieces in CPU_BATCHES:
            network.backbone.cpu_batch = pieces
            by_pieces[str(pieces)] = inference_rate(network, rgb, depth, device)
        network.backbone.cpu_batch = chosen
        result["infer_samples_per_s_b8_by_cpu_batch"] = by_pieces
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(rgb[:1], depth[:1])
    result["gflops_per_sample"] = counter.get_total_flops() / 1e9
    result["matmul_gflops"] = matmul_gflops(device)
    result["achieved_fraction_b8"] = (result["gflops_per_sample"] * result["infer_samples_per_s_b8"]
                                      / result["matmul_gflops"])
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    if device.type == "cuda":
        result["peak_cuda_gb"] = torch.cuda.max_memory_allocated() / 1024**3
    queue.put(result)


def measure_peer(train_samples: int, queue: mp.Queue) -> None:
    """Our memory bank against anomalib's PatchCore (the ``bench`` extra) on the same fake goods.

    Both fit on ``train_samples`` samples of params.yaml's size; inference is timed at
    batch 8 on both modalities (the peer runs one model per modality, fused late).
    """
    from bench.peers import PeerSettings, build_patchcore, fit, modality_images, score
    from bridgenet.config import load_params
    from bridgenet.training.trainer import Trainer

    params = load_params(PARAMS, ["train.device=cpu"])
    size, coverage = params.data.image_size, CROP_COVERAGE[params.data.crop]
    split = fake_split(train_samples, size, coverage)
    trainer = Trainer(params, split, torch.device("cpu"))
    settings = PeerSettings(coreset_ratio=params.model.memory.coreset_ratio)
    result = {"train_samples": train_samples, "ours_memory_seconds": trainer.memory_info["memory_seconds"],
              "ours_memory_mb": trainer.memory_info["memory_mb"], "peer_fit_seconds": 0.0, "peer_bank_mb": 0.0}
    batch_images = {}
    peers = {}
    for modality in ("rgb", "depth"):
        peers[modality] = build_patchcore(params.model, settings)
        images = modality_images(split, modality)
        result["peer_fit_seconds"] += fit(peers[modality], images, settings)
        bank = peers[modality].memory_bank
        result["peer_bank_mb"] += bank.numel() * bank.element_size() / 2**20
        batch_images[modality] = images[:8]
    start = time.perf_counter()
    repeats = 6
    for _ in range(repeats):
        for modality in ("rgb", "depth"):
            score(peers[modality], batch_images[modality], 8)
    result["peer_infer_samples_per_s_b8"] = 8 * repeats / (time.perf_counter() - start)
    network = trainer.network.eval()
    rgb, depth = fake_inputs(8, size, torch.device("cpu"), coverage)
    result["ours_infer_samples_per_s_b8"] = inference_rate(network, rgb, depth, torch.device("cpu"))
    result["ours_scorer"] = network.scorer.name
    queue.put(result)


BANK_COVERAGE = CROP_COVERAGE["object"]  # the bank is timed as real scans fill it, whatever data.crop
BANK_SAMPLES = (40, 230, 1000)


def measure_bank(train_samples: int, queue: mp.Queue) -> None:
    """The memory bank at ``train_samples`` goods (params.yaml's size, parts covering
    :data:`BANK_COVERAGE` of the input): candidates, bank size, covering radius, build seconds
    per modality, and the search's milliseconds per sample (8 samples' scored patches)."""
    from bridgenet.config import load_params
    from bridgenet.model.memory import greedy_coreset
    from bridgenet.training.trainer import Trainer

    params = load_params(PARAMS, ["train.device=cpu"])
    size, memory = params.data.image_size, params.model.memory
    trainer = Trainer(params, fake_split(train_samples, size, BANK_COVERAGE), torch.device("cpu"))
    network = trainer.network.eval()
    info = trainer.memory_info
    result: dict[str, Any] = {"train_samples": train_samples, "image_size": size,
                              "coreset_ratio": memory.coreset_ratio, "max_entries": memory.max_entries,
                              "chunk_size": memory.chunk_size, "build_seconds_both": info["memory_seconds"]}
    rgb, _ = fake_inputs(8, size, torch.device("cpu"), BANK_COVERAGE)
    depth = torch.from_numpy(disc_mask(8, size, BANK_COVERAGE)).unsqueeze(1).float() * 0.5
    with torch.inference_mode():
        embeddings = network.embed_inputs({"rgb": rgb, "depth": depth})
        grid = embeddings["rgb"].shape[-2:]
        keep = network.kept_patches(depth, grid)
    for m in network.modalities:
        rows = embeddings[m].permute(0, 2, 3, 1).reshape(-1, embeddings[m].shape[1])[keep]
        network.memory.distances(m, rows)  # warm-up
        start = time.perf_counter()
        for _ in range(3):
            network.memory.distances(m, rows)
        search_ms = (time.perf_counter() - start) / 3 / 8 * 1000
        # build time of this modality alone (the trainer's figure is both together)
        candidates = trainer.clean[m].permute(0, 2, 3, 1).reshape(-1, trainer.clean[m].shape[1])[
            network.kept_patches(trainer.data.depth, grid).flatten()]
        n_keep = memory.bank_size(len(candidates), len(network.modalities))
        start = time.perf_counter()
        coreset = greedy_coreset(candidates, n_keep, memory.projection_dim, torch.Generator().manual_seed(0),
                                 memory.chunk_size)
        result[m] = {"candidates": int(info[f"{m}_candidates"]), "bank": int(info[f"{m}_bank"]),
                     "radius": float(info[f"{m}_radius"]), "build_seconds": time.perf_counter() - start,
                     "rebuilt_radius": coreset.radius, "search_ms_per_sample": search_ms,
                     "queries_per_sample": int(len(rows) / 8)}
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    queue.put(result)


def depth_ms(repeats: int = 10) -> float:
    """Median milliseconds of visible-depth extraction on bench.depth's 800 x 800 scene."""
    from bench.depth import tilted_scene
    from bridgenet.config import load_params
    from bridgenet.data.depth import visible_depth

    data_cfg = load_params(PARAMS).data
    xyz = tilted_scene(800, np.random.default_rng(0))
    visible_depth(xyz, data_cfg, np.random.default_rng(1))
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        visible_depth(xyz, data_cfg, np.random.default_rng(i))
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def published_command(argv: list[str]) -> str:
    """The command line without ``--out`` and its folder (no path of this machine in the results)."""
    return portable_command("speed", argv, {"--out": None})


def in_child_process(ctx: Any, target: Callable[..., None], *args: Any) -> Any:
    """``target(*args, queue)`` in a fresh process (its own peak memory); what it puts on the queue.

    A child that dies without answering (out of memory, a crash in a kernel) raises
    instead of leaving the benchmark waiting for ever.
    """
    answers = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, answers))
    proc.start()
    try:
        while True:
            try:
                return answers.get(timeout=2)
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"benchmark process {target.__name__}{args} ended with exit code "
                                       f"{proc.exitcode} before reporting") from None
    finally:
        proc.join()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["default", "reference"], choices=list(CONFIGS))
    parser.add_argument("--train-samples", type=int, default=None,
                        help="samples per timed epoch (default: 392 for default, 40 for reference)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-peer", action="store_true",
                        help="skip anomalib's PatchCore (needs the bench extra) beside our memory bank")
    parser.add_argument("--bank-samples", nargs="*", type=int, default=list(BANK_SAMPLES),
                        help="training-set sizes at which the memory bank is built and searched (none: skip)")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    ctx = mp.get_context("spawn")
    results = []
    for device in devices:
        for name in args.configs:
            result = in_child_process(ctx, measure, name, CONFIGS[name], device,
                                      args.train_samples or EPOCH_SAMPLES[name])
            print(json.dumps(result, indent=2), flush=True)
            results.append(result)
    peer = None
    if not args.no_peer and importlib.util.find_spec("anomalib") is None:
        print("anomalib is not installed (pip install -e '.[bench]'): the peer is not timed")
    elif not args.no_peer:
        peer = in_child_process(ctx, measure_peer, EPOCH_SAMPLES["reference"])
        print(json.dumps(peer, indent=2), flush=True)
    banks = []
    for n in args.bank_samples:
        banks.append(in_child_process(ctx, measure_bank, n))
        print(json.dumps(banks[-1], indent=2), flush=True)
    depth = depth_ms()
    machine = machine_info(published_command(sys.argv[1:]), torch=torch.__version__,
                           cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"speed-{'cuda' if 'cuda' in devices else 'cpu'}.json"
    write_results(path, {"machine": machine, "depth_ms_800": depth, "runs": results, "peer": peer, "banks": banks})
    print(f"depth extraction: {depth:.1f} ms per 800 x 800 sample")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
