"""Visible depth: the object's height map with the support plane removed (pure functions).

Pipeline of :func:`extract_visible_depth` on an organised point map
``xyz`` float32 (H, W, 3) in metres, camera frame, ``z == 0`` where no point:

1. fit the support plane with RANSAC on a seeded subsample of the valid
   points (inlier band ``plane_distance / 2``), refitted on the points behind
   it while a large share lies there (see :func:`fit_background_plane`);
   signed distances of ALL valid points follow in numpy, positive on the
   camera's side;
2. raw foreground = valid points farther than ``plane_distance`` on the
   camera side; clean it with an opening then a closing (``morph_kernel``
   square), drop 8-connected blobs under ``min_component_pixels`` and fill
   enclosed holes made mostly (> 50 %) of missing points. Enclosed regions of
   valid table points (the hole of a bagel) stay background;
3. normalise over the raw foreground points the height above the fitted
   plane: ``depth = h / h_max``, so **1 = the point highest above the table
   (nearest the camera), 0 = table level**; background is 0. Height rather
   than raw camera z: with the camera looking straight down the two agree up
   to an offset, and with a tilted view (MVTec 3D-AD, Eyecandies) raw z would
   add the table's slope as a gradient across the object. Dividing by h_max
   rather than min-max stretching keeps flat-topped objects seen from above
   from amplifying sensor noise to the full [0, 1] range;
4. foreground pixels without a usable point (missing, or added by the mask
   clean-up) take the value of the nearest raw-foreground pixel;
5. resize to ``image_size``: depth with an antialiased bilinear filter,
   renormalised by the resized mask so object borders are not darkened by the
   zero background; mask = resized mask coverage >= 0.5.

No object (empty foreground after clean-up) gives zeros and an empty mask with
a logged warning; an xyz map without a valid point (or under 3) raises.
"""

from __future__ import annotations

import logging

import numpy as np
from PIL import Image
from scipy import ndimage

from bridgenet.config import DataConfig

LOGGER = logging.getLogger(__name__)
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
BEHIND_FRACTION = 0.05
MAX_REFITS = 3


