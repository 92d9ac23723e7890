"""Scoring rules: how a trained model's patch evidence becomes an image score, on every data set at hand.

    python -m bench.scoring_rules --models DIR [DIR ...] [--extra-test NAME=CACHE_DIR ...]
                                  [--aupro] [--name NAME] [--out bench/results]

Every ``model.pt`` under the ``--models`` folders (the accuracy bench's synthetic models,
the real-data bench's models) is scored on the splits its own params name: the
validation set as training builds it (the validation goods plus texture anomalies drawn
with the fixed validation seed), the test split of its ``data.cache_dir``, and the test
split of each ``--extra-test`` cache that holds its category (the synthetic hard preset:
same goods, other defects). For each sample the patch components are computed once, on
the patch grid, standardised as the model does it (0 = the mean clean patch, 1 = a
typical good part's highest patch, on the validation goods): the discriminator's logit
and each modality's memory distance. Every rule of :data:`COMBINES` x :data:`PEAKS`
turns them into image scores:

- combination per patch: the discriminator alone, each modality's memory alone, the memory
  modalities summed or their maximum, the discriminator and the summed memory weighted ``w : 1 - w``, and an
  inverse-variance weighting whose weights come from the spread of each component's peaks
  over the validation goods (a component that fires on clean parts gets less say);
- image score from the patch map: the highest patch; the peak of the map upsampled and
  smoothed with sigma 2, 4 or 8 input pixels (the model's own rule at 4); the mean of the
  3 highest patches; PatchCore's re-weighting of the highest memory patch by how isolated
  its nearest bank entry is among its 9 nearest bank neighbours (memory only).

Image AUROC per split, mean over the models found (and per defect type on test splits).
With ``--aupro``, each combination's map (upsampled, smoothed with sigma 2, 4 or 8, pasted into
the frame) is also scored against the test splits' ground truth: AU-PRO@0.3, and per defect
type at the model's sigma 4; it says whether a rule moves localisation, not only detection.
The rule the product uses is chosen on the validation sets and the synthetic presets; a
real data set's test split only confirms it. Writes ``--out/scoring_rules_<name>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import RESULTS, bench_command, portable_path
from bench.results import write_results

WEIGHTS = (0.25, 0.5, 0.75)
NEIGHBOURS = 9  # PatchCore's re-weighting neighbourhood in the bank
TOP_K = 3


def _memory(z: dict[str, torch.Tensor], how: str) -> torch.Tensor:
    parts = torch.stack([v for k, v in z.items() if k.startswith("memory_")])
    return parts.sum(0) if how == "sum" else parts.amax(0)


def combines(ivw: dict[str, float]) -> dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]]:
    """Patch combinations of standardised components (each (B, h, w)); ``ivw``: component weights."""
    out: dict[str, Callable[[dict[str, torch.Tensor]], torch.Tensor]] = {
        "discriminator": lambda z: z["discriminator"],
        "memory sum": lambda z: _memory(z, "sum"),
        "memory max": lambda z: _memory(z, "max"),
    }
    for name in ivw:
        if name.startswith("memory_"):
            out[f"memory {name.removeprefix('memory_')} alone"] = lambda z, name=name: z[name]
    for w in WEIGHTS:
        out[f"fused sum w={w}"] = lambda z, w=w: w * z["discriminator"] + (1 - w) * _memory(z, "sum")
        out[f"fused max w={w}"] = lambda z, w=w: w * z["discriminator"] + (1 - w) * _memory(z, "max")
    out["inverse-variance"] = lambda z: sum(ivw[k] * v for k, v in z.items())
    return out


def smoothed_peak(grid: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """(B, h, w) patch scores -> (B,) peak of the map upsampled to ``size`` and smoothed."""
    from bridgenet.model.depth_image import gaussian_blur

    maps = F.interpolate(grid.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
    return gaussian_blur(maps.squeeze(1), sigma).flatten(1).amax(1)


def peaks(size: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    return {
        "patch max": lambda g: g.flatten(1).amax(1),
        "map max s2": lambda g: smoothed_peak(g, size, 2.0),
        "map max s4": lambda g: smoothed_peak(g, size, 4.0),
        "map max s8": lambda g: smoothed_peak(g, size, 8.0),
        f"top-{TOP_K} mean": lambda g: g.flatten(1).topk(TOP_K, dim=1).values.mean(1),
    }


def fill_off_object(grid: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """Patches not scored get the sample's lowest scored value (as the model does)."""
    masked = torch.where(kept, grid, torch.full_like(grid, torch.inf))
    lowest = masked.flatten(1).amin(1).view(-1, 1, 1)
    return torch.where(kept, grid, lowest)


