"""Fusion rules: other ways of combining one RGB + depth model's evidence, on both data sets.

    python -m bench.fusion_rules [--seeds 0 1 2] [--work bench/work] [--out bench/results]

Reads the ``rgb+depth`` models that ``bench.accuracy`` trained under ``--work``
(``models/rgb+depth/seed<N>/<category>/model.pt``) and, per seed and category,
computes every patch component once on the validation goods and on the default and
hard test splits: the discriminator's logit, each modality's memory distance, and
cross-modal components built from the training goods' embeddings (a nearest
neighbour over both modalities at once; each modality's distance among the training
patches whose other modality looks alike; each modality's residual from a ridge map of
the other). Every component is standardised as the model does it (on the validation
goods: 0 = the mean clean patch, 1 = a typical good sample's highest patch). Each rule
of :data:`RULES` combines them into an image score, and its image AUROC per defect
family is reported beside the published fused results of the same seed's rgb, depth
and rgb+depth models and of the peer (from ``--out/accuracy.json``; the rgb+depth one
should equal ``ours`` up to float rounding where the models were trained on another CPU).

Nothing is tuned on a test split: the rules are fixed in advance, and the table shows
what each costs where. Writes ``--out/fusion_rules.json`` and ``fusion_rules.md``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import accuracy_runs
from bench.accuracy_runs import PRESETS
from bench.common import FAMILIES, PARAMS, REPO, RESULTS
from bench.results import read_records, write_results

CONDITIONAL_K = 64  # training patches whose other modality looks alike, among which a patch is judged
RIDGE = 1.0  # ridge penalty of the cross-modal linear maps, on standardised embeddings


@dataclass
class PatchSet:
    """The scored patches of one split: components (P,) each, ``sample`` (P,) image index, ``n`` images."""

    components: dict[str, torch.Tensor]
    sample: torch.Tensor
    n: int
    families: list[str]


def nearest_k(queries: torch.Tensor, bank: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Indices (Q, k) of each query row's (Q, D) ``k`` nearest ``bank`` rows (K, D), Euclidean."""
    bank_sq = (bank * bank).sum(1)
    out = []
    for start in range(0, len(queries), chunk):
        q = queries[start:start + chunk]
        d2 = torch.addmm(bank_sq.unsqueeze(0), q, bank.t(), alpha=-2.0)  # |q|^2 is the same for every row
        out.append(d2.topk(min(k, len(bank)), dim=1, largest=False).indices)
    return torch.cat(out)


def conditional_distance(
    queries: torch.Tensor, context: torch.Tensor, bank: torch.Tensor, bank_context: torch.Tensor, k: int,
) -> torch.Tensor:
    """(Q,) distance of each query row to the nearest of the ``k`` bank rows whose context is nearest.

    ``queries`` (Q, D) and ``bank`` (K, D) are one modality's embeddings, ``context`` (Q, E)
    and ``bank_context`` (K, E) the other's at the same patches: a patch is judged only
    against clean patches whose other modality looks alike (shading given the shape).
    """
    index = nearest_k(context, bank_context, k)
    picked = bank[index]  # (Q, k, D)
    return torch.linalg.vector_norm(picked - queries.unsqueeze(1), dim=2).amin(1)


def ridge_map(source: torch.Tensor, target: torch.Tensor, penalty: float) -> torch.Tensor:
    """(D_s + 1, D_t) least-squares map with bias from ``source`` (N, D_s) rows to ``target`` (N, D_t)."""
    x = torch.cat([source, torch.ones(len(source), 1, dtype=source.dtype)], 1).double()
    gram = x.t() @ x + penalty * torch.eye(x.shape[1], dtype=x.dtype)
    return torch.linalg.solve(gram, x.t() @ target.double()).float()


def ridge_residual(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N,) norm of ``target`` minus its prediction from ``source`` by :func:`ridge_map`'s ``weights``."""
    x = torch.cat([source, torch.ones(len(source), 1, dtype=source.dtype)], 1)
    return torch.linalg.vector_norm(target - x @ weights, dim=1)


def standardise(values: torch.Tensor, sample: torch.Tensor, n: int) -> tuple[float, float]:
    """(loc, scale) as :meth:`BridgeNet.calibrate` sets them: mean patch, mean image peak above it."""
    loc = values.mean()
    peaks = image_peaks(values, sample, n)
    return float(loc), float((peaks.mean() - loc).clamp_min(1e-6))