def valid_points(xyz: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels holding a measured point (finite and ``z != 0``)."""
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"xyz must be (H, W, 3), got shape {xyz.shape}")
    z = xyz[..., 2]
    # NaN/Inf in any coordinate propagates to the sum (faster than isfinite on (H, W, 3)).
    with np.errstate(invalid="ignore", over="ignore"):
        total = xyz[..., 0] + xyz[..., 1] + z
    return np.isfinite(total) & (z != 0)


MISSING_REGION_CLOSING = 4  # closings (3 x 3 cross) that join the part's region across scattered dropouts


def missing_share(xyz: np.ndarray, foreground: np.ndarray) -> float:
    """Share of the part's region that holds no measured point: the sensor's dropouts on the part,
    which the network never sees (they are filled from their neighbours); 0 for an empty foreground.
    A dirty lens, stray light or a failing projector raises it before the scores move (the drift
    monitor's ``missing_points``).

    The region is ``foreground`` (H, W) bool at xyz's resolution, closed
    (:data:`MISSING_REGION_CLOSING` times) and with its holes filled: scattered dropouts also
    erode the foreground itself (at 10 % of the points lost, a rendered bagel's foreground
    halves), so counting inside the foreground alone would read 5 % where the region reads 10 %.
    """
    if foreground.shape != xyz.shape[:2]:
        raise ValueError(f"foreground {foreground.shape} and xyz {xyz.shape} differ in size")
    if not foreground.any():
        return 0.0
    box = _bounding_box(foreground, MISSING_REGION_CLOSING + 1)  # the same result as on the whole frame, faster
    region = ndimage.binary_fill_holes(ndimage.binary_closing(foreground[box], iterations=MISSING_REGION_CLOSING))
    return float((region & ~valid_points(xyz[box])).sum() / region.sum())


def _ransac_plane(
    points: np.ndarray, inlier_distance: float, iterations: int, rng: np.random.Generator
) -> np.ndarray:
    """Best of ``iterations`` planes through 3 points drawn with ``rng``, refined on its inliers.

    The candidate with the most points within ``inlier_distance`` wins (the first
    on ties); a least-squares fit to its inliers gives the plane. Vectorised numpy,
    so one generator state gives one plane: open3d's parallel ``segment_plane``
    returned different planes for the same seed depending on thread timing.
    """
    points = points.astype(np.float64)
    triples = points[rng.integers(0, len(points), size=(int(iterations), 3))]  # (I, 3, 3)
    normals = np.cross(triples[:, 1] - triples[:, 0], triples[:, 2] - triples[:, 0])
    lengths = np.linalg.norm(normals, axis=1)
    usable = lengths > 1e-12 * max(1.0, float(np.abs(points).max()) ** 2)
    if not usable.any():
        raise ValueError(f"plane fit failed (degenerate points: {len(points)} collinear or repeated)")
    normals = normals[usable] / lengths[usable, None]
    offsets = -np.einsum("ij,ij->i", normals, triples[usable, 0])
    counts = np.concatenate([_inlier_counts(points, normals[i:i + 64], offsets[i:i + 64], inlier_distance)
                             for i in range(0, len(normals), 64)])
    best = int(np.argmax(counts))
    plane = np.append(normals[best], offsets[best])
    inliers = points[np.abs(points @ plane[:3] + plane[3]) < inlier_distance]
    if len(inliers) >= 3:
        centroid = inliers.mean(axis=0)
        normal = np.linalg.svd(inliers - centroid, full_matrices=False)[2][-1]
        plane = np.append(normal, -normal @ centroid)
    norm = np.linalg.norm(plane[:3])
    if not np.isfinite(norm) or norm == 0:
        raise ValueError(f"plane fit failed (degenerate points), got model {plane.tolist()}")
    plane = plane / norm
    return -plane if plane[3] < 0 else plane


def _inlier_counts(points: np.ndarray, normals: np.ndarray, offsets: np.ndarray, inlier_distance: float) -> np.ndarray:
    """(P,) points of ``points`` (N, 3) within ``inlier_distance`` of each plane (P normals, P offsets).

    The arithmetic of ``(abs(points @ normals.T + offsets) < d).sum(0)`` in place: the same
    numbers, half the time (no (N, P) temporaries; 27 of a sample's 45 ms of preparing were here).
    """
    distances = points @ normals.T
    distances += offsets
    np.abs(distances, out=distances)
    return np.count_nonzero(distances < inlier_distance, axis=0)


def fit_background_plane(
    points: np.ndarray,
    inlier_distance: float,
    iterations: int,
    sample_points: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """RANSAC support plane (a, b, c, d) of ``points`` (N, 3), unit normal towards the camera.

    At most ``sample_points`` points, drawn with ``rng``, enter the fit, and the
    RANSAC candidates are drawn with ``rng`` too, so equal generators give equal
    planes. The camera (origin) is on the plane's positive side.

    The support is the dominant plane with nothing substantial behind it: when
    more than ``BEHIND_FRACTION`` of the points lie farther than
    ``2 * inlier_distance`` behind the plane found (the flat top of an object
    that fills more of the view than the visible table), the fit is repeated
    on those points, at most ``MAX_REFITS`` times.
    """
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points must be (N, 3), got shape {points.shape}")
    if len(points) < 3:
        raise ValueError(f"need at least 3 valid points to fit a plane, found {len(points)}")
    if len(points) > sample_points:
        points = points[np.sort(rng.choice(len(points), size=sample_points, replace=False))]
    plane = _ransac_plane(points, inlier_distance, iterations, rng)
    minimum_behind = max(3, int(BEHIND_FRACTION * len(points)))
    for _ in range(MAX_REFITS):
        behind = points[points @ plane[:3] + plane[3] < -2 * inlier_distance]
        if len(behind) < minimum_behind:
            break
        plane = _ransac_plane(behind, inlier_distance, iterations, rng)
    return plane


def signed_plane_distance(xyz: np.ndarray, plane: np.ndarray) -> np.ndarray:
    """(H, W) float32: distance of each point to ``plane``, positive on the camera's side."""
    return (xyz @ plane[:3].astype(np.float32) + np.float32(plane[3])).astype(np.float32)


def _erode(mask: np.ndarray, size: int) -> np.ndarray:
    return ndimage.minimum_filter(mask.view(np.uint8), size=size, mode="nearest").view(bool)


def _dilate(mask: np.ndarray, size: int) -> np.ndarray:
    # The reflected square of an even side sits one pixel off: shift it back so
    # that opening and closing leave a large square unchanged.
    origin = -1 if size % 2 == 0 else 0
    return ndimage.maximum_filter(
        mask.view(np.uint8), size=size, mode="nearest", origin=origin
    ).view(bool)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, height)),
        slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, width)),
    )


def clean_foreground(
    raw: np.ndarray, valid: np.ndarray, morph_kernel: int, min_component_pixels: int
) -> np.ndarray:
    """Opening, closing, small-blob removal and hole filling of a (H, W) bool mask.

    An enclosed background region is filled when more than half of its pixels
    are missing points (``~valid``), see the module docstring. The work is done
    on the bounding box of ``raw`` plus a margin wider than the kernel, which
    gives the same result as on the whole image.
    """
    out = np.zeros(raw.shape, dtype=bool)
    if not raw.any():
        return out
    box = _bounding_box(raw, morph_kernel + 1)
    mask = np.ascontiguousarray(raw[box], dtype=bool)
    if morph_kernel > 1:
        mask = _dilate(_erode(mask, morph_kernel), morph_kernel)
        mask = _erode(_dilate(mask, morph_kernel), morph_kernel)
    if min_component_pixels > 1 and mask.any():
        labels, _ = ndimage.label(mask, structure=_EIGHT_CONNECTED)
        keep = np.bincount(labels.ravel()) >= min_component_pixels
        keep[0] = False
        mask = keep[labels]
    background, count = ndimage.label(~mask)
    if count:
        border = np.unique(
            np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
        )
        sizes = np.bincount(background.ravel(), minlength=count + 1)
        missing = np.bincount(background[~valid[box]], minlength=count + 1)
        fill = missing > 0.5 * sizes
        fill[0] = False
        fill[border] = False
        mask |= fill[background]
    out[box] = mask
    return out


