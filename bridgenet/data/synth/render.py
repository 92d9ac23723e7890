"""Scans of one object on a support plane: organised xyz, shaded RGB, defect mask.

The scanner is a pinhole camera looking down at a slightly tilted support plane
(:mod:`bridgenet.data.synth.raycast`). Coordinates:

* *object frame*: the mesh frame of :mod:`bridgenet.data.synth.meshes` (z up, resting on z = 0);
* *world frame*: the support plane is z = 0, z up;
* *camera frame* (MVTec 3D-AD): x right, y down, z along the optical axis, metres.

A defect is a smooth patch on the object: geometric defects displace the mesh
there, appearance defects change the albedo, "both" do both. Its mask is exactly
the set of pixels whose ray hits the patch (before or after displacement).
Besides this round patch (shape "disc") there are two shapes: a "line" (a thin
groove, evaluated per pixel because it is narrower than the mesh spacing) and a
"column" (material removed through the whole object height, a bite out of its
outline: the column sinks below the support plane, so its rays hit the plane).
"""

from __future__ import annotations

import functools

import numpy as np
import open3d as o3d

from bridgenet.data.synth.materials import Material, PlaneMaterial
from bridgenet.data.synth.meshes import FourierNoise, Mesh, build_object
from bridgenet.data.synth.raycast import (
    FIELD_OF_VIEW_M,
    GRAZING_COS,
    OBJECT,
    PLANE,
    PLANE_HALF_SIZE_M,
    build_scene,
    cast,
    interpolate,
    ray_directions,
    shade,
)
from bridgenet.data.synth.spec import Defect, RenderedSample, SampleParams

EXPOSED_DEPTH_M = 2e-4  # a column's surface moved further (the sensor noise) is newly exposed
DEFECT_EDGE_WEIGHT = 0.15  # profile weight where a colour defect reaches full strength
GEOMETRY_EDGE_WEIGHT = 0.35  # the same for a displacement


def mesh_spacing(image_size: int) -> float:
    """Vertex spacing (m): 3 pixel footprints, clipped to [0.5, 2] mm.

    Facets stay far below the sensor noise (sagitta of 1.2 mm chords on a 1 cm
    radius: 0.02 mm); shading uses interpolated normals and per-pixel textures,
    and the ray-casting BVH build (the main cost) grows with the triangle count.
    """
    return float(np.clip(3.0 * FIELD_OF_VIEW_M / image_size, 5e-4, 2e-3))


@functools.lru_cache(maxsize=4)
def object_mesh(category: str, shape_seed: int, image_size: int) -> Mesh:
    """The (cached, read-only) undeformed mesh of a sample."""
    mesh = build_object(category, np.random.default_rng(shape_seed), mesh_spacing(image_size))
    for array in (mesh.vertices, mesh.triangles, mesh.normals):
        array.flags.writeable = False
    return mesh


def defect_weights(mesh: Mesh, defect: Defect, flat: bool = False) -> np.ndarray:
    """(V,) weights in [0, 1]: 1 at the centre, exactly 0 outside the irregular patch.

    Only upward-facing surface (object-frame normal z > 0.45) is affected, so the
    patch stays visible from above. ``flat`` gives the radial falloff a flat
    floor and a steep rim (:func:`plateau`); the fade towards steep surface
    stays smooth, so that no displaced rim turns away from the camera.
    """
    weights = np.zeros(len(mesh.vertices))
    distance = np.linalg.norm(mesh.vertices - np.asarray(defect.centre), axis=1)
    near = np.flatnonzero(distance < 1.4 * defect.radius)
    noise = FourierNoise(
        np.random.default_rng(defect.seed), 0.5 / defect.radius, 2.0 / defect.radius, waves=8
    )
    radius = defect.radius * (1 + 0.25 * np.clip(noise(mesh.vertices[near]), -1.5, 1.5))
    s = distance[near] / radius
    up = np.clip((mesh.normals[near, 2] - 0.45) / 0.25, 0.0, 1.0)
    radial = np.where(s < 1, (1 - s**2) ** 2, 0.0)
    weights[near] = (plateau(radial) if flat else radial) * up * up * (3 - 2 * up)
    return weights


