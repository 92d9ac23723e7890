"""Training one BridgeNet model per category on good samples only.

Model selection and the decision threshold use the validation split (its good
samples plus texture anomalies drawn with a fixed seed), never the test split.
The backbone is frozen, so clean training samples are embedded once per run;
only perturbed inputs go through the backbone again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from bridgenet.anomalies.gaussian import GaussianAnomalyGenerator
from bridgenet.anomalies.texture import TextureAnomalyGenerator, mask_to_grid
from bridgenet.config import Params
from bridgenet.data.batch import Batch, resolve_device
from bridgenet.data.cache import CachedSplit, load_cached_split
from bridgenet.model.io import (
    TrainedModel,
    atomic_save,
    read_checkpoint,
    remove_interrupted_writes,
    save_model,
)
from bridgenet.model.losses import bce, focal_loss
from bridgenet.model.network import BridgeNet

LOGGER = logging.getLogger(__name__)
EpochCallback = Callable[[dict[str, Any]], None]
GAUSSIAN_LEVELS = ("image", "feature", "projected")  # the Gaussian generator's negatives, per level
PREVIEW_FILE = "anomaly_preview.png"  # beside model.pt: the generated anomalies training selects on


class TrainingError(RuntimeError):
    """A run that did not learn (no step, a loss that is not finite); ``model.pt`` is left as it was."""


def steps_per_epoch(n_samples: int, batch_size: int, max_samples_per_epoch: int) -> int:
    """Optimisation steps of one epoch: batches of at least two samples (BatchNorm needs two)."""
    used = min(n_samples, max_samples_per_epoch)
    return used // batch_size + (1 if used % batch_size >= 2 else 0)


def check_steps(params: Params, category: str, n_samples: int) -> None:
    """Refuse a run that would take no optimisation step, naming what to change.

    train.batch_size and train.max_samples_per_epoch are at least 2 (config), so only
    a category with fewer than two training samples gives no step.
    """
    tcfg = params.train
    if steps_per_epoch(n_samples, tcfg.batch_size, tcfg.max_samples_per_epoch) > 0:
        return
    raise TrainingError(
        f"{category}: {n_samples} training sample(s) in {params.data.cache_dir}; a step needs "
        "at least 2 (BatchNorm), so nothing would be trained: add training samples"
    )


@dataclass
class ValidationSet:
    """Good validation samples plus fixed synthetic anomalies: labels (N,), masks (N, S, S)."""

    batch: Batch
    labels: np.ndarray
    masks: np.ndarray


def build_validation_set(split: CachedSplit, params: Params, modalities: tuple[str, ...]) -> ValidationSet:
    """Validation goods plus ``validation_anomalies_per_good`` texture anomalies each (fixed seed)."""
    good = Batch.from_split(split)
    copies = params.train.validation_anomalies_per_good
    if copies == 0:
        return ValidationSet(good, np.zeros(len(good), dtype=np.int64), np.zeros_like(split.foreground))
    seed = params.train.validation_seed
    texture_cfg = params.anomalies.texture
    generator = TextureAnomalyGenerator(texture_cfg, split.rgb.shape[1], modalities, np.random.default_rng(seed))
    torch_gen = torch.Generator().manual_seed(seed)
    rgbs, depths, fgs, masks = [good.rgb], [good.depth], [good.foreground], [torch.zeros_like(good.foreground)]
    for _ in range(copies):
        rgb, depth, region, _ = generator(good.rgb, good.depth, good.foreground, torch_gen)
        rgbs.append(rgb)
        depths.append(depth)
        fgs.append(good.foreground)
        masks.append(region.bool())
    mask = torch.cat(masks)
    labels = mask.flatten(1).any(1).numpy().astype(np.int64)
    return ValidationSet(Batch(torch.cat(rgbs), torch.cat(depths), torch.cat(fgs)), labels, mask.numpy())


def write_anomaly_preview(params: Params, category: str, path: Path, n: int = 3) -> Path | None:
    """A sheet of the validation set's synthetic anomalies (what training selects epochs on).

    Returns None when the validation set holds none (``train.validation_anomalies_per_good = 0``).
    """
    from bridgenet import reports

    split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    validation = build_validation_set(split, params, params.model.modalities)
    goods = len(split)
    anomalous = np.flatnonzero(validation.labels[goods:] == 1)[:n] + goods
    if len(anomalous) == 0:
        return None
    batch, clean = validation.batch, (anomalous - goods) % goods
    return reports.write_anomaly_preview(
        path,
        batch.rgb[clean].permute(0, 2, 3, 1).numpy(),
        batch.rgb[anomalous].permute(0, 2, 3, 1).numpy(),
        batch.depth[anomalous, 0].numpy(),
        validation.masks[anomalous],
        f"{category}: generated anomalies (validation, seed {params.train.validation_seed})",
    )


@torch.inference_mode()
def predict_batches(
    network: BridgeNet, batch: Batch, device: torch.device, batch_size: int, scorer: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Image scores (N,) and anomaly maps (N, S, S) for every sample of ``batch`` (``scorer``: the model's)."""
    network.eval()
    scores, maps = [], []
    for start in range(0, len(batch), batch_size):
        part = slice(start, start + batch_size)
        result = network(batch.rgb[part].to(device), batch.depth[part].to(device), scorer)
        scores.append(result.pred_score.float().cpu())
        maps.append(result.anomaly_map.float().cpu())
    return torch.cat(scores).numpy(), torch.cat(maps).numpy()