@torch.inference_mode()
def components(network, rgb: torch.Tensor, depth: torch.Tensor, batch: int = 8) -> dict[str, Any]:
    """Standardised components (B, h, w) per name, the kept patches (B, h, w), and for each memory
    modality the bank index of every patch's nearest entry and its distance (B, h, w)."""
    import faiss  # the bench extra and dev (k nearest entries and their indices)

    from bridgenet.model.scorers import DISCRIMINATOR, FUSED

    out: dict[str, list[torch.Tensor]] = {}
    for start in range(0, len(rgb), batch):
        part = slice(start, start + batch)
        emb = network.embed_inputs({"rgb": rgb[part], "depth": depth[part]})
        b, _, h, w = emb[network.modalities[0]].shape
        keep = torch.ones(b * h * w, dtype=torch.bool)  # every patch: off-object ones are masked later
        kept = network.kept_patches(depth[part], (h, w)).view(b, h, w)
        raw = network.patch_components(emb, keep, FUSED if network.memory.fitted else DISCRIMINATOR)
        for name, values in raw.items():
            out.setdefault(name, []).append(network.standardized(name, values).view(b, h, w))
        out.setdefault("kept", []).append(kept)
        for m in network.modalities:
            if not network.memory.fitted:
                continue
            rows = emb[m].permute(0, 2, 3, 1).reshape(-1, emb[m].shape[1]).float().numpy()
            index = faiss.IndexFlatL2(rows.shape[1])
            index.add(np.ascontiguousarray(network.memory.bank(m).numpy()))
            d2, ix = index.search(np.ascontiguousarray(rows), 1)
            out.setdefault(f"nn_{m}", []).append(torch.from_numpy(ix[:, 0]).view(b, h, w))
            out.setdefault(f"raw_{m}", []).append(torch.from_numpy(np.sqrt(np.maximum(d2[:, 0], 0))).view(b, h, w))
    return {k: torch.cat(v) for k, v in out.items()}


def patchcore_weights(network, modality: str) -> torch.Tensor:
    """(K, NEIGHBOURS) indices of each bank entry's nearest other entries."""
    import faiss  # the bench extra and dev (k nearest entries and their indices)

    bank = np.ascontiguousarray(network.memory.bank(modality).numpy())
    index = faiss.IndexFlatL2(bank.shape[1])
    index.add(bank)
    _, ix = index.search(bank, NEIGHBOURS + 1)
    return torch.from_numpy(ix[:, 1:])


