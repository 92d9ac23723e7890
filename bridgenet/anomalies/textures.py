"""Texture sources for the texture anomaly generator: a DTD-style folder or scikit-image's bundled images."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

LOGGER = logging.getLogger(__name__)

# scikit-image ships these files inside its wheel: nothing is downloaded.
BUNDLED_TEXTURES = (
    "brick", "grass", "gravel", "coffee", "astronaut", "rocket", "immunohistochemistry",
    "hubble_deep_field", "retina", "colorwheel", "coins", "moon", "camera",
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize to (size, size, 3) float32 in [0, 1]."""
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]).astype(np.uint8))
    return np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0


def _bundled(names: tuple[str, ...]) -> list[np.ndarray]:
    from skimage import data as skdata

    images = []
    for name in names:
        image = getattr(skdata, name)()
        images.append(image.astype(np.uint8) if image.dtype != np.uint8 else image)
    return images


def _folder(root: Path, limit: int, rng: np.random.Generator) -> list[np.ndarray]:
    if not root.is_dir():
        raise FileNotFoundError(f"anomalies.texture.source: {root} is not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"anomalies.texture.source: no images ({sorted(IMAGE_SUFFIXES)}) under {root}")
    if len(files) > limit:
        files = [files[i] for i in sorted(rng.choice(len(files), size=limit, replace=False))]
    images = []
    for path in files:
        try:
            with Image.open(path) as handle:
                images.append(np.asarray(handle.convert("RGB")))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"texture {path}: unreadable image ({exc})") from exc
    return images


def load_textures(source: str, size: int, rng: np.random.Generator, limit: int = 64) -> np.ndarray:
    """Textures as (K, size, size, 3) float32 in [0, 1].

    ``source`` is ``"bundled"`` or a folder searched recursively (DTD's
    ``images/<class>/*.jpg`` works as is); at most ``limit`` files are drawn.
    """
    images = _bundled(BUNDLED_TEXTURES) if source == "bundled" else _folder(Path(source), limit, rng)
    LOGGER.info("loaded %d textures from %s", len(images), source)
    return np.stack([_square(image, size) for image in images])
