"""Change encoders: shapes, gradients, direction, degenerate inputs, batch independence, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from changescope.errors import ChangescopeError
from changescope.models.encoders import ENCODERS, ChangeEncoder, build_encoder
from changescope.models.encoders.layers import Position2d, to_map, to_tokens
from changescope.models.utils import count_parameters

C, H, W = 16, 5, 6  # non-square, so a swapped h / w would show
TINY = {"d_model": 32, "num_layers": 2, "num_heads": 4}


def make(name: str) -> ChangeEncoder:
    torch.manual_seed(0)
    return build_encoder(name, C, **TINY)


def inputs(seed: int = 0, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(batch, C, H, W, generator=g), torch.randn(batch, C, H, W, generator=g)
    images = torch.rand(batch, 6, 8 * H, 8 * W, generator=g)  # only SEN reads the raw pair
    return a, b, images


def encode(encoder: ChangeEncoder, a, b, images):
    """Two-stream encoders get (A, B); SEN gets the joint map, None and the stacked pair."""
    if encoder.single_stream:
        return encoder(a, None, images=images)
    return encoder(a, b)


def swapped(a, b, images):
    return b, a, torch.cat([images[:, 3:], images[:, :3]], 1)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_output_is_one_token_per_position(name):
    encoder = make(name).eval()
    out = encode(encoder, *inputs())
    assert isinstance(encoder, ChangeEncoder)
    assert out.shape == (2, H * W, encoder.out_dim)
    # RSICCformer keeps the concatenated width of its two branches, the others fuse back to d_model
    assert encoder.out_dim == (2 if name == "rsiccformer" else 1) * TINY["d_model"]


@pytest.mark.parametrize("name", list(ENCODERS))
def test_gradients_reach_both_inputs(name):
    encoder = make(name).train()
    a, b, images = inputs()
    a.requires_grad_(True)
    b.requires_grad_(True)
    images.requires_grad_(True)
    out = encode(encoder, a, b, images)
    # a random readout: a plain sum of LayerNormed tokens would have (almost) zero gradient
    (out * torch.randn_like(out)).sum().backward()
    # SEN's second date enters through its image, not a second map
    second = images if encoder.single_stream else b
    for x in (a, second):
        assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_swapping_dates_changes_direction_aware_outputs(name):
    encoder = make(name).eval()
    a, b, images = inputs()
    forward = encode(encoder, a, b, images)
    backward = encode(encoder, *swapped(a, b, images))
    assert encoder.direction_aware  # every encoder here reads B - A or an ordered concatenation
    assert not torch.allclose(forward, backward, atol=1e-4)


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("kind", ["identical", "zero"])
def test_unchanged_pairs_give_finite_tokens(name, kind):
    encoder = make(name).eval()
    a, _, images = inputs()
    if kind == "zero":  # the cosine similarity of zero vectors must not divide by zero
        a, images = torch.zeros_like(a), torch.zeros_like(images)
    images = torch.cat([images[:, :3], images[:, :3]], 1)
    out = encode(encoder, a, a.clone(), images)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(ENCODERS))
def test_samples_do_not_mix_across_the_batch(name):
    encoder = make(name).eval()
    a, b, images = inputs(batch=3)
    whole = encode(encoder, a, b, images)
    alone = encode(encoder, a[1:2], b[1:2], images[1:2])
    torch.testing.assert_close(whole[1:2], alone, atol=1e-5, rtol=1e-4)


def test_only_sen_is_single_stream():
    assert [name for name, cls in ENCODERS.items() if cls.single_stream] == ["sen"]


def test_sen_rejects_two_maps_or_missing_images():
    encoder = make("sen")
    a, b, images = inputs()
    with pytest.raises(ValueError, match="single-stream"):
        encoder(a, b, images=images)
    with pytest.raises(ValueError, match="images"):
        encoder(a, None)


@pytest.mark.parametrize("name", [n for n, cls in ENCODERS.items() if not cls.single_stream])
def test_mismatched_maps_are_rejected(name):
    encoder = make(name)
    a, b, _ = inputs()
    with pytest.raises(ValueError, match="differ"):
        encoder(a, b[..., :-1])
    with pytest.raises(ValueError, match=f"\\[B, {C}, h, w\\]"):
        encoder(a[:, :-1], b[:, :-1])


def test_unknown_encoder_name_lists_the_choices():
    with pytest.raises(ChangescopeError, match="rsiccformer") as info:
        build_encoder("mamba", C)
    assert "\n" not in str(info.value)


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        build_encoder("bicross", C, d_model=30, num_heads=4)


def test_tokens_and_maps_round_trip():
    x = torch.randn(2, 3, H, W)
    tokens = to_tokens(x)
    assert tokens.shape == (2, H * W, 3)
    torch.testing.assert_close(tokens[:, 1 * W + 4], x[:, :, 1, 4])  # row-major positions
    torch.testing.assert_close(to_map(tokens, H, W), x)


def test_positions_tell_every_cell_apart_and_bound_the_map():
    pos = Position2d(8, max_size=6)
    grid = to_tokens(pos(torch.zeros(1, 8, H, W)))[0]
    assert torch.unique(grid, dim=0).shape[0] == H * W
    with pytest.raises(ValueError, match="max_size"):
        pos(torch.zeros(1, 8, 7, 3))


def test_count_parameters_counts_shared_tensors_once_and_respects_freezing():
    layer = nn.Linear(3, 4)
    single = sum(p.numel() for p in layer.parameters())
    assert count_parameters(nn.Sequential(layer, nn.ReLU(), layer)) == single
    model = nn.Sequential(layer, nn.Linear(4, 2))
    layer.requires_grad_(False)
    assert count_parameters(model) == single + 4 * 2 + 2
    assert count_parameters(model, trainable_only=True) == 4 * 2 + 2
