"""Procedural object meshes for the synthetic data set.

Every builder returns a closed, outward-oriented triangle mesh in the *object
frame*: metres, z up, resting on the plane z = 0, centred on the z axis. Shapes
are built as (rows x columns) vertex grids (a profile revolved about an axis, or
a circle swept along a curve) so the resolution is uniform and displaced
patches (shape noise, dents, bumps) stay smooth.

Categories and their shape families:

* ``bagel``  - torus-like ring, flattened and lumpy;
* ``dowel``  - chamfered cylinder lying on its side;
* ``cookie`` - flat disc with rounded rim and a bumpy, domed top;
* ``cable``  - tube swept along a bent planar curve, with rounded ends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

import numpy as np


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh.

    Attributes:
        vertices: (V, 3) float64 positions in metres.
        triangles: (T, 3) int32 vertex indices, counter-clockwise seen from outside.
        normals: (V, 3) float64 unit vertex normals (area-weighted face normals).
    """

    vertices: np.ndarray
    triangles: np.ndarray
    normals: np.ndarray

    @classmethod
    def from_arrays(cls, vertices: np.ndarray, triangles: np.ndarray) -> Mesh:
        """Build a mesh, computing its vertex normals."""
        vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        triangles = np.ascontiguousarray(triangles, dtype=np.int32)
        return cls(vertices, triangles, vertex_normals(vertices, triangles))

    def displaced(self, amount: np.ndarray, direction: np.ndarray | None = None) -> Mesh:
        """New mesh with every vertex moved ``amount`` (V,) metres along ``direction`` (3,),
        or along its own normal when ``direction`` is None."""
        if amount.shape != (len(self.vertices),):
            raise ValueError(
                f"displacement must have shape ({len(self.vertices)},), got {amount.shape}"
            )
        towards = (
            self.normals if direction is None else np.asarray(direction, dtype=np.float64)[None]
        )
        return Mesh.from_arrays(self.vertices + amount[:, None] * towards, self.triangles)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals, (V, 3), from (V, 3) vertices and (T, 3) triangles."""
    v0, v1, v2 = (vertices[triangles[:, k]] for k in range(3))
    face = np.cross(v1 - v0, v2 - v0)
    normals = np.zeros_like(vertices)
    idx = triangles.ravel()
    for axis in range(3):
        normals[:, axis] = np.bincount(
            idx, weights=np.repeat(face[:, axis], 3), minlength=len(vertices)
        )
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    return normals / np.maximum(length, 1e-20)


def grid_mesh(
    grid: np.ndarray,
    wrap_rows: bool = False,
    start_pole: np.ndarray | None = None,
    end_pole: np.ndarray | None = None,
) -> Mesh:
    """Triangulate an (R, C, 3) vertex grid whose columns wrap around.

    Rows wrap too when ``wrap_rows`` (a torus); otherwise the optional poles close
    the first and last rows with triangle fans. The result is oriented outward
    (positive signed volume) for closed surfaces.
    """
    if grid.ndim != 3 or grid.shape[2] != 3 or grid.shape[0] < 2 or grid.shape[1] < 3:
        raise ValueError(f"grid must have shape (R>=2, C>=3, 3), got {grid.shape}")
    rows, cols = grid.shape[:2]
    vertices = [grid.reshape(-1, 3)]
    i, j = np.meshgrid(np.arange(rows if wrap_rows else rows - 1), np.arange(cols), indexing="ij")
    a = i * cols + j
    b = i * cols + (j + 1) % cols
    c = ((i + 1) % rows) * cols + j
    d = ((i + 1) % rows) * cols + (j + 1) % cols
    faces = [np.stack([a, b, d], -1).reshape(-1, 3), np.stack([a, d, c], -1).reshape(-1, 3)]
    ring = np.arange(cols)
    n_vertices = rows * cols
    if start_pole is not None:
        vertices.append(np.asarray(start_pole, dtype=np.float64)[None])
        pole = np.full(cols, n_vertices)
        faces.append(np.stack([pole, (ring + 1) % cols, ring], -1))
        n_vertices += 1
    if end_pole is not None:
        vertices.append(np.asarray(end_pole, dtype=np.float64)[None])
        last = (rows - 1) * cols
        pole = np.full(cols, n_vertices)
        faces.append(np.stack([pole, last + ring, last + (ring + 1) % cols], -1))
    verts = np.concatenate(vertices)
    tris = np.concatenate(faces).astype(np.int32)
    v0, v1, v2 = (verts[tris[:, k]] for k in range(3))
    if np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() < 0:
        tris = tris[:, [0, 2, 1]]
    return Mesh.from_arrays(verts, tris)


def resample_polyline(points: np.ndarray, spacing: float) -> np.ndarray:
    """Points every ~``spacing`` along a 2-D polyline (K, 2), keeping its corners."""
    out = []
    for p, q in pairwise(points):
        n = max(1, int(np.ceil(np.linalg.norm(q - p) / spacing)))
        t = np.arange(n)[:, None] / n
        out.append(p + t * (q - p))
    out.append(points[-1:])
    return np.concatenate(out)


def arc(centre: tuple[float, float], radius: float, a0: float, a1: float, n: int = 8) -> np.ndarray:
    """(n, 2) points on a circular arc from angle a0 to a1 (radians)."""
    a = np.linspace(a0, a1, n)
    return np.stack([centre[0] + radius * np.cos(a), centre[1] + radius * np.sin(a)], -1)


class FourierNoise:
    """Smooth 3-D noise: a normalised sum of random plane waves.

    ``noise(p)`` for points (N, 3) in metres returns (N,) values with zero mean and
    unit variance over space; wavelengths lie between 1/max_freq and 1/min_freq.
    """

    def __init__(self, rng: np.random.Generator, min_freq: float, max_freq: float, waves: int = 16):
        if not 0 < min_freq <= max_freq:
            raise ValueError(f"need 0 < min_freq <= max_freq, got {min_freq}, {max_freq}")
        if waves < 1:
            raise ValueError(f"waves must be >= 1, got {waves}")
        freq = np.exp(rng.uniform(np.log(min_freq), np.log(max_freq), waves))
        direction = rng.normal(size=(waves, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        # float32: ~10x faster sines, and phase errors stay far below a radian
        self.k = (2 * np.pi * freq[:, None] * direction).T.astype(np.float32)
        self.phase = rng.uniform(0, 2 * np.pi, waves).astype(np.float32)
        amp = 1.0 / freq
        self.amp = (amp / np.sqrt(0.5 * np.sum(amp**2))).astype(np.float32)

    def in_frame(self, rotation: np.ndarray, translation: np.ndarray) -> FourierNoise:
        """The same field for points q of another frame, where p = rotation @ q + translation."""
        other = object.__new__(FourierNoise)
        other.k = (rotation.T @ self.k).astype(np.float32)
        other.phase = (self.phase + translation @ self.k).astype(np.float32)
        other.amp = self.amp
        return other

    def __call__(self, points: np.ndarray) -> np.ndarray:
        waves = np.asarray(points, dtype=np.float32) @ self.k
        waves += self.phase
        return (np.sin(waves, out=waves) @ self.amp).astype(np.float64)


def _rest_on_plane(mesh: Mesh) -> Mesh:
    v = mesh.vertices.copy()
    v[:, :2] -= 0.5 * (v[:, :2].min(0) + v[:, :2].max(0))
    v[:, 2] -= v[:, 2].min()
    return Mesh(v, mesh.triangles, mesh.normals)


def _count(length: float, spacing: float, minimum: int = 12) -> int:
    return max(minimum, int(np.ceil(length / spacing)))


def build_bagel(rng: np.random.Generator, spacing: float) -> Mesh:
    """Flattened, lumpy torus; outer diameter ~7.5-9 cm."""
    major = rng.uniform(0.027, 0.031)
    minor = rng.uniform(0.012, 0.014)
    flatten = rng.uniform(0.72, 0.85)
    n_major = _count(2 * np.pi * (major + minor), spacing)
    n_minor = _count(2 * np.pi * minor, spacing)
    phi = 2 * np.pi * np.arange(n_minor) / n_minor
    theta = 2 * np.pi * np.arange(n_major) / n_major
    ring = major + minor * np.cos(phi)[:, None]
    height = np.broadcast_to(flatten * minor * np.sin(phi)[:, None], (n_minor, n_major))
    grid = np.stack([ring * np.cos(theta), ring * np.sin(theta), height], -1)
    mesh = grid_mesh(grid, wrap_rows=True)
    lumps = FourierNoise(rng, 15.0, 60.0)(mesh.vertices)
    return _rest_on_plane(mesh.displaced(0.0008 * lumps))


def build_dowel(rng: np.random.Generator, spacing: float) -> Mesh:
    """Chamfered wooden cylinder lying along x; radius ~1.2-1.4 cm, length 7-9 cm."""
    radius = rng.uniform(0.012, 0.014)
    half = 0.5 * rng.uniform(0.07, 0.09)
    chamfer = rng.uniform(0.0015, 0.003)
    corners = np.array(
        [
            [-half, spacing],
            [-half, radius - chamfer],
            [-half + chamfer, radius],
            [half - chamfer, radius],
            [half, radius - chamfer],
            [half, spacing],
        ]
    )
    profile = resample_polyline(corners, spacing)  # (axial x, distance from axis)
    n_theta = _count(2 * np.pi * radius, spacing)
    theta = 2 * np.pi * np.arange(n_theta) / n_theta
    x = np.broadcast_to(profile[:, :1], (len(profile), n_theta))
    grid = np.stack([x, profile[:, 1:] * np.cos(theta), profile[:, 1:] * np.sin(theta)], -1)
    mesh = grid_mesh(grid, start_pole=np.array([-half, 0, 0]), end_pole=np.array([half, 0, 0]))
    grain = FourierNoise(rng, 40.0, 120.0)(mesh.vertices)
    return _rest_on_plane(mesh.displaced(0.00015 * grain))


def build_cookie(rng: np.random.Generator, spacing: float) -> Mesh:
    """Flat round cookie, diameter ~6.4-7.2 cm, rounded rim, bumpy domed top."""
    radius = rng.uniform(0.032, 0.036)
    height = rng.uniform(0.009, 0.012)
    dome = rng.uniform(0.001, 0.003)
    edge = 0.45 * height
    rim = np.concatenate(
        [
            arc((radius - edge, edge), edge, -np.pi / 2, 0.0),
            arc((radius - edge, height - edge), edge, 0.0, np.pi / 2),
        ]
    )
    top_r = np.linspace(radius - edge, 0.0, 24)[1:-1]
    top = np.stack([top_r, height + dome * (1 - (top_r / (radius - edge)) ** 2)], -1)
    corners = np.concatenate([[[spacing, 0.0]], rim, top])
    profile = resample_polyline(corners, spacing)  # (distance from axis, z)
    n_theta = _count(2 * np.pi * radius, spacing)
    theta = 2 * np.pi * np.arange(n_theta) / n_theta
    r = profile[:, :1]
    grid = np.stack(
        [
            r * np.cos(theta),
            r * np.sin(theta),
            np.broadcast_to(profile[:, 1:], (len(profile), n_theta)),
        ],
        -1,
    )
    mesh = grid_mesh(grid, start_pole=np.zeros(3), end_pole=np.array([0.0, 0.0, height + dome]))
    up = np.clip((mesh.normals[:, 2] - 0.2) / 0.6, 0.0, 1.0)
    bumps = FourierNoise(rng, 60.0, 200.0, waves=24)(mesh.vertices)
    return _rest_on_plane(mesh.displaced(rng.uniform(0.0003, 0.0005) * up * bumps))


def build_cable(rng: np.random.Generator, spacing: float) -> Mesh:
    """Tube of radius ~0.9-1.0 cm swept along a bent planar curve ~11 cm long."""
    radius = rng.uniform(0.009, 0.010)
    length = rng.uniform(0.10, 0.12)
    amplitude = rng.uniform(0.010, 0.022)
    waves = rng.uniform(0.5, 1.0)
    phase = rng.uniform(0, 2 * np.pi)
    n_rows = _count(1.4 * length, spacing)
    s = np.linspace(0.0, 1.0, n_rows)
    centre = np.stack(
        [
            length * (s - 0.5),
            amplitude * np.sin(2 * np.pi * waves * s + phase),
            np.full_like(s, radius),
        ],
        -1,
    )
    tangent = np.gradient(centre, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    n_caps = _count(0.5 * np.pi * radius, spacing, minimum=6)
    beta = np.linspace(0.0, 0.5 * np.pi, n_caps + 1)[1:-1]
    centres = np.concatenate(
        [
            centre[0] - tangent[0] * radius * np.sin(beta[::-1, None]),
            centre,
            centre[-1] + tangent[-1] * radius * np.sin(beta[:, None]),
        ]
    )
    tangents = np.concatenate(
        [np.repeat(tangent[:1], len(beta), 0), tangent, np.repeat(tangent[-1:], len(beta), 0)]
    )
    radii = np.concatenate(
        [radius * np.cos(beta[::-1]), np.full(n_rows, radius), radius * np.cos(beta)]
    )
    side = np.stack([-tangents[:, 1], tangents[:, 0], np.zeros(len(tangents))], -1)
    side /= np.linalg.norm(side, axis=1, keepdims=True)
    up = np.array([0.0, 0.0, 1.0])
    n_around = _count(2 * np.pi * radius, spacing)
    a = 2 * np.pi * np.arange(n_around) / n_around
    grid = centres[:, None] + radii[:, None, None] * (
        np.cos(a)[None, :, None] * side[:, None] + np.sin(a)[None, :, None] * up
    )
    mesh = grid_mesh(
        grid, start_pole=centre[0] - tangent[0] * radius, end_pole=centre[-1] + tangent[-1] * radius
    )
    return _rest_on_plane(mesh)


BUILDERS: dict[str, Callable[[np.random.Generator, float], Mesh]] = {
    "bagel": build_bagel,
    "dowel": build_dowel,
    "cookie": build_cookie,
    "cable": build_cable,
}


def build_object(category: str, rng: np.random.Generator, spacing: float) -> Mesh:
    """Build one randomly sized instance of ``category`` with vertices ~``spacing`` metres apart."""
    if category not in BUILDERS:
        raise ValueError(f"unknown synthetic category {category!r}; known: {sorted(BUILDERS)}")
    if not 1e-4 <= spacing <= 5e-3:
        raise ValueError(f"mesh spacing must be in [1e-4, 5e-3] m, got {spacing}")
    return BUILDERS[category](rng, spacing)
