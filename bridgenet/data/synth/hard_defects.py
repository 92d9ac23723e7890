"""The hard test defects (``synth.preset: hard``): faint, small or thin.

Soft stains and hue shifts, sub-millimetre bumps and dents, scratches and chips out of
the rim (:data:`bridgenet.data.families.HARD_DEFECTS`), unlike the training-time
texture anomalies.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.ndimage import binary_dilation, binary_erosion, label

from bridgenet.data.families import HARD_DEFECTS
from bridgenet.data.synth.materials import hue_shift_matrix
from bridgenet.data.synth.placement import (
    DEFECT_ATTEMPTS,
    MIN_DEFECT_HEIGHT_M,
    PlacementError,
    fit_disc,
    next_radius,
)
from bridgenet.data.synth.raycast import focal_length
from bridgenet.data.synth.render import line_weights, scan_geometry
from bridgenet.data.synth.spec import Defect, SampleParams

logger = logging.getLogger(__name__)

# placement rules of the hard defects: mask area as a fraction of the object's visible pixels
HARD_OBJECT_FRACTION = {
    "faint_stain": (0.02, 0.06),
    "discoloration": (0.02, 0.06),
    "micro_bump": (0.005, 0.02),
    "micro_dent": (0.005, 0.02),
    "rim_chip": (0.005, 0.03),
}
MAX_MICRO_SHIFT_M = 9e-4  # a micro bump or dent moves no point's z further
SOFT_MASK_WEIGHT = 0.5  # a soft stain's ground truth: where its profile exceeds this
SCRATCH_WIDTH_PX = (1.5, 2.8)  # on a camera-facing surface
SCRATCH_LENGTH = (0.15, 0.35)  # of the object's largest horizontal extent
_HARD_DEPTH_MM = {"micro_bump": (0.3, 0.8), "micro_dent": (-0.8, -0.3), "scratch": (-0.5, -0.2)}
_SCRATCH_ATTEMPTS = 64


def sample_hard_defect(
    params: SampleParams, name: str, rng: np.random.Generator, nthreads: int = 0
) -> tuple[Defect, dict]:
    """Place hard defect ``name`` (:data:`HARD_DEFECTS`) on the object of ``params``.

    Round ones (soft stains and hue shifts, micro bumps and dents) cover
    :data:`HARD_OBJECT_FRACTION` of the object's visible pixels; a scratch is a
    SCRATCH_WIDTH_PX wide line of SCRATCH_LENGTH of the object's extent; a rim
    chip bites out of the object's outline. Returns the defect and its ``scan_geometry``.
    """
    if name not in HARD_DEFECTS:
        raise ValueError(f"unknown hard defect {name!r}; known: {sorted(HARD_DEFECTS)}")
    clean = scan_geometry(params, None, nthreads)
    if name == "scratch":
        return _place_scratch(params, clean, rng, nthreads)
    if name == "rim_chip":
        return _place_rim_chip(params, clean, rng, nthreads)
    family = HARD_DEFECTS[name]
    recolour: tuple[float, ...] = ()
    if name == "faint_stain":  # 5-12 % darker, tinted by a few per cent
        gain = (1 - rng.uniform(0.05, 0.12)) * rng.uniform(0.97, 1.03, 3)
        recolour = tuple(float(g) for g in np.diag(gain).ravel())
    elif name == "discoloration":  # hue turned by 8-20 degrees, saturation scaled by 0.8-1.25
        angle = np.deg2rad(rng.uniform(8.0, 20.0)) * rng.choice([-1.0, 1.0])
        matrix = hue_shift_matrix(
            float(angle), float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
        )
        recolour = tuple(float(m) for m in matrix.ravel())
    depth = 1e-3 * rng.uniform(*_HARD_DEPTH_MM[name]) if name in _HARD_DEPTH_MM else 0.0
    n_object = int(clean["on_object"].sum())
    lo, hi = HARD_OBJECT_FRACTION[name]
    # a soft stain's mask (profile > 0.5) covers ~30 % of its disc, a patch's ~all of it
    coverage = 0.3 if recolour else 1.0
    radius = (
        np.sqrt(rng.uniform(lo, hi) * n_object / (np.pi * coverage))
        * params.camera_height
        / focal_length(params.image_size)
    )

    def make(centre: tuple, normal: tuple, radius: float) -> Defect:
        seed = int(rng.integers(0, 2**62))
        return Defect(
            name,
            family,
            centre,
            normal,
            radius,
            depth,
            (0.0, 0.0, 0.0),
            1.0 if recolour else 0.0,
            seed,
            recolour=recolour,
            mask_weight=SOFT_MASK_WEIGHT if recolour else 0.0,
        )

    return fit_disc(
        params, name, clean, rng, make, radius, n_object, (lo, hi), nthreads, MAX_MICRO_SHIFT_M
    )


def _place_scratch(
    params: SampleParams, clean: dict, rng: np.random.Generator, nthreads: int
) -> tuple[Defect, dict]:
    """A thin groove with a slight darkening through a camera-facing point, in one piece."""
    size = params.image_size
    depth = 1e-3 * rng.uniform(*_HARD_DEPTH_MM["scratch"])
    darken = rng.uniform(0.1, 0.25)
    width_px = rng.uniform(*SCRATCH_WIDTH_PX)
    vertices = clean["mesh"].vertices
    extent = float((vertices[:, :2].max(0) - vertices[:, :2].min(0)).max())
    length = extent * rng.uniform(*SCRATCH_LENGTH)
    seed = int(rng.integers(0, 2**62))
    on_object = np.flatnonzero(clean["on_object"])
    facing = np.flatnonzero(clean["valid"][on_object] & (clean["tex_normals"][:, 2] > 0.85))
    if not len(facing):
        raise PlacementError(f"{params.category}: no camera-facing object pixel for a scratch")
    plane = params.support_plane()
    last = "none"
    for _ in range(_SCRATCH_ATTEMPTS):
        k = rng.choice(facing)  # index among the object hits
        normal = clean["tex_normals"][k]
        side = np.cross(normal, [0.0, 0.0, 1.0] if abs(normal[2]) < 0.9 else [1.0, 0.0, 0.0])
        side /= np.linalg.norm(side)
        angle = rng.uniform(0, np.pi)
        tangent = np.cos(angle) * side + np.sin(angle) * np.cross(normal, side)
        z = float(clean["hits"]["t"][on_object[k]])
        defect = Defect(
            "scratch",
            HARD_DEFECTS["scratch"],
            tuple(float(c) for c in clean["tex_points"][k]),
            tuple(float(c) for c in normal),
            0.5 * width_px * z / focal_length(size),
            float(depth),
            (0.0, 0.0, 0.0),
            1.0,
            seed,
            shape="line",
            tangent=tuple(float(c) for c in tangent),
            length=float(length),
            recolour=tuple(float(g) for g in np.diag([1 - darken] * 3).ravel()),
        )
        mask = np.zeros(size * size, dtype=bool)
        weights = line_weights(clean["tex_points"], clean["tex_normals"], defect)
        mask[on_object[weights > 0]] = True
        last = _scratch_problem(mask.reshape(size, size), length * focal_length(size) / z)
        if last is None:
            hit_points = clean["dirs"][mask] * clean["hits"]["t"][mask, None]
            if (
                clean["valid"][mask].all()
                and (hit_points @ plane[:3] + plane[3] > MIN_DEFECT_HEIGHT_M).all()
            ):
                return defect, scan_geometry(params, defect, nthreads, clean=clean)
            last = "not all on valid points above the plane"
        logger.debug("%s/scratch: rejected (%s)", params.category, last)
        length = max(SCRATCH_LENGTH[0] * extent, 0.95 * length)
    raise PlacementError(
        f"{params.category}: could not place a scratch in one piece on the object's upper side in "
        f"{_SCRATCH_ATTEMPTS} attempts (last: {last})"
    )


def _scratch_problem(mask: np.ndarray, length_px: float) -> str | None:
    """Why a scratch mask (H, W) is not one piece of ~``length_px`` pixels, or None."""
    pieces = label(binary_dilation(mask), structure=np.ones((3, 3)))[1]
    if pieces != 1:
        return f"{pieces} pieces"
    rows, cols = np.nonzero(mask)
    span = float(np.hypot(rows.max() - rows.min(), cols.max() - cols.min()))
    if span < 0.8 * length_px:
        return f"spans {span:.0f} of {length_px:.0f} pixels"
    return None


def _place_rim_chip(
    params: SampleParams, clean: dict, rng: np.random.Generator, nthreads: int
) -> tuple[Defect, dict]:
    """Material removed through the object's height around a point of its outline."""
    size = params.image_size
    lo, hi = HARD_OBJECT_FRACTION["rim_chip"]
    object_image = clean["on_object"].reshape(size, size)
    n_object = int(object_image.sum())
    interior = np.zeros_like(object_image)
    interior[1:-1, 1:-1] = binary_erosion(object_image)[1:-1, 1:-1]
    outline = np.flatnonzero((object_image & ~interior).ravel() & clean["valid"])
    if not len(outline):
        raise PlacementError(f"{params.category}: the object has no outline to chip")
    points = np.zeros((size * size, 3))
    points[clean["on_object"]] = clean["tex_points"]
    top = float(clean["mesh"].vertices[:, 2].max())
    # about half the chip's disc lies on the object
    radius = (
        np.sqrt(rng.uniform(lo, hi) * n_object / (0.5 * np.pi))
        * params.camera_height
        / focal_length(size)
    )
    last = "none"
    for _ in range(DEFECT_ATTEMPTS):
        pick = rng.choice(outline)
        defect = Defect(
            "rim_chip",
            HARD_DEFECTS["rim_chip"],
            tuple(float(c) for c in points[pick]),
            (0.0, 0.0, 1.0),
            float(radius),
            -(top + 0.003),  # the whole column sinks below the support plane
            (0.0, 0.0, 0.0),
            0.0,
            int(rng.integers(0, 2**62)),
            shape="column",
        )
        scan = scan_geometry(params, defect, nthreads, clean=clean)
        fraction = scan["mask"].sum() / n_object
        lost = clean["on_object"] & ~scan["on_object"]
        if lost[pick] and lo <= fraction <= hi:
            return defect, scan
        last = f"radius {radius * 1e3:.1f} mm, mask fraction {fraction:.4f}, bites {lost[pick]}"
        logger.debug("%s/rim_chip: rejected (%s)", params.category, last)
        radius = next_radius(radius, fraction, lo, hi, 0.02)
    raise PlacementError(
        f"{params.category}: could not chip the rim over {lo}-{hi} of the object's pixels in "
        f"{DEFECT_ATTEMPTS} attempts (last: {last})"
    )
