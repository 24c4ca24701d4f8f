"""Chg2Cap's attentive encoder and cosine-similarity fusion.

Chang et al., "Changes to Captions: An Attentive Network for Remote Sensing Change Captioning", IEEE TIP
2023 (code: ShizhenChang/Chg2Cap, ``AttentiveEncoder`` and the start of ``DecoderTransformer``).

Idea: per layer, one self-attention layer (shared by both dates) refines each image on its own; then the
pair, concatenated along channels so every position carries ``[A; B]``, goes through a joint attention
layer that relates positions across both dates at once; the two halves, plus the layer-0 input (the
released code's residual), feed the next layer. The decoder side then fuses ``[A, B, cos(A, B)]`` with a
1x1 conv and a residual conv block.

Where ours differs: the fusion ends this encoder (out_dim = d_model), so every encoder hands the heads
tokens; the cosine similarity is concatenated as one extra channel, where the code adds it to every
channel (the conv can learn that and more); the value projection is its own (the code reuses the key
projection for values); positions come from a ``max_size`` table; a 1x1 projection is added when the
backbone width differs from d_model (the paper feeds ResNet-101's 2048 channels directly). Paper sizes:
``d_model=2048, attn_dim=2048, ffn_dim=512, num_layers=3, num_heads=8``.
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


class Chg2CapEncoder(ChangeEncoder):
    """Shared self-attention per date, joint attention over channel-concatenated ``[A; B]``, fusion.

    Args (beyond the common ones):
        attn_dim: inner attention width (default d_model).
        ffn_dim: feed-forward width (default 4 * d_model; the paper uses 512 with d_model 2048).
        max_size: largest feature-map side the position table covers.

    Output: ``[B, h*w, d_model]``.
    """

    def __init__(
        self,
        in_channels: int,
        d_model: int = 512,
        num_layers: int = 3,
        num_heads: int = 8,
        dropout: float = 0.1,
        attn_dim: int | None = None,
        ffn_dim: int | None = None,
        max_size: int = 64,
    ):
        super().__init__(in_channels, d_model, num_layers, num_heads, dropout)
        attn_dim, ffn_dim = attn_dim or d_model, ffn_dim or 4 * d_model
        self.proj = projection(in_channels, d_model)
        self.pos = Position2d(d_model, max_size)
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    Block(d_model, num_heads, ffn_dim, dropout, attn_dim),  # each date alone
                    Block(2 * d_model, num_heads, ffn_dim, dropout, attn_dim),  # the pair, jointly
                ]
            )
            for _ in range(num_layers)
        )
        self.fusion = PairFusion(d_model, d_model, cosine=True)
        xavier_init(self)

    def forward(self, feat_a: Tensor, feat_b: Tensor) -> Tensor:
        h, w = self.check_pair(feat_a, feat_b)
        a0 = to_tokens(self.pos(self.proj(feat_a)))
        b0 = to_tokens(self.pos(self.proj(feat_b)))
        a, b = a0, b0
        for single, joint in self.layers:
            a, b = single(a) + a, single(b) + b
            a, b = joint(torch.cat([a, b], -1)).chunk(2, -1)
            a, b = a + a0, b + b0
        return to_tokens(self.fusion(to_map(a, h, w), to_map(b, h, w)))