def patchcore_score(network, comps: dict[str, Any], grid: torch.Tensor, embeddings_of: Callable,
                    neighbours: dict[str, torch.Tensor]) -> torch.Tensor:
    """PatchCore's image score on the summed memory map: at the highest patch, each modality's
    standardised distance is multiplied by 1 - exp(d*) / sum_b exp(d(q, b)) over the 9 nearest
    bank neighbours b of its nearest entry (a match in a sparse region of the bank counts more)."""
    b = grid.shape[0]
    top = grid.flatten(1).argmax(1)
    score = torch.zeros(b)
    for m in network.modalities:
        if f"nn_{m}" not in comps:
            continue
        bank = network.memory.bank(m)
        queries = embeddings_of(m, top)  # (B, D)
        nearest = comps[f"nn_{m}"].flatten(1).gather(1, top[:, None])[:, 0]
        around = bank[neighbours[m][nearest]]  # (B, NEIGHBOURS, D)
        d_star = comps[f"raw_{m}"].flatten(1).gather(1, top[:, None])[:, 0]
        d_around = torch.linalg.vector_norm(around - queries[:, None], dim=2)
        logits = torch.cat([d_star[:, None], d_around], 1)
        weight = 1 - torch.softmax(logits, dim=1)[:, 0]
        score += weight * comps[f"memory_{m}"].flatten(1).gather(1, top[:, None])[:, 0]
    return score


def split_scores(network, rgb: torch.Tensor, depth: torch.Tensor, ivw: dict[str, float] | None
                 ) -> tuple[dict[str, np.ndarray], dict[str, torch.Tensor]]:
    """Every rule's image scores (N,) of one set of inputs; also the standardised components."""
    comps = components(network, rgb, depth)
    z = {k: fill_off_object(v, comps["kept"]) for k, v in comps.items()
         if k == "discriminator" or k.startswith("memory_")}
    ivw = ivw or {k: 1.0 / len(z) for k in z}
    size = rgb.shape[-1]
    out: dict[str, np.ndarray] = {}
    for cname, combine in combines(ivw).items():
        if cname != "discriminator" and not any(k.startswith("memory_") for k in z):
            continue
        grid = combine(z)
        for pname, peak in peaks(size).items():
            out[f"{cname} | {pname}"] = peak(grid).numpy()
    if any(k.startswith("memory_") for k in z):
        cache: dict[str, torch.Tensor] = {}

        def embeddings_of(m: str, top: torch.Tensor) -> torch.Tensor:
            if m not in cache:
                with torch.inference_mode():
                    cache[m] = torch.cat([network.embed(x, m) for x in (rgb if m == "rgb" else depth).split(8)])
            emb = cache[m]
            return emb.flatten(2).gather(2, top.view(-1, 1, 1).expand(-1, emb.shape[1], 1))[:, :, 0]

        neighbours = {m: patchcore_weights(network, m) for m in network.modalities}
        grid = combines(ivw)["memory sum"](z)
        out["memory sum | PatchCore re-weighting"] = patchcore_score(
            network, {**comps, **z}, grid, embeddings_of, neighbours).numpy()
    return out, z


AUPRO_SIGMAS = (2.0, 4.0, 8.0)  # the map-peak rules' smoothing, input pixels (the model's: 4)


def map_aupros(z: dict[str, torch.Tensor], split, ivw: dict[str, float]) -> dict[str, dict[str, Any]]:
    """AU-PRO@0.3 of every combination's map on ``split``'s samples with a known mask.

    The map is the combination's patch grid upsampled to the input side, smoothed with each
    of :data:`AUPRO_SIGMAS` and pasted into the frame as the model does it; keyed like the
    image-score rules (``"<combination> | map max s4"``); per defect type at sigma 4.
    """
    from bridgenet.data.crop import paste_maps
    from bridgenet.metrics import GOOD, aupro
    from bridgenet.model.depth_image import gaussian_blur

    known = np.asarray(split.known_masks(), bool)
    gt = np.stack([m for m, k in zip(split.gt, known) if k]).astype(bool)
    defects = [d for d, k in zip(split.defects, known) if k]
    boxes = np.asarray(split.crop_boxes)[known]
    frame = tuple(int(v) for v in split.original_sizes[0])
    size = split.rgb.shape[1]
    out: dict[str, dict[str, Any]] = {}
    for cname, combine in combines(ivw).items():
        grid = combine(z)[torch.from_numpy(known)].float()
        up = F.interpolate(grid.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False).squeeze(1)
        for sigma in AUPRO_SIGMAS:
            frames = paste_maps(gaussian_blur(up, sigma), boxes, frame).numpy()
            cell: dict[str, Any] = {"aupro_30": float(aupro(frames, gt))}
            if sigma == 4.0:
                cell["per_defect_aupro"] = {}
                for d in sorted(set(defects) - {GOOD}):
                    sel = np.array([x in (GOOD, d) for x in defects])
                    cell["per_defect_aupro"][d] = float(aupro(frames[sel], gt[sel]))
            out[f"{cname} | map max s{sigma:g}"] = cell
    return out


