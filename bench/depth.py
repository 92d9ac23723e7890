"""Time visible-depth extraction on a synthetic 800 x 800 scene; prints ms/sample.

Run: ``python -m bench.depth [--repeats N] [--size 800]``. The scene is a tilted
table seen by a pinhole camera with a box and a dome on it, sensor noise and
missing points; the settings are those of ``params.yaml``'s ``data:`` section.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bridgenet.config import load_params
from bridgenet.data.depth import visible_depth


def tilted_scene(size: int, rng: np.random.Generator) -> np.ndarray:
    """xyz float32 (size, size, 3): tilted plane 0.5 m away, a 2 cm box, a 3 cm dome, holes."""
    focal = 1.2 * size
    coords = (np.arange(size, dtype=np.float64) - size / 2) / focal
    rays = np.stack(
        np.broadcast_arrays(coords[None, :], coords[:, None], np.ones((size, size))), axis=-1
    )
    normal = np.array([0.15, -0.2, -1.0])
    normal /= np.linalg.norm(normal)
    offset = 0.5 * -normal[2]  # plane passes through (0, 0, 0.5); camera on the positive side
    u, v = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size))
    height = np.where((np.abs(u + 0.3) < 0.25) & (np.abs(v - 0.2) < 0.3), 0.02, 0.0)
    dome = 1 - ((u - 0.4) ** 2 + (v + 0.3) ** 2) / 0.3**2
    height = np.maximum(height, 0.03 * np.sqrt(np.clip(dome, 0, None)))
    depth = (height - offset) / (rays @ normal)
    xyz = rays * depth[..., None]
    xyz[..., 2] += rng.normal(0, 2e-4, (size, size))
    holes = rng.random((size, size)) < 0.01
    holes[int(0.4 * size) : int(0.45 * size), int(0.25 * size) : int(0.3 * size)] = True
    xyz[holes] = 0
    return xyz.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.depth", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=800)
    args = parser.parse_args()
    data_cfg = load_params().data
    xyz = tilted_scene(args.size, np.random.default_rng(0))
    visible_depth(xyz, data_cfg, np.random.default_rng(1))  # warm-up (open3d import, caches)
    times = []
    for i in range(args.repeats):
        start = time.perf_counter()
        _, foreground = visible_depth(xyz, data_cfg, np.random.default_rng(i))
        times.append(time.perf_counter() - start)
    ms = 1000 * np.array(times)
    print(
        f"visible depth {args.size}x{args.size} -> {data_cfg.image_size}: "
        f"{np.median(ms):.1f} ms/sample (median of {args.repeats}, "
        f"min {ms.min():.1f}, max {ms.max():.1f}); "
        f"foreground {foreground.mean():.3f} of the image"
    )


if __name__ == "__main__":
    main()
