"""MCI's bi-directional, difference-aware cross-attention encoder (the captioning branch).

Liu et al., "Change-Agent: Towards Interactive Comprehensive Remote Sensing Change Interpretation and
Analysis", IEEE TGRS 2024 (code: Chen-Yang-Liu/Change-Agent, ``Multi_change/model/model_encoder_att.py``,
the ``Dynamic_DIF_aware_TR`` layers, and the start of its caption decoder).

Idea: A attends to B and B attends to A, in parallel, with a separate layer per direction. Before
attending, queries and keys get local context from depth-wise 3x3, 1x5 and 5x1 convolutions, and the
keys / values are not the other date itself but ``ReLU(BN(conv1x1(x * (y - x))))``: the query date
gated by its difference to the other date, so attention reads the change. The decoder then fuses
``[A, B]`` with a 1x1 conv and a residual conv block.

Where ours differs: that fusion ends this encoder (out_dim = d_model); positions come from a
``max_size`` table; a 1x1 projection is added when the backbone width differs from d_model (MCI feeds
MiT-b1's 512 channels directly). The detection branch of MCI is a segmentation head, not part of this
module. Paper sizes: ``d_model=512, num_layers=3, num_heads=8`` (feed-forward 4 * d_model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from changescope.models.encoders.base import ChangeEncoder
from changescope.models.encoders.layers import (
    Block,
    PairFusion,
    Position2d,
    projection,
    to_map,
    to_tokens,
    xavier_init,
)


class LocalContext(nn.Module):
    """Depth-wise 3x3, 1x5 and 5x1 convolutions, concatenated -> BatchNorm -> GELU -> 1x1 conv."""

    def __init__(self, dim: int):
        super().__init__()
        kernels = ((3, 3), (1, 5), (5, 1))
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, k, padding=(k[0] // 2, k[1] // 2), groups=dim) for k in kernels
        )
        self.mix = nn.Sequential(nn.BatchNorm2d(3 * dim), nn.GELU(), nn.Conv2d(3 * dim, dim, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.mix(torch.cat([conv(x) for conv in self.convs], 1))


class DifferenceAwareCross(nn.Module):
    """One direction: map ``x`` queries keys / values built from ``x * (y - x)``."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.local_q, self.local_kv = LocalContext(dim), LocalContext(dim)
        self.gate = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.BatchNorm2d(dim), nn.ReLU())
        self.block = Block(dim, num_heads, 4 * dim, dropout)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x = x + self.local_q(x)
        y = y + self.local_kv(y)
        context = self.gate(x * (y - x))
        return to_map(self.block(to_tokens(x), to_tokens(context)), h, w)


class BiCrossEncoder(ChangeEncoder):
    """A attends to B and B to A through difference-gated keys; ``[A, B]`` fused into tokens.

    Output: ``[B, h*w, d_model]``.
    """

    def __init__(
        self,
        in_channels: int,
        d_model: int = 512,
        num_layers: int = 3,
        num_heads: int = 8,
        dropout: float = 0.1,
        max_size: int = 64,
    ):
        super().__init__(in_channels, d_model, num_layers, num_heads, dropout)
        self.proj = projection(in_channels, d_model)
        self.pos = Position2d(d_model, max_size)
        self.layers = nn.ModuleList(
            nn.ModuleList([DifferenceAwareCross(d_model, num_heads, dropout) for _ in range(2)])
            for _ in range(num_layers)
        )
        self.fusion = PairFusion(d_model, d_model, cosine=False)  # MCI's decoder leaves the cosine out
        xavier_init(self)

    def forward(self, feat_a: Tensor, feat_b: Tensor) -> Tensor:
        self.check_pair(feat_a, feat_b)
        a, b = self.pos(self.proj(feat_a)), self.pos(self.proj(feat_b))
        for a_reads_b, b_reads_a in self.layers:
            a, b = a_reads_b(a, b), b_reads_a(b, a)
        return to_tokens(self.fusion(a, b))
