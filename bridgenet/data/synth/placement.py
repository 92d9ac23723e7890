"""Placing a defect on the object of a clean scan, shared by every defect type.

A patch goes on a camera-facing object point of the defect-free scan; its radius is
adapted (:func:`next_radius`) until its mask covers the wanted share of pixels and lies
on valid points at least :data:`MIN_DEFECT_HEIGHT_M` above the support plane.
Used by :mod:`bridgenet.data.synth.defects` and :mod:`bridgenet.data.synth.hard_defects`.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.ndimage import distance_transform_edt

from bridgenet.data.synth.raycast import focal_length
from bridgenet.data.synth.render import scan_geometry
from bridgenet.data.synth.spec import Defect, SampleParams

logger = logging.getLogger(__name__)

MIN_DEFECT_HEIGHT_M = 0.002  # every defect pixel lies at least this far above the support plane
DEFECT_ATTEMPTS = 16  # radii tried before a placement gives up


class PlacementError(RuntimeError):
    """A defect of the wanted size does not fit on this scan's object (the scene is redrawn,
    :func:`bridgenet.data.synth.dataset.make_sample`)."""


def fit_disc(
    params: SampleParams,
    name: str,
    clean: dict,
    rng: np.random.Generator,
    make,
    radius: float,
    pixels: int,
    bounds: tuple[float, float],
    nthreads: int,
    max_shift: float = np.inf,
) -> tuple[Defect, dict]:
    """Place a round patch made by ``make(centre, normal, radius)`` on a camera-facing
    point of the clean scan, adapting the radius until its mask covers ``bounds`` of
    ``pixels`` and lies on valid points MIN_DEFECT_HEIGHT_M above the plane whose
    z moves less than ``max_shift`` metres."""
    size = params.image_size
    lo, hi = bounds
    up = np.full(size * size, -1.0)
    up[clean["on_object"]] = clean["tex_normals"][:, 2]
    points = np.zeros((size * size, 3))
    points[clean["on_object"]] = clean["tex_points"]
    normals = np.zeros((size * size, 3))
    normals[clean["on_object"]] = clean["tex_normals"]
    inside = distance_transform_edt(clean["on_object"].reshape(size, size)).ravel()
    plane = params.support_plane()
    last = "none"
    for _ in range(DEFECT_ATTEMPTS):
        radius_px = radius * focal_length(size) / params.camera_height
        for min_up, margin in ((0.85, 0.6), (0.7, 0.3), (0.5, 0.0)):
            candidates = np.flatnonzero(
                clean["valid"] & (up > min_up) & (inside > margin * radius_px)
            )
            if len(candidates):
                break
        else:
            raise PlacementError(
                f"{params.category}: no camera-facing object pixel to place a {name!r} defect on"
            )
        pick = rng.choice(candidates)
        normal = normals[pick] / np.linalg.norm(normals[pick])
        defect = make(
            tuple(float(c) for c in points[pick]), tuple(float(c) for c in normal), float(radius)
        )
        scan = scan_geometry(params, defect, nthreads, clean=clean)
        mask = scan["mask"]
        fraction = mask.sum() / pixels
        hit_points = scan["dirs"][mask] * scan["hits"]["t"][mask, None]
        height = hit_points @ plane[:3] + plane[3]
        on_object = bool(scan["valid"][mask].all() and (height > MIN_DEFECT_HEIGHT_M).all())
        if on_object and np.isfinite(max_shift):
            shift = np.abs(scan["hits"]["t"][mask] - clean["hits"]["t"][mask])
            on_object = bool(shift.max() < max_shift)
        if on_object and lo <= fraction <= hi:
            return defect, scan
        last = f"radius {radius * 1e3:.1f} mm, mask fraction {fraction:.4f}, on object {on_object}"
        logger.debug("%s/%s: rejected defect (%s)", params.category, name, last)
        radius = next_radius(radius, fraction, lo, hi, 0.03)
    raise PlacementError(
        f"{params.category}: could not place a {name!r} defect covering {lo}-{hi} of "
        f"{pixels} pixels on the object in {DEFECT_ATTEMPTS} attempts (last: {last})"
    )


def next_radius(radius: float, fraction: float, lo: float, hi: float, largest: float) -> float:
    """The next try's radius (m) after a defect covered ``fraction`` of the object, aiming
    inside [``lo``, ``hi``]: area goes with the radius squared; at most ``largest``."""
    if fraction < lo:
        return min(largest, radius * min(1.5, np.sqrt(1.4 * lo / max(fraction, 1e-4))))
    if fraction > hi:
        return radius * np.sqrt(0.7 * hi / fraction)
    return radius