@torch.inference_mode()
def calibrate_scores(network: BridgeNet, goods: Batch, device: torch.device, batch_size: int) -> dict[str, float]:
    """Put every score component on the scale of its values on the scored patches of ``goods``.

    ``goods`` are clean samples the model was not fitted on (the validation goods);
    the discriminator must hold its final weights. Returns each component's (loc, scale).
    """
    network.eval()
    parts: dict[str, list[torch.Tensor]] = {}
    samples = []
    for start in range(0, len(goods), batch_size):
        batch = goods.select(slice(start, start + batch_size)).to(device)
        embeddings = network.embed_inputs(batch.inputs())
        grid = embeddings[network.modalities[0]].shape[-2:]
        keep = network.kept_patches(batch.depth, grid)
        index = torch.arange(start, start + len(batch), device=keep.device).repeat_interleave(grid[0] * grid[1])
        samples.append(index[keep])
        for name, values in network.patch_components(embeddings, keep, "fused").items():
            parts.setdefault(name, []).append(values)
    return network.calibrate({name: torch.cat(values) for name, values in parts.items()}, torch.cat(samples))


def validation_metrics(scores: np.ndarray, maps: np.ndarray, val: ValidationSet) -> dict[str, float]:
    """Image and pixel AUROC on the validation set; ``score`` = their mean (selection criterion)."""
    out: dict[str, float] = {}
    if len(np.unique(val.labels)) == 2:
        out["val_image_auroc"] = float(roc_auc_score(val.labels, scores))
        out["val_pixel_auroc"] = float(roc_auc_score(val.masks.ravel(), maps.ravel()))
        out["val_score"] = (out["val_image_auroc"] + out["val_pixel_auroc"]) / 2
    else:
        # Only good samples: prefer the model whose good scores are lowest.
        out["val_score"] = float(-np.mean(scores))
    out["val_good_score_mean"] = float(np.mean(scores[val.labels == 0]))
    return out


