"""What the network sees of real scans: a sheet to check visible depth, foreground and crop by eye.

    python -m bench.depth_figure --data-root ROOT --category cable_gland [--samples test/good/000 ...]
                                 [--out docs/real_depth.jpg] [--set section.key=value ...]

For each sample (default: one good and one of each defect type of the test split), one
row: the RGB frame with the foreground's outline (green), the crop box (yellow) and the
ground truth (red); the sensor's valid points (white; the table's speckle and the holes
the structured light leaves at steps); the visible depth as height above the fitted
support plane; the network's two inputs, the RGB crop and the depth image as the
backbone reads it (``model.depth_input``: local relief, grey = flat). Uses the
project's own preprocessing (``bridgenet.preprocess.network_inputs``) and depth image
(``bridgenet.model.network.DepthImage``), its relief scale fitted on the category's
first 32 training goods.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
import torch

from bench.common import PARAMS, REPO


def default_samples(root: Path, category: str) -> list[str]:
    """``test/<kind>/<stem>`` of the first sample of each test folder (good first)."""
    kinds = sorted(p.name for p in (root / category / "test").iterdir() if p.is_dir())
    kinds = ["good", *[k for k in kinds if k != "good"]] if "good" in kinds else kinds
    out = []
    for kind in kinds:
        stems = sorted(p.stem for p in (root / category / "test" / kind / "rgb").glob("*.png"))
        if stems:
            out.append(f"test/{kind}/{stems[0]}")
    return out


def sample_arrays(root: Path, category: str, key: str, params) -> dict[str, np.ndarray]:
    from bridgenet.data.depth import valid_points, visible_depth
    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.preprocess import network_inputs

    split, kind, stem = key.split("/")
    folder = root / category / split / kind
    rgb, xyz = read_rgb(folder / "rgb" / f"{stem}.png"), read_xyz(folder / "xyz" / f"{stem}.tiff")
    gt_path = folder / "gt" / f"{stem}.png"
    gt = None
    if gt_path.is_file():
        from PIL import Image

        gt = np.asarray(Image.open(gt_path)) > 0
        gt = gt[..., 0] if gt.ndim == 3 else gt
    seed = zlib.crc32(f"{category}/{key}".encode())
    height, foreground = visible_depth(xyz, params.data, np.random.default_rng(seed))
    small, depth, _, box, _ = network_inputs(rgb, xyz, params.data, np.random.default_rng(seed))
    return {"rgb": rgb, "valid": valid_points(xyz), "height": height, "foreground": foreground, "gt": gt,
            "small": small, "depth": depth, "box": np.array(box)}


def fitted_depth_image(root: Path, category: str, params, n: int = 32):
    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.model.depth_image import DepthImage
    from bridgenet.preprocess import network_inputs

    folder = root / category / "train" / "good"
    depths = []
    for path in sorted((folder / "rgb").glob("*.png"))[:n]:
        rgb, xyz = read_rgb(path), read_xyz(folder / "xyz" / f"{path.stem}.tiff")
        depths.append(network_inputs(rgb, xyz, params.data, np.random.default_rng(0))[1])
    image = DepthImage(params.model.depth_input, params.model.relief_sigma, params.model.relief_gain)
    image.fit(torch.from_numpy(np.stack(depths)).unsqueeze(1))
    return image


def clipped_share(depth_image, depths: list[np.ndarray]) -> float:
    """Share of the object's pixels (depth > 0) that the depth image shows as pure black or white:
    relief beyond the grey levels ``model.relief_gain`` gives it, whose shape the backbone cannot see."""
    clipped = total = 0
    for depth in depths:
        with torch.no_grad():
            shown = depth_image(torch.from_numpy(depth)[None, None])[0, 0].numpy()
        on = depth > 0
        clipped += int(((shown[on] <= 0) | (shown[on] >= 1)).sum())
        total += int(on.sum())
    return clipped / max(total, 1)


def draw(rows: list[tuple[str, dict[str, np.ndarray]]], depth_image, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    columns = ("RGB: foreground (green), crop (yellow), defect (red)", "valid points",
               "height above the table", "network input: RGB crop", "network input: depth image")
    fig = Figure(figsize=(3.0 * len(columns), 3.0 * len(rows) + 0.6), dpi=90)
    axes = fig.subplots(len(rows), len(columns), squeeze=False)
    for r, (name, a) in enumerate(rows):
        top, left, side, _ = a["box"].tolist()
        ax = axes[r, 0]
        ax.imshow(a["rgb"])
        ax.contour(a["foreground"], levels=[0.5], colors="lime", linewidths=0.8)
        if a["gt"] is not None and a["gt"].any():
            ax.contour(a["gt"], levels=[0.5], colors="red", linewidths=1.0)
        ax.add_patch(Rectangle((left, top), side, side, fill=False, edgecolor="yellow", linewidth=1.0))
        axes[r, 1].imshow(a["valid"], cmap="gray")
        shown = np.where(a["foreground"], a["height"], np.nan)
        axes[r, 2].imshow(shown, cmap="viridis", vmin=0, vmax=1)
        axes[r, 3].imshow(a["small"])
        with torch.no_grad():
            image = depth_image(torch.from_numpy(a["depth"])[None, None])[0, 0].numpy()
        axes[r, 4].imshow(image, cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_ylabel(name, fontsize=9)
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(columns[c], fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # a JPEG at quality 85 keeps the sheet readable at a tenth of the PNG's size
    fig.savefig(path, **({"pil_kwargs": {"quality": 85}} if path.suffix.lower() in (".jpg", ".jpeg") else {}))
    return path


def main() -> None:
    from bridgenet.config import load_params

    parser = argparse.ArgumentParser(prog="python -m bench.depth_figure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--category", required=True)
    parser.add_argument("--samples", nargs="*", default=None, help="split/kind/stem, e.g. test/hole/002")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "real_depth.jpg")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="section.key=value")
    args = parser.parse_args()
    params = load_params(PARAMS, args.sets)
    samples = args.samples or default_samples(args.data_root, args.category)
    rows = [(key, sample_arrays(args.data_root, args.category, key, params)) for key in samples]
    depth_image = fitted_depth_image(args.data_root, args.category, params)
    title = (f"{args.category}: visible depth, foreground and network inputs "
             f"(crop {params.data.crop}, depth input {params.model.depth_input}, image size {params.data.image_size})")
    if params.model.depth_input == "relief":
        share = clipped_share(depth_image, [a["depth"] for _, a in rows])
        print(f"relief gain {params.model.relief_gain}: {100 * share:.1f} % of the object's pixels "
              "shown pure black or white")
        title += f"; relief gain {params.model.relief_gain}: {100 * share:.0f} % of the part clipped"
    print(draw(rows, depth_image, args.out, title))


if __name__ == "__main__":
    main()