def image_peaks(values: torch.Tensor, sample: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) highest patch of each image."""
    return torch.full((n,), -torch.inf).scatter_reduce(0, sample, values.float(), "amax")


def image_top_mean(values: torch.Tensor, sample: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """(n,) mean of each image's ``k`` highest patches (all of them where it has fewer)."""
    out = torch.empty(n)
    for i in range(n):
        mine = values[sample == i].float()
        out[i] = mine.topk(min(k, len(mine))).values.mean()
    return out


Rule = Callable[[dict[str, torch.Tensor], torch.Tensor, int], torch.Tensor]


def patch_rule(combine: Callable[[dict[str, torch.Tensor]], torch.Tensor]) -> Rule:
    """A rule that combines standardised components per patch; the image score is the highest patch."""
    return lambda z, sample, n: image_peaks(combine(z), sample, n)


def top_rule(combine: Callable[[dict[str, torch.Tensor]], torch.Tensor], k: int) -> Rule:
    return lambda z, sample, n: image_top_mean(combine(z), sample, n, k)


def ours(z: dict[str, torch.Tensor], w: float = 0.5) -> torch.Tensor:
    """The shipped ``fused`` scorer at fusion weight ``w``."""
    return w * z["discriminator"] + (1 - w) * torch.maximum(z["memory_rgb"], z["memory_depth"])


RULES: dict[str, tuple[str, Rule | None]] = {
    "ours": ("the shipped fused scorer: 0.5 x discriminator + 0.5 x the larger memory distance",
             patch_rule(ours)),
    "discriminator": ("the discriminator alone", patch_rule(lambda z: z["discriminator"])),
    "memory": ("the larger memory distance alone", patch_rule(lambda z: torch.maximum(z["memory_rgb"],
                                                                                      z["memory_depth"]))),
    "weight 0.3": ("ours with fusion weight 0.3", patch_rule(lambda z: ours(z, 0.3))),
    "weight 0.7": ("ours with fusion weight 0.7", patch_rule(lambda z: ours(z, 0.7))),
    "rgb memory only": ("0.5 x discriminator + 0.5 x the RGB memory distance",
                        patch_rule(lambda z: 0.5 * z["discriminator"] + 0.5 * z["memory_rgb"])),
    "memory summed": ("0.5 x discriminator + 0.25 x each memory distance",
                      patch_rule(lambda z: 0.5 * z["discriminator"] + 0.25 * (z["memory_rgb"] + z["memory_depth"]))),
    "largest component": ("the largest of the three standardised components",
                          patch_rule(lambda z: torch.stack([z["discriminator"], z["memory_rgb"],
                                                            z["memory_depth"]]).amax(0))),
    "top-3 mean": ("ours, image score the mean of the 3 highest patches", top_rule(ours, 3)),
    "top-10 mean": ("ours, image score the mean of the 10 highest patches", top_rule(ours, 10)),
    "peak z, max": ("each component's image peak z-scored on the validation goods' peaks, the largest", None),
    "peak z, sum": ("each component's image peak z-scored on the validation goods' peaks, summed", None),
    "joint memory": (("0.5 x discriminator + 0.5 x the distance to the nearest clean patch in both "
                     "modalities at once"), patch_rule(lambda z: 0.5 * z["discriminator"] + 0.5 * z["joint"])),
    "conditional memory": ((f"0.5 x discriminator + 0.5 x the larger of each modality's distance among the "
                           f"{CONDITIONAL_K} clean patches whose other modality is nearest"),
                           patch_rule(lambda z: 0.5 * z["discriminator"]
                                      + 0.5 * torch.maximum(z["conditional_rgb"], z["conditional_depth"]))),
    "conditional rgb memory": ("ours with the RGB memory distance replaced by its conditional one",
                               patch_rule(lambda z: 0.5 * z["discriminator"]
                                          + 0.5 * torch.maximum(z["conditional_rgb"], z["memory_depth"]))),
    "cross-modal residual": (("ours plus a third component: the larger ridge residual of each modality "
                             "predicted from the other"),
                             patch_rule(lambda z: (z["discriminator"]
                                                   + torch.maximum(z["memory_rgb"], z["memory_depth"])
                                                   + torch.maximum(z["residual_rgb"], z["residual_depth"])) / 3)),
    "cross-modal residual alone": ("the larger ridge residual alone",
                                   patch_rule(lambda z: torch.maximum(z["residual_rgb"], z["residual_depth"]))),
}
PEAK_COMPONENTS = ("discriminator", "memory_rgb", "memory_depth")