class Trainer:
    """Holds the network, both generators, the optimisers and the per-run clean-feature cache."""

    def __init__(self, params: Params, train_split: CachedSplit, device: torch.device) -> None:
        self.params = params
        self.device = device
        torch.manual_seed(params.train.seed)
        self.network = BridgeNet(params.model).to(device)
        self.modalities = self.network.modalities
        tcfg = params.train
        groups = self.network.trainable_parameters()
        self.optimizers = {
            "discriminator": torch.optim.AdamW(groups["discriminator"], lr=tcfg.lr_discriminator),
        }
        if groups["projection"]:
            self.optimizers["projection"] = torch.optim.Adam(
                groups["projection"], lr=tcfg.lr_projection, weight_decay=tcfg.weight_decay_projection
            )
        self.generator = torch.Generator().manual_seed(params.train.seed)
        acfg = params.anomalies
        self.gaussian = GaussianAnomalyGenerator(acfg.gaussian, self.modalities) if acfg.gaussian.enabled else None
        self.texture = (
            TextureAnomalyGenerator(
                acfg.texture, train_split.rgb.shape[1], self.modalities,
                np.random.default_rng(params.train.seed), device=device,
            )
            if acfg.texture.enabled
            else None
        )
        if self.gaussian is None and self.texture is None:
            raise ValueError("anomalies: both generators are disabled; nothing to train on")
        self.data = Batch.from_split(train_split).to(device)
        empty = int((~self.data.foreground.flatten(1).any(1)).sum())
        if empty:
            LOGGER.warning("%d of %d training samples have no foreground: anomalies are placed and "
                           "patches scored on their whole image", empty, len(self.data))
        self.clean = self._embed_all(self.data)
        self.memory_info = self._fit_memory()
        self.use_amp = params.train.amp and device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    @torch.no_grad()
    def _embed_all(self, data: Batch) -> dict[str, torch.Tensor]:
        """Standardised clean embeddings of every training sample, computed once per run."""
        size = self.params.train.batch_size
        inputs = data.inputs()
        self.network.depth_image.fit(data.depth)
        raw = {
            m: torch.cat([self.network.embed(inputs[m][i:i + size], m, standardized=False)
                          for i in range(0, len(data), size)])
            for m in self.modalities
        }
        self.network.fit_standardization(raw)
        return {m: self.network.standardize(m, raw[m]) for m in self.modalities}

    def _fit_memory(self) -> dict[str, float]:
        """The memory bank from the clean embeddings of the scored patches (its own seeded generator,
        so that building it leaves the training's random stream as it was)."""
        grid = self.clean[self.modalities[0]].shape[-2:]
        keep = self.network.kept_patches(self.data.depth, grid).view(len(self.data), *grid)
        tick = time.perf_counter()
        info = self.network.memory.fit(self.clean, keep, self.params.model.memory,
                                       torch.Generator().manual_seed(self.params.train.seed))
        info["memory_seconds"] = time.perf_counter() - tick
        info["memory_mb"] = self.network.memory.nbytes() / 2**20
        LOGGER.info("memory bank: %s", ", ".join(f"{k} {v:.4g}" for k, v in info.items()))
        return info

    def step(self, index: torch.Tensor) -> dict[str, float]:
        """One optimisation step on the training samples ``index``; returns the loss terms."""
        net, gen = self.network, self.generator
        clean = {m: self.clean[m][index] for m in self.modalities}
        batch = Batch(self.data.rgb[index], self.data.depth[index], self.data.foreground[index])
        grid = clean[self.modalities[0]].shape[-2:]
        # Patches the eval forward never scores are not trained on either (and cost most of a step).
        keep = net.kept_patches(batch.depth, grid)

        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
            z_clean = net.project_patches(clean, keep)
            negatives: dict[str, torch.Tensor] = {}
            if self.gaussian is not None:
                normalized = {m: net.backbone_input(batch.inputs()[m], m) for m in self.modalities}
                noisy_inputs = {m: self.gaussian.noise(x, "image", gen) for m, x in normalized.items()}
                image_level = net.reembed(clean, noisy_inputs, self.gaussian.targets(len(batch), gen))
                negatives["image"] = net.project_patches(image_level, keep)
                targets = self.gaussian.targets(len(batch), gen)
                feature_level = {
                    m: torch.where(targets[m].to(self.device).view(-1, 1, 1, 1),
                                   self.gaussian.noise(clean[m], "feature", gen), clean[m])
                    for m in self.modalities
                }
                negatives["feature"] = net.project_patches(feature_level, keep)
                negatives["projected"] = self.gaussian.noise(z_clean, "projected", gen)
            if self.texture is not None:
                rgb, depth, region, touched = self.texture(batch.rgb, batch.depth, batch.foreground, gen)
                augmented = {m: net.backbone_input(x, m) for m, x in (("rgb", rgb), ("depth", depth))
                             if m in self.modalities}
                negatives["texture"] = net.project_patches(net.reembed(clean, augmented, touched), keep)
                patch_labels = mask_to_grid(region, grid).flatten()[keep]
            logits = net.training_logits(z_clean, negatives)
        terms: dict[str, float] = {}
        loss = torch.zeros((), device=self.device)
        gaussian_levels = [level for level in GAUSSIAN_LEVELS if level in logits.negatives]
        if gaussian_levels:
            clean_term = bce(logits.clean, 0.0)
            for level in gaussian_levels:
                term = clean_term + bce(logits.negatives[level], 1.0)
                terms[f"bce_{level}"] = float(term.detach())
                loss = loss + term
        if "texture" in logits.negatives:
            focal = focal_loss(logits.negatives["texture"], patch_labels.float(),
                               self.params.anomalies.texture.focal_gamma)
            if not gaussian_levels:
                focal = focal + bce(logits.clean, 0.0)
            terms["focal"] = float(focal.detach())
            loss = loss + focal
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        terms["loss"] = float(loss.detach())
        return terms

    def epoch(self) -> dict[str, float]:
        """One pass over at most ``max_samples_per_epoch`` shuffled training samples."""
        self.network.train()
        tcfg = self.params.train
        order = torch.randperm(len(self.data), generator=self.generator)[: tcfg.max_samples_per_epoch]
        sums: dict[str, float] = {}
        steps = 0
        for start in range(0, len(order), tcfg.batch_size):
            index = order[start:start + tcfg.batch_size].to(self.device)
            if len(index) < 2:  # BatchNorm needs more than one sample
                continue
            for key, value in self.step(index).items():
                sums[key] = sums.get(key, 0.0) + value
            steps += 1
        return {key: value / max(steps, 1) for key, value in sums.items()}

    def state(self) -> dict[str, Any]:
        return {
            "network": {k: v.clone() for k, v in self.network.state_dict().items() if not k.startswith("backbone.")},
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "generator": self.generator.get_state(),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.network.load_state_dict(state["network"], strict=False)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        self.generator.set_state(state["generator"])


def fast_start_graph(model: TrainedModel) -> bytes | None:
    """The model's traced graph, saved in model.pt so that ``bridgenet predict`` starts without
    timm; None (and a warning: predict then builds the network, a second slower) if tracing fails."""
    from bridgenet.export import traced_graph

    try:
        return traced_graph(model)
    except (RuntimeError, TypeError, ValueError) as err:
        LOGGER.warning("%s: model saved without its traced graph (%s); predict will build the network",
                       model.category, err)
        return None


def choose_threshold(good_scores: np.ndarray, quantile: float) -> float:
    """Decision threshold from validation good scores: their ``quantile``."""
    return float(np.quantile(good_scores, quantile))


def train_category(
    params: Params,
    category: str,
    out_dir: Path | None = None,
    resume: bool = False,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train ``category``; write ``model.pt`` (best validation epoch) and ``checkpoint.pt`` (last epoch).

    Returns a summary: best epoch, validation metrics, threshold, history and timings.
    """
    previous_threads = torch.get_num_threads()
    if params.train.threads:
        torch.set_num_threads(params.train.threads)
    try:
        return _train_category(params, category, out_dir, resume, on_epoch)
    finally:
        torch.set_num_threads(previous_threads)  # no side effect on the caller's process


def _train_category(
    params: Params, category: str, out_dir: Path | None, resume: bool, on_epoch: EpochCallback | None
) -> dict[str, Any]:
    tcfg = params.train
    out_dir = Path(out_dir) if out_dir is not None else Path(tcfg.models_dir) / category
    checkpoint_path, model_path = out_dir / "checkpoint.pt", out_dir / "model.pt"
    for stale in remove_interrupted_writes(out_dir):
        LOGGER.warning("removed %s, left by an interrupted write", stale)
    device = resolve_device(tcfg.device)
    train_split = load_cached_split(params.data.cache_dir, category, "train", params.data)
    check_steps(params, category, len(train_split))
    foreground_fraction = float(train_split.foreground.reshape(len(train_split), -1).any(1).mean())
    val_split = load_cached_split(params.data.cache_dir, category, "validation", params.data)
    started = time.perf_counter()
    trainer = Trainer(params, train_split, device)
    validation = build_validation_set(val_split, params, trainer.modalities)
    setup_seconds = time.perf_counter() - started

    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"epoch": -1, "val_score": -np.inf, "state": None}
    first_epoch = 0
    if resume and checkpoint_path.is_file():
        checkpoint = read_checkpoint(checkpoint_path)
        if checkpoint["params"] != params.to_dict():
            raise ValueError(f"{checkpoint_path}: made with other params; resume needs the same params")
        trainer.load_state(checkpoint["trainer"])
        history, best, first_epoch = checkpoint["history"], checkpoint["best"], checkpoint["epoch"] + 1
        LOGGER.info("resuming %s from epoch %d", category, first_epoch)
    elif resume:
        LOGGER.warning("--resume: no checkpoint at %s, starting from scratch", checkpoint_path)

    bar = tqdm(range(first_epoch, tcfg.epochs), desc=f"train {category}", unit="epoch",
               initial=first_epoch, total=tcfg.epochs)
    for epoch in bar:
        tick = time.perf_counter()
        losses = trainer.epoch()
        train_seconds = time.perf_counter() - tick
        if not math.isfinite(losses.get("loss", math.nan)):
            raise TrainingError(
                f"{category}: epoch {epoch} loss is {losses.get('loss', 'missing (no step)')} "
                f"({losses}); {model_path} and {checkpoint_path} are left as they were"
            )
        # Epochs are chosen on the discriminator alone: the memory bank does not change with them.
        scores, maps = predict_batches(trainer.network, validation.batch, device, params.eval.batch_size,
                                       "discriminator")
        record = {"epoch": epoch, **losses, **validation_metrics(scores, maps, validation),
                  "epoch_seconds": train_seconds}
        if not math.isfinite(record["val_score"]):
            raise TrainingError(
                f"{category}: epoch {epoch} validation score is {record['val_score']} (the network "
                f"scores are not finite); {model_path} and {checkpoint_path} are left as they were"
            )
        history.append(record)
        if record["val_score"] > best["val_score"]:
            best = {"epoch": epoch, "val_score": record["val_score"], "state": trainer.state()["network"]}
        bar.set_postfix(loss=f"{losses.get('loss', float('nan')):.3f}", val=f"{record['val_score']:.3f}",
                        best=best["epoch"])
        atomic_save({"format": "bridgenet-model/1", "params": params.to_dict(), "category": category,
                     "epoch": epoch, "trainer": trainer.state(), "history": history, "best": best},
                    checkpoint_path)
        if on_epoch is not None:
            on_epoch(record)

    if best["state"] is None:
        raise TrainingError(
            f"{category}: no epoch was trained to a finite validation score "
            f"(history {[h.get('val_score') for h in history]}); {model_path} is left as it was"
        )
    trainer.network.load_state_dict(best["state"], strict=False)
    goods = validation.batch.select(torch.from_numpy(validation.labels == 0))
    calibration = calibrate_scores(trainer.network, goods, device, params.eval.batch_size)
    scores, maps = predict_batches(trainer.network, validation.batch, device, params.eval.batch_size)
    final_metrics = validation_metrics(scores, maps, validation)
    good = validation.labels == 0
    threshold = choose_threshold(scores[good], tcfg.threshold_quantile)
    # The map's own threshold, by the same rule on the good maps' highest pixels: a good part's
    # predicted mask is empty as often as it is judged good (the map's peak sits below the score).
    pixel_threshold = choose_threshold(maps[good].reshape(int(good.sum()), -1).max(1), tcfg.threshold_quantile)
    model = TrainedModel(trainer.network.cpu(), params, category, threshold, final_metrics, best["epoch"],
                         foreground_fraction=foreground_fraction, pixel_threshold=pixel_threshold)
    save_model(model, model_path, history, graph=fast_start_graph(model))
    epoch_times = [h["epoch_seconds"] for h in history]
    summary = {
        "category": category,
        "model_path": str(model_path),
        "best_epoch": best["epoch"],
        "epochs": tcfg.epochs,
        "threshold": threshold,
        "pixel_threshold": pixel_threshold,
        "validation": final_metrics,
        "history": history,
        "setup_seconds": setup_seconds,
        "seconds_per_epoch": float(np.mean(epoch_times)) if epoch_times else 0.0,
        "train_samples": len(train_split),
        "device": str(device),
        "scorer": trainer.network.scorer,
        "memory": trainer.memory_info,
        "calibration": calibration,
    }
    LOGGER.info("trained %s: best epoch %s, validation %s, threshold %.4f",
                category, best["epoch"], final_metrics, threshold)
    return summary
