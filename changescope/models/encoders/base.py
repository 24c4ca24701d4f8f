"""The interface every change encoder follows, so presets can swap them."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn


class ChangeEncoder(nn.Module):
    """Turns the last backbone level of dates A and B into change tokens.

    ``forward(feat_a, feat_b)`` takes two ``[B, in_channels, h, w]`` maps and returns ``[B, N, out_dim]``
    tokens for the task heads (N = h * w for every encoder here). Single-stream encoders
    (``single_stream = True``, SEN) take the one map a 6-channel backbone makes of ``concat(A, B)`` and
    ``None`` in place of ``feat_b``.

    Class attributes:
        single_stream: the encoder reads one joint map instead of a pair.
        direction_aware: the output depends on which date is A (all encoders here: each uses B - A or an
            ordered concatenation); a symmetric encoder would set it False.
    """

    single_stream: ClassVar[bool] = False
    direction_aware: ClassVar[bool] = True

    def __init__(
        self,
        in_channels: int,
        d_model: int = 512,
        num_layers: int = 3,
        num_heads: int = 8,
        dropout: float = 0.1,
    ):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.in_channels, self.d_model, self.num_layers = in_channels, d_model, num_layers
        self.out_dim = d_model

    def forward(self, feat_a: Tensor, feat_b: Tensor) -> Tensor:
        raise NotImplementedError

    def check_pair(self, feat_a: Tensor, feat_b: Tensor) -> tuple[int, int]:
        """Validate a pair of maps and return their ``(h, w)``."""
        if feat_a.ndim != 4 or feat_a.shape[1] != self.in_channels:
            expected = f"[B, {self.in_channels}, h, w]"
            raise ValueError(f"expected feature maps {expected}, got {tuple(feat_a.shape)}")
        if feat_b.shape != feat_a.shape:
            raise ValueError(f"feature maps of A {tuple(feat_a.shape)} and B {tuple(feat_b.shape)} differ")
        return feat_a.shape[-2], feat_a.shape[-1]
