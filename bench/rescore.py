"""Rescore saved models and compare with an earlier rescoring: does a change move any score?

For each ``model.pt`` under ``--models`` (one folder per category), every scorer scores the
category's test split from ``--cache``, and one-sample predict scores the first good and the
last defective test sample from ``--data`` with the network and with the graph the file
carries. The numbers go to ``--out/<category>.npz``; with ``--compare DIR`` (an earlier
``--out``), the largest absolute difference per array is printed and the command fails above
``--tolerance``. Run it before and after a redesign, on models written before it::

    python -m bench.rescore --models M --cache C --data D --out /tmp/before
    (change the code)
    python -m bench.rescore --models M --cache C --data D --out /tmp/after --compare /tmp/before
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

SCORERS = ("discriminator", "memory", "fused")  # by name: the tool compares across code versions


def rescore(model_file: Path, cache: Path, data: Path) -> dict[str, np.ndarray]:
    """Every scorer on the test split, and one-sample predict (network and stored graph)."""
    from bridgenet.data.cache import load_cached_split
    from bridgenet.data.samples import read_rgb, read_xyz
    from bridgenet.evaluate import score_split
    from bridgenet.predict import find_pairs, predict_arrays, resolve_model

    model = resolve_model(model_file)
    split = load_cached_split(cache, model.category, "test", model.params.data)
    out: dict[str, np.ndarray] = {}
    for name in SCORERS:
        model.network.scorer = name
        out[f"{name}_scores"], out[f"{name}_maps"], out[f"{name}_frames"] = score_split(
            model, split, 8, torch.device("cpu"))
    test = data / model.category / "test"
    pairs = [find_pairs(test / "good")[0], find_pairs(max(p for p in test.iterdir() if p.name != "good"))[-1]]
    for i, (rgb_path, xyz_path) in enumerate(pairs):
        rgb, xyz = read_rgb(rgb_path), read_xyz(xyz_path)
        for graph in (False, True):
            prediction = predict_arrays(resolve_model(model_file, graph=graph), rgb, xyz)
            out[f"predict{i}_graph{int(graph)}_score"] = np.array(prediction.score)
            out[f"predict{i}_graph{int(graph)}_map"] = prediction.anomaly_map
    return out


def compare(out: Path, earlier: Path) -> float:
    """Print the largest difference per category and array; return the largest of all."""
    worst = 0.0
    for path in sorted(out.glob("*.npz")):
        now, before = np.load(path), np.load(earlier / path.name)
        if set(now.files) != set(before.files):
            raise SystemExit(f"{path.name}: arrays {sorted(now.files)} != {sorted(before.files)}")
        diffs = {k: float(np.abs(now[k].astype(np.float64) - before[k]).max()) for k in now.files}
        worst = max(worst, *diffs.values())
        print(f"{path.stem}: largest difference {max(diffs.values()):.3g} ({max(diffs, key=diffs.get)})")
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rescore", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True, help="folder of <category>/model.pt")
    parser.add_argument("--cache", type=Path, required=True, help="the preprocessing cache the models were tested on")
    parser.add_argument("--data", type=Path, required=True, help="the MVTec 3D-AD root behind the cache")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--compare", type=Path, default=None, help="an earlier --out to compare with")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    models = sorted(args.models.glob("*/model.pt"))
    if not models:
        raise SystemExit(f"--models {args.models}: no <category>/model.pt inside")
    for model_file in models:
        np.savez_compressed(args.out / f"{model_file.parent.name}.npz", **rescore(model_file, args.cache, args.data))
        print(f"rescored {model_file.parent.name}")
    if args.compare is None:
        return 0
    worst = compare(args.out, args.compare)
    print(f"largest difference over every model, scorer and sample: {worst:.3g} (tolerance {args.tolerance:g})")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
