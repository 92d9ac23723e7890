"""Folder and list predict: many samples with one loaded model, the files read ahead of the network.

:func:`predict_folder` is a bounded pipeline. ``workers`` worker processes read each pair
and prepare it (:func:`bridgenet.predict.prepare_sample`: visible depth, crop) a batch
ahead; the main process scores prepared samples in batches of ``batch_size`` (one
network call; a sample's score does not depend on its batch) and hands the pictures back
to the workers to draw. One sample's work, before this pipeline, was about 45 ms of
reading and preparing, 65 ms of network at batch 1 and 200 ms of picture, one after the
other (docs/serving.md). Torch gets the cores the workers leave (at least one thread), so
the two never oversubscribe the machine. Rows, log records and errors are those of
one-sample predict, in input order.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np

from bridgenet.config import DataConfig
from bridgenet.predict import PreparedSample

LOGGER = logging.getLogger(__name__)
PREDICTION_COLUMNS = ("rgb", "xyz", "status", "score", "anomalous", "threshold", "heatmap", "mask", "error")


@dataclass(frozen=True)
class LoadedSample:
    """What a worker sends back for one pair: the prepared sample (and the full-size RGB image
    where pictures are drawn), or the message of the error that refused it; the files' sha256
    for the prediction log (None: not asked, or unreadable)."""

    prepared: PreparedSample | None
    rgb: np.ndarray | None
    error: str | None
    digests: tuple[str | None, str | None]


def load_sample(rgb_path: Path, xyz_path: Path, data_cfg: DataConfig, side: int, keep_rgb: bool,
                digests: bool) -> LoadedSample:
    """Read and prepare one pair (a worker's task). An error is sent back as its message: a
    :class:`bridgenet.data.samples.DataError` does not survive pickling."""
    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.monitor.records import file_digest
    from bridgenet.predict import prepare_sample

    sums = (file_digest(rgb_path), file_digest(xyz_path)) if digests else (None, None)
    try:
        rgb, xyz = read_rgb(Path(rgb_path)), read_xyz(Path(xyz_path))
        prepared = prepare_sample(rgb, xyz, data_cfg, side, str(rgb_path), str(xyz_path))
    except (ValueError, OSError) as err:
        return LoadedSample(None, None, str(err), sums)
    return LoadedSample(prepared, rgb if keep_rgb else None, None, sums)


def read_pair_list(path: Path) -> list[tuple[Path, Path]]:
    """(rgb, xyz) pairs from a CSV with columns ``rgb`` and ``xyz`` (relative paths: to the CSV)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample list {path} does not exist")
    table = pd.read_csv(path, dtype=str)
    missing = {"rgb", "xyz"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: needs the columns rgb and xyz, lacks {sorted(missing)}")
    if table[["rgb", "xyz"]].isna().any().any() or table.empty:
        raise ValueError(f"{path}: every row needs an rgb and an xyz path (and there must be one)")
    return [(path.parent / r, path.parent / x) for r, x in zip(table["rgb"], table["xyz"])]


def _limit_worker_threads() -> None:
    """One BLAS thread per worker: the workers are the parallelism."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def worker_pool(workers: int) -> Executor:
    """``workers`` processes; forked where the platform can (no second import of torch, which
    the workers never call), else spawned. Processes rather than threads: with one worker on
    a loaded 2-core machine, threads took 1.17 times the wall time and CPU of processes (matplotlib
    and parts of the depth extraction hold the GIL)."""
    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(workers, mp_context=get_context(method), initializer=_limit_worker_threads)


def predict_folder(
    model_ref: str | Path,
    pairs: list[tuple[Path, Path]],
    out_dir: Path,
    tracking_uri: str | None = None,
    on_empty_foreground: str | None = None,
    heatmaps: bool = True,
    progress: bool = True,
    log: Path | None = None,
    workers: int = 0,
    batch_size: int = 8,
    threads: int = 0,
    compile_backbone: bool = False,
) -> tuple[Path, int]:
    """Score every (rgb, xyz) pair with one loaded model; ``out_dir/predictions.csv`` holds a row each
    (and ``heatmaps/`` and ``masks/`` a picture each, in the layout of the input folders). A sample
    that cannot be scored gets ``status`` ``error`` and its message; the others are still scored.
    Returns the CSV's path and the error count. ``log``: the prediction log
    (:mod:`bridgenet.monitor.log`) gets a record per sample, in one transaction. ``workers``:
    processes reading and preparing samples and drawing pictures (0:
    :func:`bridgenet.predict.default_workers`); ``batch_size``: samples per network call;
    ``threads``: torch's (:func:`bridgenet.predict.predict_threads`, as for one sample);
    ``compile_backbone``: ``torch.compile`` the backbone on the CPU (``predict.compile_backbone``).
    """
    import pandas as pd
    from tqdm import tqdm

    from bridgenet.monitor.records import load_with_origin, write_records
    from bridgenet.pictures import write_pictures
    from bridgenet.predict import compile_backbone as compile_network_backbone
    from bridgenet.predict import (
        default_workers,
        empty_foreground_policy,
        heatmap_title,
        log_record,
        minimum_side,
        predict_prepared,
        predict_threads,
        torch_threads,
    )

    if workers < 0 or batch_size < 1:
        raise ValueError(f"predict_folder: workers must be >= 0 and batch_size >= 1, got {workers} and {batch_size}")
    workers = workers or default_workers()
    out_dir = Path(out_dir)
    # The network itself, not the traced graph that one-sample predict starts from: its search of
    # the bank reads only the scored patches (the graph's reads every patch), and the
    # second of importing timm is paid once per folder. Scores agree with the graph's to ~1e-6.
    model, origin = load_with_origin(model_ref, tracking_uri, graph=False)
    compile_network_backbone(model, compile_backbone)
    policy = empty_foreground_policy(model, on_empty_foreground)
    root = Path(*_common_parts([rgb for rgb, _ in pairs]))
    pairs = [(Path(r).resolve(), Path(x).resolve()) for r, x in pairs]
    rows: list[dict[str, Any]] = [{} for _ in pairs]
    records: list[Any] = [None] * len(pairs)
    reads: deque[Future[LoadedSample]] = deque()
    drawn: deque[tuple[int, Future[tuple[str | None, str | None]]]] = deque()
    ahead = batch_size + workers  # prepared while a batch scores: the next batch, and each worker busy

    def collect_pictures(keep: int) -> None:
        while len(drawn) > keep:
            index, future = drawn.popleft()
            heatmap, mask = future.result()
            rows[index].update(heatmap=heatmap or "", mask=mask or "")

    def finish(index: int, outcome: Any, loaded: LoadedSample) -> None:
        rgb_path, xyz_path = pairs[index]
        row = {"rgb": str(rgb_path), "xyz": str(xyz_path), "status": "error", "score": np.nan,
               "anomalous": True, "threshold": model.threshold, "heatmap": "", "mask": "", "error": ""}
        if isinstance(outcome, Exception):  # unreadable, refused, or NoObjectError (policy "error")
            LOGGER.error("%s: %s", rgb_path, outcome)
            row["error"] = str(outcome)
        else:
            row.update(status=outcome.status, score=outcome.score, anomalous=bool(outcome.anomalous))
            if heatmaps:
                name = rgb_path.relative_to(root).with_suffix(".png")
                drawn.append((index, pool.submit(
                    write_pictures, loaded.rgb, outcome.anomaly_map, outcome.mask, out_dir / "heatmaps" / name,
                    out_dir / "masks" / name, model.display_range(), model.pixel_threshold,
                    heatmap_title(model, outcome))))
        rows[index] = row
        if log is not None:
            records[index] = log_record(model, origin, loaded.digests, "predict", outcome)
        bar.update()

    def score(batch: list[tuple[int, LoadedSample]]) -> None:
        outcomes = predict_prepared(model, [loaded.prepared for _, loaded in batch], policy)
        for (index, loaded), outcome in zip(batch, outcomes):
            finish(index, outcome, loaded)
        batch.clear()

    task = {"data_cfg": model.params.data, "side": minimum_side(model), "keep_rgb": heatmaps,
            "digests": log is not None}
    with torch_threads(predict_threads(threads)), worker_pool(workers) as pool, \
            tqdm(total=len(pairs), desc="predict", unit="sample", disable=not progress) as bar:
        batch: list[tuple[int, LoadedSample]] = []
        for index in range(len(pairs)):
            while len(reads) < ahead and index + len(reads) < len(pairs):
                reads.append(pool.submit(load_sample, *pairs[index + len(reads)], **task))
            loaded = reads.popleft().result()
            if loaded.error is not None:
                finish(index, ValueError(loaded.error), loaded)
            else:
                batch.append((index, loaded))
            if len(batch) == batch_size:
                score(batch)
            collect_pictures(keep=ahead)  # a writer slower than the network holds back the reading
        if batch:
            score(batch)
        collect_pictures(keep=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=list(PREDICTION_COLUMNS))
    path = out_dir / "predictions.csv"
    partial = path.with_name(f".{path.name}.partial")
    table.to_csv(partial, index=False)
    partial.replace(path)
    write_records(log, records)
    return path, int((table["status"] == "error").sum())


def _common_parts(paths: list[Path]) -> tuple[str, ...]:
    """The longest folder prefix that ``paths`` share (heatmaps keep the layout below it)."""
    parents = [Path(p).resolve().parent.parts for p in paths]
    common: list[str] = []
    for parts in zip(*parents):
        if len(set(parts)) > 1:
            break
        common.append(parts[0])
    return tuple(common) or ("/",)
