"""Batch norms folded into their convolutions for inference (models/fusion.py)."""

import pytest
import torch
from torch import nn

from changescope.data.text import Vocabulary
from changescope.models.change_model import ChangeModel
from changescope.models.fusion import fold_batchnorm
from changescope.models.hub import save_pretrained
from changescope.models.presets import build_config
from changescope.models.processor import ChangeProcessor

CLASSES = ["background", "road", "building"]


def _randomize_norms(model: nn.Module) -> None:
    """Fresh norms are identities (mean 0, variance 1, scale 1, shift 0): give them real statistics, so a
    wrong fold shows."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)


def _model(preset: str, encoder: str | None = None):
    vocab = Vocabulary.build(["a new road is built", "two houses are built", "there is no difference"], 1)
    overrides = {
        "backbone_pretrained": False,
        "image_size": 64,
        "encoder_kwargs": {"d_model": 32, "num_layers": 1, "num_heads": 4},
        "decoder_kwargs": {"d_model": 32, "num_layers": 1, "num_heads": 4, "ffn_dim": 64, "max_len": 12},
        "classes": CLASSES,
        "change_head_kwargs": {"channels": 16, "class_inputs": True},
        "coarse_gsd": 5.0,
    }
    if preset == "chg2cap":
        overrides["backbone"] = "resnet18"
    if encoder:
        overrides["encoder"] = encoder
    torch.manual_seed(0)
    model = ChangeModel(build_config(preset, len(vocab), **overrides)).eval()
    _randomize_norms(model)
    return model, ChangeProcessor(vocab, 64, 12)


@pytest.mark.parametrize(
    ("preset", "encoder"),
    [("lite", None), ("chg2cap", "chg2cap"), ("chg2cap", "sen"), ("chg2cap", "bicross")],
)
def test_folding_keeps_every_output(preset, encoder):
    model, _ = _model(preset, encoder)
    images = torch.rand(3, 2, 3, 64, 64)
    with torch.no_grad():
        before = [model(images, gsd=gsd) for gsd in (None, 10.0)]
        captions = model.generate(images)
    folded = model.fold_batchnorm()
    # every convolution + norm of the backbone and of the mask and change heads
    assert folded > 10 and model.folded == folded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.change_head.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.coarse_change_head.modules())
    with torch.no_grad():
        for gsd, old in zip((None, 10.0), before, strict=True):
            new = model(images, gsd=gsd)
            for name in ("memory", "class_logits", "change_logit", "mask_logits"):
                torch.testing.assert_close(getattr(new, name), getattr(old, name), atol=1e-4, rtol=1e-4)
        assert model.generate(images) == captions


class SkipAroundNorm(nn.Module):
    """The convolution's output goes to the norm and past it: folding would change the skip."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.norm(y) + y


def test_a_fold_that_changes_the_output_is_undone():
    model = SkipAroundNorm().eval()
    _randomize_norms(model)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        weight, bias = model.conv.weight.clone(), model.conv.bias.clone()
    assert fold_batchnorm(model, lambda: model(x)) == 0
    assert isinstance(model.norm, nn.BatchNorm2d)
    assert torch.equal(model.conv.weight, weight) and torch.equal(model.conv.bias, bias)
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_training_models_are_not_folded_and_folded_ones_are_not_saved(tmp_path):
    model, processor = _model("lite")
    model.train()
    assert model.fold_batchnorm() == 0
    model.eval()
    assert model.fold_batchnorm() > 0
    with pytest.raises(ValueError, match="folded for inference"):
        save_pretrained(model, processor, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_the_shipped_default_loads_folded_with_the_same_masks_and_captions():
    from changescope.tasks.inference import load

    plain, _, _ = load("default", "fp32", 1, fold=False)
    folded, _, _ = load("default", "fp32", 1)
    assert plain.folded == 0 and folded.folded > 50
    images = torch.rand(2, 2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = plain(images), folded(images)
        torch.testing.assert_close(b.change_logit, a.change_logit, atol=1e-3, rtol=1e-3)
        assert torch.equal(a.mask_logits.argmax(1), b.mask_logits.argmax(1))
        assert plain.generate(images) == folded.generate(images)