def embed_split(network, split, batch_size: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Scored patches of ``split``: standardised embeddings (P, D) per modality, image index (P,), images."""
    from bridgenet.data.batch import Batch

    data = Batch.from_split(split)
    rows: dict[str, list[torch.Tensor]] = {m: [] for m in network.modalities}
    samples = []
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            batch = data.select(slice(start, start + batch_size))
            embeddings = network.embed_inputs(batch.inputs())
            grid = embeddings[network.modalities[0]].shape[-2:]
            keep = network.kept_patches(batch.depth, grid)
            index = torch.arange(start, start + len(batch)).repeat_interleave(grid[0] * grid[1])
            samples.append(index[keep])
            for m in network.modalities:
                emb = embeddings[m]
                rows[m].append(emb.permute(0, 2, 3, 1).reshape(-1, emb.shape[1])[keep])
    return {m: torch.cat(v) for m, v in rows.items()}, torch.cat(samples), len(data)


def split_components(network, split, train: dict[str, torch.Tensor], maps: dict[str, torch.Tensor],
                     batch_size: int) -> PatchSet:
    """Every raw component of :data:`RULES` on the scored patches of ``split``."""
    from bridgenet.evaluate import defect_families
    from bridgenet.metrics import GOOD
    from bridgenet.model.memory import nearest_distance

    emb, sample, n = embed_split(network, split, batch_size)
    with torch.no_grad():
        rows = torch.cat([emb[m] for m in network.modalities], 1)  # the order of BridgeNet.fuse
        comps = {"discriminator": network.score_rows(rows).float()}
    for m in network.modalities:
        comps[f"memory_{m}"] = network.memory.distances(m, emb[m])
    comps["joint"] = nearest_distance(torch.cat([emb["rgb"], emb["depth"]], 1),
                                      torch.cat([train["rgb"], train["depth"]], 1))
    for m, other in (("rgb", "depth"), ("depth", "rgb")):
        comps[f"conditional_{m}"] = conditional_distance(emb[m], emb[other], train[m], train[other], CONDITIONAL_K)
        comps[f"residual_{m}"] = ridge_residual(emb[other], emb[m], maps[m])
    families = defect_families(list(split.defects))
    return PatchSet(comps, sample, n, [families.get(d, GOOD) for d in split.defects])


def rule_scores(name: str, z: dict[str, torch.Tensor], patches: PatchSet,
                peak_stats: dict[str, tuple[float, float]]) -> np.ndarray:
    """(n,) image scores of rule ``name``; ``peak_stats`` are the validation goods' peak mean and std."""
    rule = RULES[name][1]
    if rule is not None:
        return rule(z, patches.sample, patches.n).numpy()
    peaks = torch.stack([(image_peaks(z[c], patches.sample, patches.n) - peak_stats[c][0]) / peak_stats[c][1]
                         for c in PEAK_COMPONENTS])
    return (peaks.amax(0) if name == "peak z, max" else peaks.sum(0)).numpy()


def family_aurocs(scores: np.ndarray, families: list[str]) -> dict[str, float]:
    from bridgenet.metrics import GOOD, auroc_per_defect, image_auroc

    labels = np.asarray([f != GOOD for f in families])
    out = {"all": float(image_auroc(scores, labels))}
    out.update({k: float(v) for k, v in auroc_per_defect(scores, families).items()})
    return out


def score_category(work: Path, seed: int, category: str) -> dict[str, dict[str, dict[str, float]]]:
    """{rule: {preset: {all, geometric, appearance, both}}} for one saved rgb+depth model."""
    from bridgenet.config import load_params
    from bridgenet.data.batch import Batch
    from bridgenet.data.cache import load_cached_split
    from bridgenet.evaluate import load_test_split
    from bridgenet.model.io import load_model
    from bridgenet.training.finish import calibrate_scores

    path = accuracy_runs.model_dir(work, "rgb+depth", seed, category) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no model; train it with "
                                f"`python -m bench.accuracy --seeds {seed} --configs rgb+depth --work {work}`")
    params = load_params(PARAMS, [*accuracy_runs.base_overrides(work), *accuracy_runs.CONFIGS["rgb+depth"]])
    network = load_model(path).network.eval()
    network.fusion_weight = params.model.fusion_weight
    batch = params.eval.batch_size
    validation = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    calibrate_scores(network, Batch.from_split(validation), torch.device("cpu"), batch)
    train, _, _ = embed_split(network, load_cached_split(params.data.cache_dir, category, "train", params.data),
                              batch)
    maps = {m: ridge_map(train[other], train[m], RIDGE) for m, other in (("rgb", "depth"), ("depth", "rgb"))}
    splits = {"validation": validation}
    for preset in PRESETS:
        test_params = load_params(PARAMS, [*accuracy_runs.data_overrides(work, preset),
                                           *accuracy_runs.CONFIGS["rgb+depth"]])
        splits[preset] = load_test_split(test_params, category)
    patches = {name: split_components(network, split, train, maps, batch) for name, split in splits.items()}
    val = patches["validation"]
    stats = {c: standardise(v, val.sample, val.n) for c, v in val.components.items()}
    z = {name: {c: (v - stats[c][0]) / stats[c][1] for c, v in p.components.items()} for name, p in patches.items()}
    peak_stats = {}
    for c in PEAK_COMPONENTS:
        peaks = image_peaks(z["validation"][c], val.sample, val.n)
        peak_stats[c] = (float(peaks.mean()), max(float(peaks.std()), 1e-6))
    return {rule: {preset: family_aurocs(rule_scores(rule, z[preset], patches[preset], peak_stats),
                                         patches[preset].families) for preset in PRESETS} for rule in RULES}