def line_weights(points: np.ndarray, normals: np.ndarray, defect: Defect) -> np.ndarray:
    """(N,) groove profile in [0, 1] of a "line" ``defect`` at object-frame ``points`` (N, 3).

    Across: (1 - s^2) with s the distance from the line (in the tangent plane at
    the centre) over the half width, exactly 0 beyond it; along: a smoothstep
    taper over the last 10 % of each end; only upward surface (normal z > 0.45,
    ``normals`` (N, 3)) within 3 half lengths below the tangent plane is scratched.
    """
    offset = points - np.asarray(defect.centre)
    tangent, normal = np.asarray(defect.tangent), np.asarray(defect.normal)
    along = offset @ tangent
    across = np.linalg.norm(
        offset - along[:, None] * tangent - (offset @ normal)[:, None] * normal, axis=1
    )
    half = 0.5 * defect.length
    s = across / defect.radius
    end = np.clip((half - np.abs(along)) / (0.1 * half), 0.0, 1.0)
    near = (offset @ normal > -1.5 * defect.length) & (normals[:, 2] > 0.45)
    return np.where((s < 1) & near, (1 - s**2) * end * end * (3 - 2 * end), 0.0)


def column_weights(mesh: Mesh, defect: Defect) -> np.ndarray:
    """(V,) weights in [0, 1] of a "column" ``defect``: 1 within ~70 % of its irregular
    radius from the centre's vertical axis, 0 beyond it, the same at every height (so
    the moved column never folds over itself)."""
    flat = mesh.vertices * np.array([1.0, 1.0, 0.0])
    noise = FourierNoise(
        np.random.default_rng(defect.seed), 0.5 / defect.radius, 2.0 / defect.radius, waves=8
    )
    radius = defect.radius * (1 + 0.2 * np.clip(noise(flat), -1.5, 1.5))
    s = (
        np.linalg.norm(flat - np.asarray(defect.centre) * np.array([1.0, 1.0, 0.0]), axis=1)
        / radius
    )
    return plateau(np.where(s < 1, (1 - s**2) ** 2, 0.0), edge=0.25)


