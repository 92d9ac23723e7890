"""What fixes one synthetic scan (:class:`SampleParams`), a defect on it (:class:`Defect`) and
the scan itself (:class:`RenderedSample`); frames and shapes as in :mod:`bridgenet.data.synth.render`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bridgenet.data.families import FAMILIES
from bridgenet.data.synth.raycast import rotation_axis_angle, rotation_z

SHAPES = ("disc", "line", "column")
_FLIP = np.diag([1.0, -1.0, -1.0])  # world (z up) -> camera looking down (y down, z forward)


@dataclass(frozen=True)
class SampleParams:
    """Everything that fixes one defect-free scan (angles in radians, lengths in metres)."""

    category: str
    image_size: int
    noise_std_m: float
    shape_seed: int
    texture_seed: int
    noise_seed: int
    yaw: float
    offset: tuple[float, float]
    tilt_axis: float
    tilt: float
    camera_height: float
    light_azimuth: float
    light_elevation: float
    light_intensity: float
    ambient: float

    def world_to_camera(self) -> tuple[np.ndarray, np.ndarray]:
        """(R (3, 3), t (3,)) with p_cam = R p_world + t; the plane tilts about its origin."""
        axis = np.array([np.cos(self.tilt_axis), np.sin(self.tilt_axis), 0.0])
        return _FLIP @ rotation_axis_angle(axis, self.tilt), np.array(
            [0.0, 0.0, self.camera_height]
        )

    def object_to_camera(self) -> tuple[np.ndarray, np.ndarray]:
        """(R (3, 3), t (3,)) with p_cam = R p_object + t."""
        r_wc, t_wc = self.world_to_camera()
        return r_wc @ rotation_z(self.yaw), r_wc @ np.array([*self.offset, 0.0]) + t_wc

    def light(self) -> np.ndarray:
        """(3,) unit direction towards the light, camera frame."""
        el, az = self.light_elevation, self.light_azimuth
        towards = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        return self.world_to_camera()[0] @ towards

    def support_plane(self) -> np.ndarray:
        """(4,) [n, d] in the camera frame: height above the plane = n . p + d."""
        r_wc, t_wc = self.world_to_camera()
        return np.append(r_wc[:, 2], -r_wc[:, 2] @ t_wc)


@dataclass(frozen=True)
class Defect:
    """A smooth patch of radius ``radius`` (m) around ``centre`` (object frame, m).

    ``depth``: displacement in metres of the patch's flat floor (or top) along
    ``normal`` (the unit outward surface normal at the centre, object frame;
    negative = inward), with a steep rim (:func:`plateau`), used by
    "geometric" and "both"; ``colour`` (RGB in [0, 1]) is blended
    into the albedo with peak weight ``strength`` by "appearance" and "both".

    ``shape`` (see the module docstring): a "line" runs ``length`` metres along
    the unit ``tangent`` (object frame, perpendicular to ``normal``), ``radius``
    being its half width; a "column" is the vertical cylinder of ``radius``
    around ``centre``, moved ``depth`` along ``normal`` (0, 0, 1). A non-empty
    ``recolour`` (a row-major 3 x 3 matrix) replaces the blend towards
    ``colour``: the albedo moves towards ``recolour @ albedo`` with weight
    ``strength`` times the smooth patch profile (a soft edge), and the mask is
    where that profile exceeds ``mask_weight``.
    """

    name: str
    family: str
    centre: tuple[float, float, float]
    normal: tuple[float, float, float]
    radius: float
    depth: float
    colour: tuple[float, float, float]
    strength: float
    seed: int
    shape: str = "disc"
    tangent: tuple[float, float, float] = (1.0, 0.0, 0.0)
    length: float = 0.0
    recolour: tuple[float, ...] = ()
    mask_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(
                f"defect {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}"
            )
        if self.shape not in SHAPES:
            raise ValueError(
                f"defect {self.name!r}: shape must be one of {SHAPES}, got {self.shape!r}"
            )
        if self.recolour and len(self.recolour) != 9:
            raise ValueError(
                f"defect {self.name!r}: recolour must be 9 numbers (3 x 3), got {len(self.recolour)}"
            )
        if self.shape == "line" and not 0 < self.length < 0.2:
            raise ValueError(
                f"defect {self.name!r}: a line needs a length in (0, 0.2) m, got {self.length}"
            )
        if not 0 <= self.mask_weight < 1:
            raise ValueError(
                f"defect {self.name!r}: mask_weight must be in [0, 1), got {self.mask_weight}"
            )
        if not 0 < self.radius < 0.1:
            raise ValueError(
                f"defect {self.name!r}: radius must be in (0, 0.1) m, got {self.radius}"
            )
        if abs(np.linalg.norm(self.normal) - 1) > 1e-6:
            raise ValueError(
                f"defect {self.name!r}: normal must be a unit vector, got {self.normal}"
            )
        if not 0 <= self.strength <= 1:
            raise ValueError(
                f"defect {self.name!r}: strength must be in [0, 1], got {self.strength}"
            )


@dataclass(frozen=True)
class RenderedSample:
    """One scan.

    Attributes:
        xyz: (H, W, 3) float32 camera-frame points in metres, 0 where no point.
        rgb: (H, W, 3) uint8 shaded colour image of the same pixels.
        mask: (H, W) bool, pixels whose ray hits the defect region.
        object_mask: (H, W) bool, pixels whose ray hits the object.
        plane: (4,) support plane [n, d]: height above it = n . xyz + d.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    mask: np.ndarray
    object_mask: np.ndarray
    plane: np.ndarray
