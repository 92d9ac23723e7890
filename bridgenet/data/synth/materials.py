"""Procedural surface colours (albedo) of the synthetic objects and support plane.

A material is built per sample from a seeded generator and evaluated at 3-D points
in the object frame (world frame for the plane), so textures are continuous on
the surface, independent of pose, and unchanged where a dent or bump moves it.
"""

from __future__ import annotations

import colorsys

import numpy as np

from bridgenet.data.synth.meshes import FourierNoise


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def base_hue(category: str) -> float:
    """Hue in [0, 1) of the category's base colour."""
    return colorsys.rgb_to_hsv(*PALETTES[category][0])[0]


_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def hue_shift_matrix(angle: float, saturation: float) -> np.ndarray:
    """(3, 3) linear RGB map that turns every colour's hue by ``angle`` radians and scales
    its saturation by ``saturation``, keeping its luma (a rotation and scaling of the
    chroma plane of YIQ)."""
    c, s = saturation * np.cos(angle), saturation * np.sin(angle)
    chroma = np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    return np.linalg.inv(_RGB_TO_YIQ) @ chroma @ _RGB_TO_YIQ


class Material:
    """Procedural albedo of one sample: ``material(points, normals)`` -> (N, 3) in [0, 1].

    Points and normals are (N, 3) in the object frame, so the texture is continuous
    on the surface and independent of pose. ``top`` is the object's height (m).
    """

    def __init__(self, category: str, rng: np.random.Generator, top: float):
        if category not in PALETTES:
            raise ValueError(f"no material for category {category!r}; known: {sorted(PALETTES)}")
        self.category = category
        self.top = top
        base, dark, speck, self.specular, self.shininess = PALETTES[category]
        jitter = rng.uniform(0.88, 1.1) * rng.uniform(0.95, 1.05, 3)
        self.base = np.clip(np.array(base) * jitter, 0, 1)
        self.dark = np.clip(np.array(dark) * jitter, 0, 1)
        self.speck = np.array(speck)
        self.low = FourierNoise(rng, 20.0, 80.0)
        self.fine = FourierNoise(rng, 300.0, 900.0)
        self.spots = FourierNoise(rng, *_SPOT_FREQ[category], waves=24)
        self.grain = FourierNoise(rng, 60.0, 150.0, waves=6)
        self.spot_level = rng.uniform(1.3, 1.7)
        angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.1)
        self.tree_axis = np.array([distance * np.cos(angle), top / 2 + distance * np.sin(angle)])

    def __call__(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        low = self.low(points)
        fine = self.fine(points)
        if self.category == "bagel":
            # baked crust: darker towards the top, light seeds on the upper side
            tan = _smoothstep(points[:, 2] / self.top + 0.1 * low, 0.35, 0.95)
            mix = (0.35 + 0.5 * tan)[:, None]
            spot = _smoothstep(
                self.spots(points), self.spot_level, self.spot_level + 0.3
            ) * _smoothstep(normals[:, 2], 0.2, 0.5)
        elif self.category == "dowel":
            # wood grain: growth rings around a tree axis parallel to the dowel (x)
            radius = np.hypot(points[:, 1] - self.tree_axis[0], points[:, 2] - self.tree_axis[1])
            rings = np.sin(2 * np.pi * 700.0 * (radius + 0.002 * self.grain(points)))
            mix = (0.15 + 0.25 * _smoothstep(rings, 0.3, 1.0) + 0.1 * low)[:, None]
            spot = _smoothstep(self.spots(points), self.spot_level + 0.6, self.spot_level + 0.9)
        elif self.category == "cookie":
            # paler rim, dark chocolate chips
            mix = (0.25 + 0.15 * low - 0.2 * _smoothstep(normals[:, 2], 0.3, 0.9))[:, None]
            spot = _smoothstep(self.spots(points), self.spot_level - 0.2, self.spot_level)
        else:  # cable: coloured insulation with faint lengthwise streaks
            mix = (0.2 + 0.1 * low)[:, None]
            spot = 0.3 * _smoothstep(self.grain(points * np.array([0.2, 3.0, 3.0])), 0.8, 1.2)
        colour = (1 - mix) * self.base + mix * self.dark
        colour = (1 - spot[:, None]) * colour + spot[:, None] * self.speck
        return np.clip(colour * (1 + 0.05 * fine[:, None]), 0.0, 1.0)


class PlaneMaterial:
    """Dark, slightly mottled support surface.

    Call with (N, 3) points of the frame given by ``rotation`` (3, 3) and
    ``translation`` (3,) (world point = rotation @ point + translation), so camera
    points need no transform; the texture stays fixed on the plane.
    """

    def __init__(self, rng: np.random.Generator, rotation: np.ndarray, translation: np.ndarray):
        self.base = (rng.uniform(0.12, 0.2) * rng.uniform(0.95, 1.05, 3)).astype(np.float32)
        self.mottle = FourierNoise(rng, 4.0, 60.0, waves=8).in_frame(rotation, translation)
        self.specular, self.shininess = 0.05, 8.0

    def __call__(self, points: np.ndarray) -> np.ndarray:
        level = (1 + 0.15 * self.mottle(points)).astype(np.float32)
        return np.clip(self.base * level[:, None], 0.0, 1.0)


# base colour, dark colour, speckle colour, specular strength, shininess
PALETTES = {
    "bagel": ((0.86, 0.62, 0.33), (0.48, 0.26, 0.1), (0.95, 0.9, 0.72), 0.12, 18.0),
    "dowel": ((0.88, 0.72, 0.5), (0.62, 0.42, 0.22), (0.4, 0.25, 0.12), 0.08, 12.0),
    "cookie": ((0.82, 0.6, 0.34), (0.62, 0.4, 0.18), (0.22, 0.12, 0.06), 0.05, 10.0),
    "cable": ((0.14, 0.32, 0.72), (0.08, 0.2, 0.5), (0.5, 0.6, 0.85), 0.35, 40.0),
}
_SPOT_FREQ = {
    "bagel": (250.0, 500.0),
    "dowel": (80.0, 200.0),
    "cookie": (90.0, 180.0),
    "cable": (100.0, 200.0),
}
