"""Pinhole camera, rigid transforms, ray casting and shading primitives.

Coordinates: the camera frame is MVTec 3D-AD's (x right, y down, z along the
optical axis, metres). Rays start at the camera centre, one per pixel centre,
with direction (x/z, y/z, 1), so a ray's hit distance ``t`` is the point's z.
Ray casting uses ``open3d.t.geometry.RaycastingScene``.
"""

from __future__ import annotations

import functools

import numpy as np
import open3d as o3d

FIELD_OF_VIEW_M = 0.16  # width seen on the plane at REFERENCE_DISTANCE_M
REFERENCE_DISTANCE_M = 0.45
GRAZING_COS = float(np.cos(np.deg2rad(78.0)))  # steeper surfaces give no 3-D point
PLANE_HALF_SIZE_M = 0.3
OBJECT, PLANE = 0, 1  # geometry ids in every scene


def focal_length(size: int) -> float:
    """Focal length in pixels of the square ``size`` x ``size`` camera."""
    if size < 8:
        raise ValueError(f"image size must be >= 8 pixels, got {size}")
    return size * REFERENCE_DISTANCE_M / FIELD_OF_VIEW_M


@functools.lru_cache(maxsize=2)
def ray_directions(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ray directions through the pixel centres of a ``size`` x ``size`` image, row-major.

    Returns two read-only float32 (size*size, 3) arrays: directions with z = 1, and
    the same normalised to unit length.
    """
    centres = (np.arange(size) + 0.5 - 0.5 * size) / focal_length(size)
    x, y = np.meshgrid(centres, centres)
    dirs = np.stack([x, y, np.ones_like(x)], -1).reshape(-1, 3)
    unit = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    out = dirs.astype(np.float32), unit.astype(np.float32)
    for array in out:
        array.flags.writeable = False
    return out


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation by ``angle`` radians about z."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) Rodrigues rotation by ``angle`` radians about ``axis`` (3,)."""
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def build_scene(object_vertices: np.ndarray, triangles: np.ndarray, plane_vertices: np.ndarray):
    """RaycastingScene with the object (id OBJECT) and the plane quad (id PLANE), camera frame."""
    scene = o3d.t.geometry.RaycastingScene()
    ids = [
        scene.add_triangles(
            o3d.core.Tensor(np.asarray(object_vertices, dtype=np.float32)),
            o3d.core.Tensor(np.asarray(triangles, dtype=np.uint32)),
        ),
        scene.add_triangles(
            o3d.core.Tensor(np.asarray(plane_vertices, dtype=np.float32)),
            o3d.core.Tensor(np.array([[0, 1, 2], [0, 2, 3]], dtype=np.uint32)),
        ),
    ]
    if ids != [OBJECT, PLANE]:
        raise RuntimeError(f"open3d assigned geometry ids {ids}, expected {[OBJECT, PLANE]}")
    return scene


def cast(scene, directions: np.ndarray, nthreads: int = 0) -> dict[str, np.ndarray]:
    """Cast rays from the camera centre along ``directions`` (N, 3).

    Returns t (N,) = z (inf on a miss), geometry (N,) id (-1 on a miss), triangle
    (N,), uv (N, 2) barycentrics (point = (1-u-v) v0 + u v1 + v v2) and
    face_normal (N, 3).
    """
    rays = np.zeros((len(directions), 6), dtype=np.float32)
    rays[:, 3:] = directions
    out = scene.cast_rays(o3d.core.Tensor(rays), nthreads=nthreads)
    t = out["t_hit"].numpy()
    hit = np.isfinite(t)
    return {
        "t": t,
        "geometry": np.where(hit, out["geometry_ids"].numpy().astype(np.int64), -1),
        "triangle": np.where(hit, out["primitive_ids"].numpy().astype(np.int64), -1),
        "uv": out["primitive_uvs"].numpy(),
        "face_normal": out["primitive_normals"].numpy(),
    }


def interpolate(
    values: np.ndarray, triangles: np.ndarray, triangle: np.ndarray, uv: np.ndarray
) -> np.ndarray:
    """Barycentric interpolation of per-vertex ``values`` (V, ...) at hits on ``triangle`` (N,)."""
    tri = triangles[triangle]
    expand = (slice(None),) + (None,) * (values.ndim - 1)
    u, v = uv[:, 0][expand], uv[:, 1][expand]
    return (1.0 - u - v) * values[tri[:, 0]] + u * values[tri[:, 1]] + v * values[tri[:, 2]]


def shade(albedo, normals, view, light, lit, ambient, intensity, specular, shininess) -> np.ndarray:
    """Ambient + Lambert + Blinn-Phong specular; (N, 3) linear colour.

    ``albedo``, ``normals``, ``view`` (towards the camera): (N, 3); ``light`` (3,)
    unit, towards the light; ``lit`` (N,) 0/1 shadow factor; ``specular``,
    ``shininess``: (N,) material terms; ``ambient``, ``intensity``: floats.
    """
    half = view + light
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    diffuse = np.clip(normals @ light, 0.0, None) * lit
    spec = specular * np.clip(np.einsum("ij,ij->i", normals, half), 0.0, None) ** shininess * lit
    return albedo * (ambient + intensity * diffuse)[:, None] + (intensity * spec)[:, None]