def normalise_height(height: np.ndarray, source: np.ndarray) -> np.ndarray:
    """(H, W) float32: ``height / max(height[source])`` on ``source``, 0 elsewhere.

    ``height`` is the distance above the support plane, so 1 is the point
    highest above the table (nearest the camera) and 0 is table level.
    """
    depth = np.zeros(height.shape, dtype=np.float32)
    values = height[source]
    if values.size == 0:
        return depth
    top = float(values.max())
    if not top > 0:
        raise ValueError(f"foreground heights must be above the plane, got maximum {top}")
    depth[source] = values / top
    return np.clip(depth, 0.0, 1.0, out=depth)


def fill_depth_holes(depth: np.ndarray, source: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Give each ``foreground`` pixel outside ``source`` the depth of its nearest source pixel.

    Arrays are (H, W); the result is float32, 0 outside ``foreground``.
    """
    out = np.where(foreground, depth, 0).astype(np.float32)
    holes = foreground & ~source
    if not holes.any() or not source.any():
        return out
    box = _bounding_box(foreground, 0)
    nearest = ndimage.distance_transform_edt(
        ~source[box], return_distances=False, return_indices=True
    )
    crop = depth[box]
    filled = crop[nearest[0], nearest[1]]
    out[box] = np.where(holes[box], filled, out[box])
    return out


def resize_depth_and_mask(
    depth: np.ndarray, foreground: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resize (H, W) depth and mask to (size, size).

    Antialiased bilinear, with the depth renormalised by the resized mask coverage.
    """

    def resize(array: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
        return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)

    coverage = resize(foreground.astype(np.float32))
    weighted = resize(np.where(foreground, depth, 0))
    mask = coverage >= 0.5
    out = np.zeros((size, size), dtype=np.float32)
    out[mask] = weighted[mask] / coverage[mask]
    return np.clip(out, 0.0, 1.0, out=out), mask


def extract_visible_depth(
    xyz: np.ndarray,
    *,
    image_size: int,
    plane_distance: float,
    ransac_iterations: int,
    ransac_sample_points: int,
    morph_kernel: int,
    min_component_pixels: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Visible depth of xyz (H, W, 3): depth (S, S) float32 in [0, 1], foreground (S, S) bool.

    S = ``image_size``: the whole frame resized (:func:`frame_visible_depth`, then step 5).
    Steps and conventions are in the module docstring.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    depth, foreground = frame_visible_depth(
        xyz, plane_distance=plane_distance, ransac_iterations=ransac_iterations,
        ransac_sample_points=ransac_sample_points, morph_kernel=morph_kernel,
        min_component_pixels=min_component_pixels, rng=rng,
    )
    if not foreground.any():
        return np.zeros((image_size, image_size), np.float32), np.zeros((image_size, image_size), bool)
    return resize_depth_and_mask(depth, foreground, image_size)


def frame_visible_depth(
    xyz: np.ndarray,
    *,
    plane_distance: float,
    ransac_iterations: int,
    ransac_sample_points: int,
    morph_kernel: int,
    min_component_pixels: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Steps 1-4 of the module docstring at the frame's own resolution: depth (H, W) float32
    in [0, 1] and foreground (H, W) bool (both empty, with a warning, where no object is found)."""
    if plane_distance <= 0:
        raise ValueError(f"plane_distance must be > 0, got {plane_distance}")
    valid = valid_points(xyz)
    count = int(valid.sum())
    if count == 0:
        raise ValueError("xyz map has no valid point (z == 0 or non-finite everywhere)")
    flat = xyz.reshape(-1, 3)
    indices = np.flatnonzero(valid)
    if count > ransac_sample_points:
        indices = indices[np.sort(rng.choice(count, size=ransac_sample_points, replace=False))]
    plane = fit_background_plane(
        flat[indices], plane_distance / 2, ransac_iterations, ransac_sample_points, rng
    )
    with np.errstate(invalid="ignore", over="ignore"):
        height = signed_plane_distance(xyz, plane)
        raw = valid & (height > plane_distance)
    foreground = clean_foreground(raw, valid, morph_kernel, min_component_pixels)
    if not foreground.any():
        LOGGER.warning(
            "no object found above the support plane (%d valid points, %d above it before "
            "clean-up); returning zero depth and an empty foreground",
            count,
            int(raw.sum()),
        )
        return np.zeros(valid.shape, np.float32), foreground
    source = foreground & raw
    depth = normalise_height(height, source)
    return fill_depth_holes(depth, source, foreground), foreground


def visible_depth(
    xyz: np.ndarray, data_cfg: DataConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`frame_visible_depth` with the settings of a ``data:`` config section (frame resolution)."""
    return frame_visible_depth(
        xyz,
        plane_distance=data_cfg.plane_distance,
        ransac_iterations=data_cfg.ransac_iterations,
        ransac_sample_points=data_cfg.ransac_sample_points,
        morph_kernel=data_cfg.morph_kernel,
        min_component_pixels=data_cfg.min_component_pixels,
        rng=rng,
    )
