"""The backbone's weights are real ImageNet weights and its claims match its output."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from skimage import data as skdata
from timm.layers import Conv2dSame

from bridgenet.model.backbone import (
    Backbone,
    WeightsUnavailableError,
    ZeroTapSameConv,
    drop_same_padding,
    drop_unused_blocks,
    fold_batch_norms,
    pretrained_state_dict,
)

IMAGENET_CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def build_classifier(model_name: str, weights: str) -> torch.nn.Module:
    """The full timm ImageNet classifier with the backbone's weights (``package`` or ``none``), in eval mode."""
    model = timm.create_model(model_name, pretrained=False)
    state = pretrained_state_dict(model_name, weights)
    if state is not None:
        assert not model.load_state_dict(state, strict=False).missing_keys
    return model.eval()


def _chelsea_batch(size: int) -> torch.Tensor:
    image = Image.fromarray(skdata.chelsea()).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().unsqueeze(0) / 255.0


def test_package_weights_classify_chelsea_as_a_cat():
    model = build_classifier("tf_efficientnet_lite0", "package")
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.inference_mode():
        logits = model((_chelsea_batch(224) - mean) / std)
    assert int(logits.argmax()) in IMAGENET_CAT_CLASSES


def test_random_weights_do_not_pass_the_cat_check():
    # Guards the test above: it must be the weights, not luck, that make a cat.
    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", "none")
    with torch.inference_mode():
        probs = model(_chelsea_batch(224) * 2 - 1).softmax(-1)
    assert float(probs[0, 281:286].sum()) < 0.2


@pytest.mark.parametrize("layers", [(2, 3), (1, 2, 3)])
def test_reported_channels_and_strides_match_outputs(layers):
    backbone = Backbone("tf_efficientnet_lite0", "package", layers)
    with torch.inference_mode():
        outputs = backbone(torch.zeros(2, 3, 256, 256))
    assert len(outputs) == len(layers)
    for out, channels, stride in zip(outputs, backbone.channels, backbone.strides):
        assert out.shape == (2, channels, 256 // stride, 256 // stride)
    if layers == (2, 3):
        assert backbone.channels == [40, 112] and backbone.strides == [8, 16]


def test_backbone_is_frozen_and_stays_in_eval_mode():
    backbone = Backbone("tf_efficientnet_lite0", "package", (2, 3))
    backbone.train()
    assert not backbone.training and not backbone.net.training
    assert not any(p.requires_grad for p in backbone.parameters())



def _original_outputs(backbone: Backbone, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return list(backbone.net(x.contiguous(memory_format=torch.channels_last)))


def test_folded_batch_norms_give_the_same_features_and_leave_the_weights_alone():
    backbone = Backbone("tf_efficientnet_lite0", "package", (2, 3))
    keys = set(backbone.state_dict())
    x = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        folded = backbone(x)
    for got, want in zip(folded, _original_outputs(backbone, x)):
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.folded().modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.net.modules())
    assert set(backbone.state_dict()) == keys  # model files keep the original layers


def test_the_folded_copy_skips_the_blocks_after_the_last_level_and_keeps_the_features():
    backbone = Backbone("tf_efficientnet_lite0", "none", (2, 3), announce_random=False)
    assert len(backbone.net.blocks) == 7
    assert len(backbone.folded().blocks) == 5  # the two stride-32 stages are never read
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        got = backbone(x)
    assert [f.shape[1] for f in got] == backbone.channels
    for a, b in zip(got, _original_outputs(backbone, x)):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    deepest = Backbone("tf_efficientnet_lite0", "none", (2, 4), announce_random=False)
    assert len(deepest.folded().blocks) == 7  # stride 32 is asked for: nothing to drop


def test_drop_unused_blocks_leaves_extractors_that_stop_by_themselves():
    net = timm.create_model("resnet18", pretrained=False, features_only=True, out_indices=(1, 2))
    assert drop_unused_blocks(net) == 0
    lite = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True, out_indices=(1,))
    assert drop_unused_blocks(lite) == 5 and len(lite.blocks) == 2


def test_the_folded_copy_follows_new_weights():
    source = Backbone("tf_efficientnet_lite0", "package", (2, 3))
    backbone = Backbone("tf_efficientnet_lite0", "none", (2, 3), announce_random=False)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        before = backbone(x)[0].clone()
    holder = torch.nn.Module()
    holder.backbone = backbone  # loaded as part of a larger network, as model files are
    holder.load_state_dict({f"backbone.{k}": v for k, v in source.state_dict().items()})
    with torch.inference_mode():
        after = backbone(x)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _original_outputs(source, x)[0], atol=2e-4, rtol=1e-4)