def published_references(out: Path, seed: int, category: str) -> dict[str, dict[str, dict[str, float]]]:
    """From ``out/accuracy.json``: the fused results of the rgb, depth and rgb+depth models of ``seed`` and
    ``category``, and the peer's fused result (no seeds), where there are any."""
    path = out / "accuracy.json"
    if not path.is_file():
        return {}
    found: dict[str, dict[str, dict[str, float]]] = {}
    for run in read_records(path):
        if run.get("category") != category:
            continue
        if "config" in run and run["seed"] == seed and run["config"] in ("rgb", "depth", "rgb+depth"):
            found[f"{run['config']} model (published)"] = {
                preset: {"all": run["scores"][preset]["fused"]["metrics"]["image_auroc"],
                         **run["scores"][preset]["fused"]["families"]} for preset in PRESETS}
        elif "modalities" in run and run["preset"] in PRESETS:
            cell = run["modalities"]["fused"]
            found.setdefault("PatchCore rgb+depth (published)", {})[run["preset"]] = {
                "all": cell["metrics"]["image_auroc"], **cell["families"]}
    return {name: cells for name, cells in found.items() if all(p in cells for p in PRESETS)}


def mean_over(cells: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([c[k] for c in cells])) for k in cells[0]}


def markdown(summary: dict[str, dict[str, dict[str, dict[str, float]]]], seeds: list[int]) -> str:
    lines = [f"Image AUROC, mean over categories, mean ± std over seeds {seeds}.", ""]
    for preset in PRESETS:
        lines += [f"**{preset} data**", "", "| rule | all | geometric | appearance | both |", "|---|---|---|---|---|"]
        for rule, cells in summary.items():
            cell = cells[preset]
            lines.append(f"| {rule} | " + " | ".join(
                f"{cell[k]['mean']:.3f} ± {cell[k]['std']:.3f}" if k in cell else "–"
                for k in ("all", *FAMILIES)) + " |")
        lines.append("")
    lines += ["Rules:", ""] + [f"- `{name}`: {text}" for name, (text, _) in RULES.items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fusion_rules", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--categories", nargs="+", default=None, help="default: data.categories")
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "work")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    from bridgenet.config import load_params

    categories = args.categories or list(load_params(PARAMS).data.categories)
    per_seed: dict[int, dict[str, dict[str, dict[str, float]]]] = {}
    for seed in args.seeds:
        per_category = []
        for category in categories:
            start = time.perf_counter()
            cells = score_category(args.work, seed, category)
            cells.update(published_references(args.out, seed, category))
            per_category.append(cells)
            print(f"seed {seed} {category}: {time.perf_counter() - start:.0f} s", flush=True)
        names = [k for k in per_category[0] if all(k in c for c in per_category)]
        per_seed[seed] = {name: {preset: mean_over([c[name][preset] for c in per_category]) for preset in PRESETS}
                          for name in names}
    names = [k for k in per_seed[args.seeds[0]] if all(k in s for s in per_seed.values())]
    summary = {name: {preset: {k: {"mean": float(np.mean([per_seed[s][name][preset][k] for s in args.seeds])),
                                   "std": float(np.std([per_seed[s][name][preset][k] for s in args.seeds]))}
                               for k in per_seed[args.seeds[0]][name][preset]}
                      for preset in PRESETS} for name in names}
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {"seeds": args.seeds, "categories": categories, "summary": summary,
               "per_seed": {str(s): v for s, v in per_seed.items()},
               "rules": {name: text for name, (text, _) in RULES.items()}}
    write_results(args.out / "fusion_rules.json", payload)
    table = markdown(summary, args.seeds)
    (args.out / "fusion_rules.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
