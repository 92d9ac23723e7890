"""Time AU-PRO and the pixel metrics on a test-set-sized batch of random maps.

    python -m bench.aupro [--n 200] [--size 800] [--seed 0]

Builds N random anomaly maps of size x size (float32) where half of the images
carry 1-4 elliptical ground-truth blobs that score higher on average, then prints
the wall time and the extra peak memory (numpy allocations traced by tracemalloc,
on top of the inputs) of each metric, and the process's peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import time
import tracemalloc

import numpy as np

from bridgenet import metrics


def make_data(
    n: int, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random maps (n, size, size) float32, blob masks (n, size, size) bool, labels (n,)."""
    labels = np.zeros(n, dtype=np.int64)
    labels[: n // 2] = 1
    masks = np.zeros((n, size, size), dtype=bool)
    rows, cols = np.ogrid[:size, :size]
    for i in np.flatnonzero(labels):
        for _ in range(rng.integers(1, 5)):
            cy, cx = rng.uniform(0.1, 0.9, size=2) * size
            ry, rx = rng.uniform(0.01, 0.08, size=2) * size
            masks[i] |= ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
    maps = rng.random((n, size, size), dtype=np.float32)
    maps += 0.6 * masks * rng.random((n, size, size), dtype=np.float32)
    return maps, masks, labels


def timed(name: str, fn, *args, **kwargs) -> object:
    tracemalloc.reset_peak()
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    shown = f"{value:.6f}" if isinstance(value, float) else "dict"
    print(f"{name:<28} {seconds:8.2f} s   extra peak {peak / 2**30:6.2f} GiB   value {shown}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.aupro", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--size", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    maps, masks, labels = make_data(args.n, args.size, np.random.default_rng(args.seed))
    scores = maps.reshape(args.n, -1).max(axis=1)
    print(
        f"{args.n} maps of {args.size} x {args.size} float32 "
        f"({maps.nbytes / 2**30:.2f} GiB), {int(masks.sum())} anomalous pixels"
    )
    tracemalloc.start()
    timed("aupro@0.3 (2000 thresholds)", metrics.aupro, maps, masks, 0.3)
    timed("aupro@0.01 (2000 thresholds)", metrics.aupro, maps, masks, 0.01)
    timed("aupro@0.3 (exact curve)", metrics.aupro, maps, masks, 0.3, None)
    timed("aupro@0.01 (exact curve)", metrics.aupro, maps, masks, 0.01, None)
    timed("pixel_auroc", metrics.pixel_auroc, maps, masks)
    timed("pixel_ap", metrics.pixel_ap, maps, masks)
    result = timed("compute_all (2000)", metrics.compute_all, scores, labels, maps, masks)
    tracemalloc.stop()
    print({k: round(v, 6) for k, v in result.items()})
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"process peak RSS {peak_rss:.2f} GiB")


if __name__ == "__main__":
    main()