def inverse_variance(z: dict[str, torch.Tensor], size: int) -> dict[str, float]:
    """Weights per component, proportional to 1 / variance of its smoothed peaks on clean parts."""
    inv = {k: 1.0 / max(float(smoothed_peak(v, size, 4.0).var()), 1e-6) for k, v in z.items()}
    total = sum(inv.values())
    return {k: v / total for k, v in inv.items()}


def aurocs(scores: dict[str, np.ndarray], labels: np.ndarray, defects: list[str] | None) -> dict[str, Any]:
    from bridgenet.metrics import auroc_per_defect, image_auroc

    out = {}
    for rule, values in scores.items():
        cell: dict[str, Any] = {"image_auroc": float(image_auroc(values, labels))}
        if defects is not None:
            cell["per_defect"] = {k: float(v) for k, v in auroc_per_defect(values, defects).items()}
        out[rule] = cell
    return out


def score_model(path: Path, extra: dict[str, Path], with_aupro: bool = False) -> dict[str, Any]:
    """Every rule's image AUROC on the model's validation set, its test split and the extra tests;
    ``with_aupro``: the map rules' AU-PRO@0.3 on the test splits too (:func:`map_aupros`)."""
    from bridgenet.data.batch import Batch
    from bridgenet.data.cache import load_cached_split
    from bridgenet.model.io import load_model
    from bridgenet.training.validation import build_validation_set

    model = load_model(path)
    params, category, network = model.params, model.category, model.network.eval()
    validation_split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    validation = build_validation_set(validation_split, params, network.modalities)
    goods = validation.labels == 0
    batch = validation.batch
    _, z_goods = split_scores(network, batch.rgb[goods], batch.depth[goods], None)
    ivw = inverse_variance(z_goods, batch.rgb.shape[-1])
    result: dict[str, Any] = {"model": str(path), "category": category, "ivw": ivw, "splits": {}}
    scores, _ = split_scores(network, batch.rgb, batch.depth, ivw)
    result["splits"]["validation"] = aurocs(scores, validation.labels, None)
    tests = {"test": Path(params.data.cache_dir), **extra}
    for name, cache in tests.items():
        if not (cache / category / "index.csv").is_file():
            continue
        split = load_cached_split(cache, category, "test")
        data = Batch.from_split(split)
        scores, z = split_scores(network, data.rgb, data.depth, ivw)
        result["splits"][name] = aurocs(scores, split.labels, split.defects)
        if with_aupro and split.known_masks().any():
            for rule, cell in map_aupros(z, split, ivw).items():
                result["splits"][name][rule].update(cell)
    return result