def plateau(weights: np.ndarray, edge: float = GEOMETRY_EDGE_WEIGHT) -> np.ndarray:
    """Flat-bottomed profile (same shape as ``weights``) in [0, 1]: 1 where ``weights >= edge``.

    Natural shape variation is smooth and broad; a dent or bump with a flat
    floor and a steep rim (a smoothstep over weights 0..``edge``, the outer
    ~40 % of the radius) is what makes a geometric defect a defect.
    """
    t = np.clip(weights / edge, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def scan_geometry(
    params: SampleParams, defect: Defect | None = None, nthreads: int = 0, clean: dict | None = None
) -> dict:
    """Cast the scene of ``params`` (with ``defect``'s displacement) without shading.

    ``clean``, the result of ``scan_geometry(params)``, saves a cast when given.

    Returns a dict with the undeformed ``mesh`` and the displaced ``shown`` one, the
    cast ``hits``, ``valid`` (N,) pixels with a 3-D point, ``on_object`` (N,), the
    defect ``mask`` (N,), and for the M object hits the defect ``object_weights``
    (M,) and the undeformed object-frame ``tex_points``/``tex_normals`` (M, 3).
    """
    mesh = object_mesh(params.category, params.shape_seed, params.image_size)
    tris = mesh.triangles
    shape = "disc" if defect is None else defect.shape
    if shape == "column":
        weights = column_weights(mesh, defect)
    elif shape == "disc" and defect is not None:
        weights = defect_weights(mesh, defect)
    else:  # no defect, or a line (evaluated per pixel below)
        weights = np.zeros(len(mesh.vertices))
    moved = (
        defect is not None and defect.family != "appearance" and defect.depth != 0
    ) and shape != "line"
    shown = mesh
    amount = np.zeros(len(mesh.vertices))
    if moved and shape == "column":
        amount = defect.depth * weights
        shown = mesh.displaced(amount, direction=np.asarray(defect.normal))
    elif moved:
        rough = FourierNoise(
            np.random.default_rng(defect.seed + 1), 4.0 / defect.radius, 10.0 / defect.radius
        )
        texture = (
            1.0
            if defect.family == "geometric"
            else 0.75 + 0.25 * np.clip(rough(mesh.vertices), -1, 1)
        )
        # one direction for the whole patch keeps the deformed surface smooth
        shown = mesh.displaced(
            defect.depth * defect_weights(mesh, defect, flat=True) * texture,
            direction=np.asarray(defect.normal),
        )
    r_oc, t_oc = params.object_to_camera()
    r_wc, t_wc = params.world_to_camera()
    corners = PLANE_HALF_SIZE_M * np.array([[-1.0, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]])
    plane = corners @ r_wc.T + t_wc
    scene = build_scene(shown.vertices @ r_oc.T + t_oc, tris, plane)
    dirs, unit = ray_directions(params.image_size)
    hits = cast(scene, dirs, nthreads)
    on_object = hits["geometry"] == OBJECT
    facing = np.einsum("ij,ij->i", hits["face_normal"], unit)
    valid = (hits["geometry"] >= 0) & (np.abs(facing) >= GRAZING_COS)

    mask = np.zeros(len(dirs), dtype=bool)
    if moved and shape == "column":
        # rays that lost their object hit, and those that now see a surface moved noticeably
        if clean is None:
            clean = scan_geometry(params, None, nthreads)
        clean_object = clean["hits"]["geometry"] == OBJECT
        moved_by = np.abs(
            interpolate(amount, tris, hits["triangle"][on_object], hits["uv"][on_object])
        )
        mask[np.flatnonzero(on_object)[moved_by > EXPOSED_DEPTH_M]] = True
        mask |= (clean_object & ~on_object) | (clean_object & (valid != clean["valid"]))
    elif moved:
        # pixels hitting the displaced patch, or that hit the patch before it moved
        patch = weights[tris].max(1) > 0
        mask[on_object] = patch[hits["triangle"][on_object]]
        if clean is None:
            clean = scan_geometry(params, None, nthreads)
        clean_hits = clean["hits"]
        clean_object = clean_hits["geometry"] == OBJECT
        mask[clean_object] |= patch[clean_hits["triangle"][clean_object]]
    tri, uv = hits["triangle"][on_object], hits["uv"][on_object]
    tex_points = interpolate(mesh.vertices, tris, tri, uv)
    tex_normals = interpolate(mesh.normals, tris, tri, uv)
    tex_normals /= np.linalg.norm(tex_normals, axis=1, keepdims=True)
    if shape == "line":
        object_weights = line_weights(tex_points, tex_normals, defect)
    else:
        object_weights = interpolate(weights, tris, tri, uv)
    if (
        defect is not None
        and (shape == "line" or defect.family != "geometric")
        and shape != "column"
    ):
        # where the albedo (or a line's depth) changes noticeably
        mask[np.flatnonzero(on_object)[object_weights > defect.mask_weight]] = True
    return {
        "mesh": mesh,
        "shown": shown,
        "scene": scene,
        "dirs": dirs,
        "unit": unit,
        "hits": hits,
        "facing": facing,
        "valid": valid,
        "on_object": on_object,
        "mask": mask,
        "object_weights": object_weights,
        "tex_points": tex_points,
        "tex_normals": tex_normals,
    }


def render_sample(
    params: SampleParams,
    defect: Defect | None = None,
    nthreads: int = 0,
    geometry: dict | None = None,
) -> RenderedSample:
    """Render the scan of ``params``, optionally with ``defect``; a pure function of its inputs.

    The same ``params`` with and without a defect share pose, texture, lighting and
    sensor noise, so the two renders differ only where the defect acts.
    ``geometry``, the result of ``scan_geometry(params, defect)``, saves a cast.
    """
    g = scan_geometry(params, defect, nthreads) if geometry is None else geometry
    hits, on_object, valid, shown = g["hits"], g["on_object"], g["valid"], g["shown"]
    on_plane = hits["geometry"] == PLANE
    hit = on_object | on_plane
    r_oc, t_oc = params.object_to_camera()
    r_wc, t_wc = params.world_to_camera()
    t = hits["t"]
    if defect is not None and defect.shape == "line" and defect.depth != 0:
        # the groove moves each hit along its ray: by depth / cos(ray, normal) in path length
        t = t.copy()
        unit = g["unit"][on_object]
        towards = np.minimum(np.einsum("ij,ij->i", g["tex_normals"] @ r_oc.T, unit), -0.3)
        t[on_object] += defect.depth * g["object_weights"] / towards * unit[:, 2]
    points = g["dirs"] * np.where(hit, t, 0.0)[:, None]
    surface = points if t is hits["t"] else g["dirs"] * np.where(hit, hits["t"], 0.0)[:, None]

    tex_rng = np.random.default_rng(params.texture_seed)
    material = Material(params.category, tex_rng, top=float(g["mesh"].vertices[:, 2].max()))
    plane_material = PlaneMaterial(tex_rng, r_wc.T, -r_wc.T @ t_wc)
    albedo = plane_material(points)  # every pixel sees the plane or the object
    albedo[on_object] = material(g["tex_points"], g["tex_normals"])
    if defect is not None and defect.recolour:
        own = albedo[on_object]
        target = own @ np.asarray(defect.recolour, dtype=np.float32).reshape(3, 3).T
        weight = (defect.strength * g["object_weights"]).astype(np.float32)[:, None]
        albedo[on_object] = np.clip(own + weight * (target - own), 0.0, 1.0)
    elif defect is not None and defect.family != "geometric" and defect.shape == "disc":
        mottle = FourierNoise(
            np.random.default_rng(defect.seed + 2), 1.0 / defect.radius, 6.0 / defect.radius
        )
        alpha = np.clip(g["object_weights"] / DEFECT_EDGE_WEIGHT, 0, 1) * (
            0.8 + 0.2 * np.clip(mottle(g["tex_points"]), -1, 1)
        )
        albedo[on_object] += (
            defect.strength * alpha[:, None] * (np.asarray(defect.colour) - albedo[on_object])
        )

    normals = np.empty(points.shape, dtype=np.float32)
    normals[:] = r_wc[:, 2]
    smooth = interpolate(
        shown.normals, shown.triangles, hits["triangle"][on_object], hits["uv"][on_object]
    )
    normals[on_object] = smooth @ r_oc.T / np.linalg.norm(smooth, axis=1, keepdims=True)
    light = params.light().astype(np.float32)
    lit = hit.astype(np.float32)
    # shadow rays leave from the mesh surface: a groove below it must not shadow itself
    origins = surface - (np.float32(2e-4) * np.sign(g["facing"]))[:, None] * hits["face_normal"]
    # only the object casts shadows: test just the rays that pass its bounding sphere
    vertices = shown.vertices @ r_oc.T + t_oc
    centre = 0.5 * (vertices.min(0) + vertices.max(0))
    radius = np.linalg.norm(vertices - centre, axis=1).max() + 1e-3
    to_centre = (centre - origins).astype(np.float32)
    along = to_centre @ light
    near = (
        hit
        & (along > -radius)
        & (np.einsum("ij,ij->i", to_centre, to_centre) - along**2 < radius**2)
    )
    rays = np.empty((int(near.sum()), 6), dtype=np.float32)
    rays[:, :3] = origins[near]
    rays[:, 3:] = light
    lit[near] = 1.0 - g["scene"].test_occlusions(o3d.core.Tensor(rays), nthreads=nthreads).numpy()
    specular = np.where(
        on_object, np.float32(material.specular), np.float32(plane_material.specular)
    )
    shininess = np.where(
        on_object, np.float32(material.shininess), np.float32(plane_material.shininess)
    )
    colour = shade(
        albedo,
        normals,
        -g["unit"],
        light,
        lit,
        np.float32(params.ambient),
        np.float32(params.light_intensity),
        specular,
        shininess,
    )

    # sensor noise: drawn in full whatever the defect, so paired renders share it
    noise_rng = np.random.default_rng(params.noise_seed)
    z_noise = noise_rng.standard_normal(len(points), dtype=np.float32) * np.float32(
        params.noise_std_m
    )
    colour += noise_rng.standard_normal(colour.shape, dtype=np.float32) * np.float32(1.2 / 255)
    scale = np.where(valid, 1 + z_noise / np.where(valid, t, 1.0), 0.0).astype(np.float32)
    size = params.image_size
    return RenderedSample(
        xyz=(points * scale[:, None]).reshape(size, size, 3),
        rgb=np.round(np.clip(colour, 0, 1) * 255).astype(np.uint8).reshape(size, size, 3),
        mask=g["mask"].reshape(size, size),
        object_mask=on_object.reshape(size, size),
        plane=params.support_plane(),
    )
