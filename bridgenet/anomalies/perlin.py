"""Perlin noise and thresholded Perlin masks (numpy, vectorised, seeded)."""

from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return 6 * t**5 - 15 * t**4 + 10 * t**3


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient noise of ``shape`` with ``res`` periods per axis, values about [-1, 1]."""
    h, w = shape
    ry, rx = res
    ys = np.linspace(0, ry, h, endpoint=False)
    xs = np.linspace(0, rx, w, endpoint=False)
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]
    angles = rng.uniform(0, 2 * np.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)

    def corner(dy: int, dx: int) -> np.ndarray:
        cy, cx = yi[:, None] + dy, xi[None, :] + dx
        return gy[cy, cx] * (yf - dy) + gx[cy, cx] * (xf - dx)

    u, v = _fade(yf), _fade(xf)
    top = corner(0, 0) * (1 - v) + corner(0, 1) * v
    bottom = corner(1, 0) * (1 - v) + corner(1, 1) * v
    return np.sqrt(2) * (top * (1 - u) + bottom * u)


def perlin_mask(
    size: int,
    rng: np.random.Generator,
    min_scale: int = 0,
    max_scale: int = 6,
    threshold: float = 0.5,
) -> np.ndarray:
    """A random binary region (size, size) bool: one Perlin field thresholded, or the
    union or intersection of two, each with probability 1/3; never empty."""

    def field() -> np.ndarray:
        res = 2 ** rng.integers(min_scale, max_scale, size=2)
        noise = perlin_noise((size, size), (int(res[0]), int(res[1])), rng)
        return np.rot90(noise, k=int(rng.integers(4))) > threshold

    for _ in range(100):
        first, second = field(), field()
        choice = rng.integers(3)
        mask = first | second if choice == 0 else first & second if choice == 1 else first
        if mask.any():
            return mask
    raise RuntimeError("could not draw a non-empty Perlin mask in 100 tries; lower anomalies.texture.threshold")
