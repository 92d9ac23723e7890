"""Preview sheet of a data set in the MVTec 3D-AD layout (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image


def _object_depth(xyz: np.ndarray) -> np.ma.MaskedArray:
    """z of an (H, W, 3) xyz map, masked where there is no point or only the support plane
    (a least-squares plane through the image border, 3 mm tolerance)."""
    z = xyz[..., 2]
    border = np.ones(z.shape, dtype=bool)
    width = max(2, z.shape[0] // 20)
    border[width:-width, width:-width] = False
    pts = xyz[border & (z > 0)]
    design = np.c_[pts[:, :2], np.ones(len(pts))]
    coef = np.linalg.lstsq(design, pts[:, 2], rcond=None)[0]
    height = xyz[..., 0] * coef[0] + xyz[..., 1] * coef[1] + coef[2] - z
    return np.ma.masked_where((z <= 0) | (height < 0.003), z)


def write_preview(
    root: Path, categories: Sequence[str], defects: Mapping[str, str], path: Path
) -> Path:
    """Contact sheet of sample 000 of test/good and of every defect type, per category.

    Three rows per category: RGB, depth (z of the xyz on the object; plane and
    no-point pixels blank) and the ground-truth mask; one column per kind, titled
    with the defect's family from ``defects`` (name -> family). Reads the written
    files back; saved as a 256-colour PNG to stay small.
    """
    from matplotlib.figure import Figure  # no pyplot: Agg canvas, no global backend state

    kinds = ["good", *defects]
    fig = Figure(figsize=(1.3 * len(kinds), 1.3 * 3 * len(categories)))
    axes = fig.subplots(3 * len(categories), len(kinds), squeeze=False)
    for row, category in enumerate(categories):
        for col, kind in enumerate(kinds):
            base = Path(root) / category / "test" / kind
            depth = _object_depth(tifffile.imread(base / "xyz" / "000.tiff"))
            lo, hi = np.percentile(depth.compressed(), [1, 99]) if depth.count() else (0.0, 1.0)
            panels = [
                (np.asarray(Image.open(base / "rgb" / "000.png")), {}),
                (depth, {"cmap": "viridis_r", "vmin": lo, "vmax": hi}),
                (
                    np.asarray(Image.open(base / "gt" / "000.png")),
                    {"cmap": "gray", "vmin": 0, "vmax": 255},
                ),
            ]
            for k, (image, style) in enumerate(panels):
                ax = axes[3 * row + k, col]
                ax.imshow(image, interpolation="nearest", **style)
                ax.set_xticks([])
                ax.set_yticks([])
                if row == 0 and k == 0:
                    ax.set_title(
                        kind if kind == "good" else f"{kind}\n({defects[kind]})", fontsize=7
                    )
                if col == 0:
                    ax.set_ylabel(f"{category}\n{('rgb', 'depth', 'mask')[k]}", fontsize=7)
    fig.tight_layout(pad=0.2)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buffer).convert("RGB").quantize(256).save(path, optimize=True)
    return path
