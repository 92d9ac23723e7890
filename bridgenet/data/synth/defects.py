"""The default test defects (``synth.preset: default``): large, high-contrast round patches.

Dents and bumps displace the surface, stains and colour changes recolour it,
contamination does both (:data:`bridgenet.data.families.DEFAULT_DEFECTS`).
:func:`sample_defect` places any defect type, handing the hard ones to
:mod:`bridgenet.data.synth.hard_defects`.
"""

from __future__ import annotations

import colorsys

import numpy as np

from bridgenet.data.families import DEFAULT_DEFECTS, DEFECT_FAMILIES, HARD_DEFECTS
from bridgenet.data.synth.hard_defects import sample_hard_defect
from bridgenet.data.synth.materials import base_hue
from bridgenet.data.synth.placement import fit_disc
from bridgenet.data.synth.raycast import focal_length
from bridgenet.data.synth.render import scan_geometry
from bridgenet.data.synth.spec import Defect, SampleParams

# placement rules of the default defects
MIN_DEFECT_FRACTION = 0.015  # of the image's pixels
MAX_DEFECT_FRACTION = 0.07
_DEPTH_MM = {"dent": (-4.0, -2.5), "bump": (1.5, 3.0), "contamination": (1.0, 2.0)}
_CONTAMINANTS = np.array(
    [[0.55, 0.58, 0.5], [0.88, 0.87, 0.82], [0.1, 0.1, 0.1], [0.4, 0.45, 0.22]]
)


def _defect_look(
    name: str, category: str, rng: np.random.Generator
) -> tuple[tuple[float, float, float], float]:
    """(colour, strength) of a defect's albedo change; strength 0 for geometric defects."""
    if name == "stain":
        colour = rng.uniform([0.05, 0.03, 0.02], [0.25, 0.18, 0.1])
        return tuple(float(c) for c in colour), float(rng.uniform(0.55, 0.8))
    if name == "color":
        hue = (base_hue(category) + rng.uniform(0.25, 0.75)) % 1.0
        colour = colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.6, 0.9))
        return tuple(float(c) for c in colour), float(rng.uniform(0.6, 0.85))
    if name == "contamination":
        colour = np.clip(
            _CONTAMINANTS[rng.integers(len(_CONTAMINANTS))] * rng.uniform(0.9, 1.1, 3), 0, 1
        )
        return tuple(float(c) for c in colour), float(rng.uniform(0.7, 0.9))
    return (0.0, 0.0, 0.0), 0.0


def sample_defect(
    params: SampleParams, name: str, rng: np.random.Generator, nthreads: int = 0
) -> tuple[Defect, dict]:
    """Place defect ``name`` on the visible top of the object of ``params``.

    The centre is a camera-facing object pixel of the defect-free scan, away from
    the silhouette; the radius is adapted until the mask covers
    MIN..MAX_DEFECT_FRACTION of the image and every mask pixel has a valid point
    at least MIN_DEFECT_HEIGHT_M above the support plane. Returns the defect and its
    ``scan_geometry`` (for :func:`render_sample`).
    """
    if name in HARD_DEFECTS:
        return sample_hard_defect(params, name, rng, nthreads)
    if name not in DEFAULT_DEFECTS:
        raise ValueError(f"unknown defect {name!r}; known: {sorted(DEFECT_FAMILIES)}")
    clean = scan_geometry(params, None, nthreads)
    size = params.image_size
    colour, strength = _defect_look(name, params.category, rng)
    depth = 1e-3 * rng.uniform(*_DEPTH_MM[name]) if name in _DEPTH_MM else 0.0
    # start from a radius whose disc would cover 2-3.2 % of the image
    radius = (
        np.sqrt(rng.uniform(0.02, 0.032) * size * size / np.pi)
        * params.camera_height
        / focal_length(size)
    )

    def make(centre: tuple, normal: tuple, radius: float) -> Defect:
        seed = int(rng.integers(0, 2**62))
        return Defect(
            name, DEFAULT_DEFECTS[name], centre, normal, radius, depth, colour, strength, seed
        )

    return fit_disc(
        params,
        name,
        clean,
        rng,
        make,
        radius,
        size * size,
        (MIN_DEFECT_FRACTION, MAX_DEFECT_FRACTION),
        nthreads,
    )