def summarise(results: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per split and rule: mean and std of image AUROC over the models, and per defect type."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    splits = sorted({s for r in results for s in r["splits"]})
    for split in splits:
        rows = [r["splits"][split] for r in results if split in r["splits"]]
        table[split] = {}
        for rule in rows[0]:
            values = [row[rule]["image_auroc"] for row in rows if rule in row]
            cell = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
            pro = [row[rule]["aupro_30"] for row in rows if "aupro_30" in row.get(rule, {})]
            if pro:
                cell["aupro_mean"], cell["aupro_std"] = float(np.mean(pro)), float(np.std(pro))
                per = sorted({d for row in rows for d in row.get(rule, {}).get("per_defect_aupro", {})})
                for d in per:
                    cell[f"aupro {d}"] = float(np.mean([row[rule]["per_defect_aupro"][d] for row in rows
                                                        if d in row[rule].get("per_defect_aupro", {})]))
            defects = sorted({d for row in rows for d in row.get(rule, {}).get("per_defect", {})})
            for d in defects:
                cell[d] = float(np.mean([row[rule]["per_defect"][d] for row in rows
                                         if d in row[rule].get("per_defect", {})]))
            table[split][rule] = cell
    return table


def markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    splits = list(table)
    rules = list(next(iter(table.values())))
    caption = ("Image AUROC per rule and split: mean ± std over the models found (categories x seeds). "
               "Validation: goods plus the fixed-seed texture anomalies training selects on.")
    lines = [caption, "",
             "| combination | image score | " + " | ".join(splits) + " |", "|---|---|" + "---|" * len(splits)]
    for rule in rules:
        cells = []
        for split in splits:
            cell = table[split].get(rule)
            cells.append("–" if cell is None else f"{cell['mean']:.3f} ± {cell['std']:.3f}")
        combination, peak = rule.split(" | ")
        lines.append(f"| {combination} | {peak} | " + " | ".join(cells) + " |")
    pro_splits = [s for s in splits if any("aupro_mean" in c for c in table[s].values())]
    if pro_splits:
        lines += ["", "AU-PRO@0.3 of each combination's map (`--aupro`): mean ± std over the models found.", "",
                  "| combination | map | " + " | ".join(pro_splits) + " |", "|---|---|" + "---|" * len(pro_splits)]
        for rule in rules:
            cells = [table[s].get(rule, {}) for s in pro_splits]
            if not any("aupro_mean" in c for c in cells):
                continue
            combination, peak = rule.split(" | ")
            lines.append(f"| {combination} | {peak.replace('map max s', 'sigma ')} | " + " | ".join(
                f"{c['aupro_mean']:.3f} ± {c['aupro_std']:.3f}" if "aupro_mean" in c else "–" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def published_model(path: Path, roots: list[Path]) -> str:
    """``path`` as ``MODELS<i>/...`` relative to the ``--models`` folder holding it (else its last 4 parts)."""
    return portable_path(path.resolve(), {f"MODELS{i}": root.resolve() for i, root in enumerate(roots)}, keep=4)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scoring_rules", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", type=Path, required=True, help="folders searched for model.pt")
    parser.add_argument("--extra-test", nargs="*", default=[], help="NAME=CACHE_DIR: more test splits")
    parser.add_argument("--aupro", action="store_true", help="also AU-PRO@0.3 of every map rule on the test splits")
    parser.add_argument("--name", default="synthetic")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    extra = {}
    for item in args.extra_test:
        name, _, folder = item.partition("=")
        if not folder:
            parser.error(f"--extra-test {item!r}: expected NAME=CACHE_DIR")
        extra[name] = Path(folder)
    paths = sorted(p for root in args.models for p in root.rglob("model.pt"))
    if not paths:
        raise SystemExit(f"no model.pt under {[str(p) for p in args.models]}")
    results = []
    for i, path in enumerate(paths, 1):
        start = time.perf_counter()
        results.append(score_model(path, extra, args.aupro))
        print(f"[{i}/{len(paths)}] {path} ({time.perf_counter() - start:.0f} s)", flush=True)
    table = summarise(results)
    for result in results:  # published without this machine's paths
        result["model"] = published_model(Path(result["model"]), args.models)
    command = bench_command("scoring_rules", "--models", *(f"MODELS{i}" for i in range(len(args.models))),
                            *(["--extra-test", *(f"{name}=CACHE_DIR" for name in extra)] if extra else []),
                            *(["--aupro"] if args.aupro else []), "--name", args.name, "--out", "OUT")
    write_results(args.out / f"scoring_rules_{args.name}.json", {"command": command, "table": table, "models": results})
    text = markdown(table)
    (args.out / f"scoring_rules_{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
