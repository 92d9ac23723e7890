"""The embedded default data set: synthetic scans in the MVTec 3D-AD layout.

``synthesize(cfg, out_dir)`` writes, for every category of ``cfg``::

    out_dir/<cat>/{train,validation}/good/{rgb,xyz}/NNN.{png,tiff}
    out_dir/<cat>/test/<good|defect>/{rgb,xyz,gt}/NNN.{png,tiff,png}

Each sample is a procedural object (:mod:`bridgenet.data.synth.meshes`) on a tilted
support plane, ray cast by :mod:`bridgenet.data.synth.render`. Test defects come in
three families (:data:`bridgenet.data.families.DEFECT_FAMILIES`); a defect's ground truth is exactly the
set of pixels whose ray hits the defect region.

Two presets (``synth.preset``, :data:`bridgenet.data.families.PRESETS`) choose the test defect types. The
"default" ones are large and high contrast; the "hard" ones are faint, small or
thin (sub-millimetre bumps and dents, soft low-contrast stains and hue shifts,
scratches, chips out of the rim) and unlike the training-time texture anomalies.
Good samples do not depend on the preset.

Determinism: sample ``index`` of ``split/kind`` of ``category`` draws only from
``SeedSequence(seed, spawn_key=(crc32(category), crc32(split/kind), index))``, so
results depend neither on generation order nor on the number of worker processes.
"""

from __future__ import annotations

import colorsys
import logging
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion, distance_transform_edt, label
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from bridgenet.config import SynthConfig
from bridgenet.data.families import DEFAULT_DEFECTS, DEFECT_FAMILIES, HARD_DEFECTS, PRESETS
from bridgenet.data.synth.materials import base_hue, hue_shift_matrix
from bridgenet.data.synth.meshes import BUILDERS
from bridgenet.data.synth.preview import write_preview
from bridgenet.data.synth.raycast import focal_length
from bridgenet.data.synth.render import (
    Defect,
    RenderedSample,
    SampleParams,
    line_weights,
    render_sample,
    scan_geometry,
)

logger = logging.getLogger(__name__)

# placement rules of the default defects
MIN_DEFECT_FRACTION = 0.015  # of the image's pixels
MAX_DEFECT_FRACTION = 0.07
MIN_DEFECT_HEIGHT_M = 0.002  # every defect pixel lies at least this far above the support plane
_DEFECT_ATTEMPTS = 16
_DEPTH_MM = {"dent": (-4.0, -2.5), "bump": (1.5, 3.0), "contamination": (1.0, 2.0)}
_CONTAMINANTS = np.array(
    [[0.55, 0.58, 0.5], [0.88, 0.87, 0.82], [0.1, 0.1, 0.1], [0.4, 0.45, 0.22]]
)
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


def sample_seed(
    seed: int, category: str, split: str, kind: str, index: int
) -> np.random.SeedSequence:
    """The seed sequence of one sample (see the module docstring)."""
    key = (zlib.crc32(category.encode()), zlib.crc32(f"{split}/{kind}".encode()), int(index))
    return np.random.SeedSequence(seed, spawn_key=key)