def test_fold_batch_norms_keeps_the_activation_and_skips_unpaired_norms():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 2)
    net.eval()
    x = torch.rand(2, 3, 8, 8)
    want = net(x)
    assert fold_batch_norms(net) == 1
    assert isinstance(net[1], torch.nn.Identity) and isinstance(net[3], torch.nn.BatchNorm2d)
    torch.testing.assert_close(net(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kernel, groups", [(3, 1), (3, 8), (5, 8), ((3, 5), 1)])
@pytest.mark.parametrize("size", [(16, 16), (15, 15), (16, 13), (7, 10)])
def test_same_convolutions_read_unpadded_give_timms_padded_outputs(kernel, groups, size):
    """Stride 2 pads one more row / column after an even side than before it: the zero taps
    in front of the kernel must take the padded copy's place on every side length."""
    torch.manual_seed(0)
    conv = Conv2dSame(8, 16, kernel, stride=2, groups=groups, bias=True)
    x = torch.randn(2, 8, *size)
    with torch.no_grad():
        want = conv(x)
        got = ZeroTapSameConv(conv)(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_folded_copy_has_no_padded_same_convolutions_and_keeps_the_features():
    backbone = Backbone("tf_efficientnet_lite0", "package", (2, 3))
    assert sum(isinstance(m, Conv2dSame) for m in backbone.net.modules()) > 0
    wrapped = [m.conv for m in backbone.folded().modules() if isinstance(m, ZeroTapSameConv)]
    assert len(wrapped) == 4  # the stem and the first layer of each stride-2 stage kept
    assert all(any(m is w for w in wrapped) for m in backbone.folded().modules() if isinstance(m, Conv2dSame))
    for size in [(64, 64), (70, 57)]:  # even and odd sides: pad after only, and both sides
        x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(4))
        with torch.inference_mode():
            got = backbone(x)
        for a, b in zip(got, _original_outputs(backbone, x)):
            torch.testing.assert_close(a, b, atol=2e-4, rtol=1e-4)
    dilated = torch.nn.Sequential(Conv2dSame(3, 4, 3, stride=2, dilation=2))
    assert drop_same_padding(dilated) == 0  # zero taps in front shift by the dilation: left as is


def test_file_weights_round_trip(tmp_path):
    reference = build_classifier("tf_efficientnet_lite0", "package")
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": reference.state_dict()}, path)
    loaded = Backbone("tf_efficientnet_lite0", f"file:{path}", (2, 3))
    packaged = Backbone("tf_efficientnet_lite0", "package", (2, 3))
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        for a, b in zip(loaded(x), packaged(x)):
            torch.testing.assert_close(a, b)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        Backbone("wide_resnet50_2", f"file:{tmp_path / 'wrn50.pth'}", (2, 3))


def test_file_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "lite0.pth"
    torch.save(build_classifier("tf_efficientnet_lite0", "none").state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="do not fit|missing from the weights"):
        Backbone("resnet18", f"file:{path}", (2, 3))


def test_package_source_refuses_models_it_does_not_ship():
    with pytest.raises(WeightsUnavailableError, match="package only exists"):
        Backbone("wide_resnet50_2", "package", (2, 3))


def test_hub_offline_is_a_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads the variable once, at import: without this it would try the network
    # and the test would wait for the connection to time out (~45 s) before passing
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="model.weights=hub"):
        Backbone("resnet18", "hub", (2, 3))


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match="not a timm model"):
        Backbone("no_such_net", "none", (2, 3))


def test_the_compiled_backbone_gives_the_folded_features(caplog):
    """predict.compile_backbone: torch.compile of the folded copy, same features (one compile, ~20 s),
    and the wait announced once per input shape."""
    backbone = Backbone("tf_efficientnet_lite0", "package", (2, 3))
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        eager = [f.clone() for f in backbone(x)]
        backbone.compile_cpu = True
        with caplog.at_level("INFO", logger="bridgenet.model.backbone"):
            compiled = backbone(x)
            backbone(x)
    assert not backbone.compiled().failed
    assert caplog.text.count("compiling the backbone for inputs 2x3x64x64") == 1
    for got, want in zip(compiled, eager):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_failed_compile_falls_back_to_the_folded_network_once(monkeypatch, caplog):
    calls = []

    def broken_compile(module, **_):
        def run(x):
            calls.append(1)
            raise RuntimeError("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    backbone = Backbone("tf_efficientnet_lite0", "none", (2, 3), announce_random=False)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        eager = backbone(x)[0].clone()
        backbone.compile_cpu = True
        with caplog.at_level("WARNING"):
            first, second = backbone(x)[0], backbone(x)[0]
    torch.testing.assert_close(first, eager)
    torch.testing.assert_close(second, eager)
    assert calls == [1]  # not tried again on every batch
    assert "torch.compile failed (RuntimeError: no C++ compiler found)" in caplog.text
