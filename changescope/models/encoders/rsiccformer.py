"""RSICCformer's dual-branch encoder with multi-layer bi-temporal fusion.

Liu et al., "Remote Sensing Image Change Captioning With Dual-Branch Transformers: A New Method and a
Large Scale Dataset", IEEE TGRS 2022 (code: Chen-Yang-Liu/RSICC, ``MCCFormers_diff_as_Q``).

Idea: each date attends to the change. Per layer, tokens of A and of B are the queries and the
difference B - A is the key and value, through one attention layer shared by both branches; the two
branch outputs of every layer are concatenated and accumulated through a residual conv block and
LayerNorm (the paper's "multi-layer bi-temporal fusion"). Despite the class name ``diff_as_Q`` the
released code uses the difference as key / value, not as query; we follow the code.

Where ours differs: positions come from a ``max_size`` table (any map up to that size, not only 14x14);
attention is our own post-norm layer (:class:`~changescope.models.encoders.layers.Block`); the backbone
cut (ResNet-101 ``layer3``, pooled to 14x14) is the preset's business, not this module's. The output
keeps the paper's width: ``out_dim = 2 * d_model`` (1024 for d = 512, the paper's decoder width).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from changescope.models.encoders.base import ChangeEncoder
from changescope.models.encoders.layers import (
    Block,
    Position2d,
    ResBlock,
    projection,
    to_map,
    to_tokens,
    xavier_init,
)


class RSICCformerEncoder(ChangeEncoder):
    """Each date queries the difference B - A; layer outputs are fused by concatenation and summed.

    Output: ``[B, h*w, 2 * d_model]``.
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
        ffn_dim = 4 * d_model
        self.layers = nn.ModuleList(Block(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.fuse = nn.ModuleList(ResBlock(2 * d_model) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(2 * d_model) for _ in range(num_layers))
        self.out_dim = 2 * d_model
        xavier_init(self)

    def forward(self, feat_a: Tensor, feat_b: Tensor) -> Tensor:
        h, w = self.check_pair(feat_a, feat_b)
        a = to_tokens(self.pos(self.proj(feat_a)))
        b = to_tokens(self.pos(self.proj(feat_b)))
        fused = 0
        for layer, res, norm in zip(self.layers, self.fuse, self.norms, strict=True):
            diff = b - a
            a, b = layer(a, diff), layer(b, diff)  # one shared layer: both dates read the change
            fused = fused + torch.cat([a, b], -1)
            fused = norm(to_tokens(res(to_map(fused, h, w))))
        return fused