def sample_params(
    category: str, image_size: int, noise_std_m: float, rng: np.random.Generator
) -> SampleParams:
    """Draw size/shape and texture seeds, pose, plane tilt and lighting of one scan."""
    if category not in BUILDERS:
        raise ValueError(f"unknown synthetic category {category!r}; known: {sorted(BUILDERS)}")
    seeds = rng.integers(0, 2**63, size=3)
    return SampleParams(
        category=category,
        image_size=int(image_size),
        noise_std_m=float(noise_std_m),
        shape_seed=int(seeds[0]),
        texture_seed=int(seeds[1]),
        noise_seed=int(seeds[2]),
        yaw=float(rng.uniform(0, 2 * np.pi)),
        offset=(float(rng.uniform(-0.008, 0.008)), float(rng.uniform(-0.008, 0.008))),
        tilt_axis=float(rng.uniform(0, 2 * np.pi)),
        tilt=float(np.deg2rad(rng.uniform(1.0, 4.0))),
        camera_height=float(rng.uniform(0.43, 0.48)),
        light_azimuth=float(rng.uniform(0, 2 * np.pi)),
        light_elevation=float(np.deg2rad(rng.uniform(45.0, 80.0))),
        light_intensity=float(rng.uniform(0.75, 1.0)),
        ambient=float(rng.uniform(0.25, 0.4)),
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

    return _fit_disc(
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


def _fit_disc(
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
    for _ in range(_DEFECT_ATTEMPTS):
        radius_px = radius * focal_length(size) / params.camera_height
        for min_up, margin in ((0.85, 0.6), (0.7, 0.3), (0.5, 0.0)):
            candidates = np.flatnonzero(
                clean["valid"] & (up > min_up) & (inside > margin * radius_px)
            )
            if len(candidates):
                break
        else:
            raise RuntimeError(
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
        radius = _next_radius(radius, fraction, lo, hi, 0.03)
    raise RuntimeError(
        f"{params.category}: could not place a {name!r} defect covering {lo}-{hi} of "
        f"{pixels} pixels on the object in {_DEFECT_ATTEMPTS} attempts (last: {last})"
    )


def _next_radius(radius: float, fraction: float, lo: float, hi: float, largest: float) -> float:
    """The next try's radius (m) after a defect covered ``fraction`` of the object, aiming
    inside [``lo``, ``hi``]: area goes with the radius squared; at most ``largest``."""
    if fraction < lo:
        return min(largest, radius * min(1.5, np.sqrt(1.4 * lo / max(fraction, 1e-4))))
    if fraction > hi:
        return radius * np.sqrt(0.7 * hi / fraction)
    return radius


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

    return _fit_disc(
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
        raise RuntimeError(f"{params.category}: no camera-facing object pixel for a scratch")
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
    raise RuntimeError(
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
        raise RuntimeError(f"{params.category}: the object has no outline to chip")
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
    for _ in range(_DEFECT_ATTEMPTS):
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
        radius = _next_radius(radius, fraction, lo, hi, 0.02)
    raise RuntimeError(
        f"{params.category}: could not chip the rim over {lo}-{hi} of the object's pixels in "
        f"{_DEFECT_ATTEMPTS} attempts (last: {last})"
    )


def make_sample(
    seed: int,
    category: str,
    split: str,
    kind: str,
    index: int,
    image_size: int,
    noise_std_m: float,
    nthreads: int = 0,
) -> tuple[SampleParams, Defect | None, RenderedSample]:
    """Generate sample ``index`` of ``category/split/kind`` (kind "good" or a defect name)."""
    scene_seq, defect_seq = sample_seed(seed, category, split, kind, index).spawn(2)
    params = sample_params(category, image_size, noise_std_m, np.random.default_rng(scene_seq))
    if kind == "good":
        return params, None, render_sample(params, None, nthreads)
    if split != "test":
        raise ValueError(
            f"defects belong to the test split only, got split {split!r} with kind {kind!r}"
        )
    defect, geometry = sample_defect(params, kind, np.random.default_rng(defect_seq), nthreads)
    return params, defect, render_sample(params, defect, nthreads, geometry=geometry)


def write_sample(
    root: Path, category: str, split: str, kind: str, index: int, sample: RenderedSample
) -> None:
    """Write one sample as MVTec 3D-AD files: rgb PNG, xyz float32 TIFF, and gt PNG for test."""
    base = Path(root) / category / split / kind
    stem = f"{index:03d}"
    subdirs = ("rgb", "xyz", "gt") if split == "test" else ("rgb", "xyz")
    for sub in subdirs:
        (base / sub).mkdir(parents=True, exist_ok=True)
    # zlib level 1: 6x faster than the default on noisy images, ~15 % larger files
    Image.fromarray(sample.rgb).save(base / "rgb" / f"{stem}.png", compress_level=1)
    # one page, H x W x 3 contiguous float32 samples (reads back as (H, W, 3))
    tifffile.imwrite(
        base / "xyz" / f"{stem}.tiff", sample.xyz, photometric="minisblack", planarconfig="contig"
    )
    if split == "test":
        Image.fromarray(sample.mask.astype(np.uint8) * 255).save(base / "gt" / f"{stem}.png")


def plan_jobs(cfg: SynthConfig) -> list[tuple[str, str, str, int]]:
    """Every (category, split, kind, index) of the data set."""
    groups = [
        ("train", "good", cfg.n_train),
        ("validation", "good", cfg.n_validation),
        ("test", "good", cfg.n_test_good),
    ]
    groups += [("test", name, cfg.n_test_per_defect) for name in PRESETS[cfg.preset]]
    return [
        (cat, split, kind, i)
        for cat in cfg.categories
        for split, kind, n in groups
        for i in range(n)
    ]


def _init_worker() -> None:
    # BLAS threads only slow the many tiny (N, 3) x (3, k) products down, badly so on a busy machine
    threadpool_limits(1)


def _run_job(cfg: SynthConfig, root: Path, job: tuple[str, str, str, int], nthreads: int) -> float:
    category, split, kind, index = job
    _, _, sample = make_sample(
        cfg.seed, category, split, kind, index, cfg.image_size, cfg.noise_std_m, nthreads
    )
    write_sample(root, category, split, kind, index, sample)
    return float(sample.mask.mean())


def _remove_stale(root: Path, jobs: list[tuple[str, str, str, int]]) -> int:
    """Delete numbered files an earlier, larger run left beyond this run's sample counts."""
    counts: dict[tuple[str, str, str], int] = {}
    for category, split, kind, index in jobs:
        counts[(category, split, kind)] = max(counts.get((category, split, kind), 0), index + 1)
    removed = 0
    for (category, split, kind), count in counts.items():
        for sub in ("rgb", "xyz", "gt"):
            folder = root / category / split / kind / sub
            stale = (
                [
                    p
                    for p in folder.glob("*")
                    if p.suffix in (".png", ".tiff") and p.stem.isdigit() and int(p.stem) >= count
                ]
                if folder.is_dir()
                else []
            )
            for path in stale:
                path.unlink()
            removed += len(stale)
    return removed


def synthesize(
    cfg: SynthConfig, out_dir: Path, preview_path: Path | None = None, workers: int | None = None
) -> dict:
    """Render the whole data set of ``cfg`` under ``out_dir``; return a JSON-able summary.

    ``workers`` processes (default: one per CPU, at most 4) share the samples; the
    files do not depend on it. Writes ``out_dir/preview.png`` when ``cfg.preview``
    and also ``preview_path`` when given.
    """
    unknown = sorted(set(cfg.categories) - set(BUILDERS))
    if unknown or not cfg.categories:
        raise ValueError(f"synth.categories: unknown {unknown} or empty; known: {sorted(BUILDERS)}")
    if workers is None:
        workers = max(1, min(4, os.cpu_count() or 1))
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = plan_jobs(cfg)
    start = time.perf_counter()
    progress = {"total": len(jobs), "desc": "synth", "unit": "sample", "disable": None}
    if workers == 1:
        with threadpool_limits(1):
            fractions = [_run_job(cfg, out_dir, job, 0) for job in tqdm(jobs, **progress)]
    else:
        # spawn, not fork: open3d's thread pools do not survive a fork
        with ProcessPoolExecutor(
            workers, mp_context=get_context("spawn"), initializer=_init_worker
        ) as pool:
            results = pool.map(
                _run_job,
                [cfg] * len(jobs),
                [out_dir] * len(jobs),
                jobs,
                [1] * len(jobs),
                chunksize=4,
            )
            fractions = list(tqdm(results, **progress))
    removed = _remove_stale(out_dir, jobs)
    seconds = time.perf_counter() - start
    logger.info(
        "synthesized %d samples in %.1f s with %d worker(s) under %s",
        len(jobs),
        seconds,
        workers,
        out_dir,
    )

    previews = []
    if cfg.preview:
        previews.append(out_dir / "preview.png")
    if preview_path is not None:
        previews.append(Path(preview_path))
    defects = PRESETS[cfg.preset]
    for path in previews:
        write_preview(out_dir, cfg.categories, defects, path)

    counts: dict[str, dict[str, dict[str, int]]] = {}
    defect_area: dict[str, list[float]] = {}
    for (category, split, kind, _), fraction in zip(jobs, fractions):
        split_counts = counts.setdefault(category, {}).setdefault(split, {})
        split_counts[kind] = split_counts.get(kind, 0) + 1
        if kind in defects:
            defect_area.setdefault(kind, []).append(fraction)
    return {
        "out": str(out_dir),
        "seed": cfg.seed,
        "preset": cfg.preset,
        "image_size": cfg.image_size,
        "n_samples": len(jobs),
        "counts": counts,
        "defect_families": dict(defects),
        "defect_mask_fraction": {
            k: [round(min(v), 4), round(max(v), 4)] for k, v in defect_area.items()
        },
        "stale_files_removed": removed,
        "workers": workers,
        "seconds": round(seconds, 2),
        "previews": [str(p) for p in previews],
    }
