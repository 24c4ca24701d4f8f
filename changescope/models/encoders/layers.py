"""Building blocks shared by the change encoders.

All four papers use post-norm transformer layers (``x = LN(x + attn)``, ``x = LN(x + FFN)``) with ReLU
feed-forwards, learned 2-D positions and bottleneck residual conv blocks; they are written once here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def to_tokens(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, h*w, C]`` (row-major positions)."""
    return x.flatten(2).transpose(1, 2)


def to_map(x: Tensor, h: int, w: int) -> Tensor:
    """``[B, h*w, C]`` -> ``[B, C, h, w]``, the inverse of :func:`to_tokens`."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def projection(in_channels: int, d_model: int) -> nn.Module:
    """1x1 conv to the encoder width; identity when the backbone already has it (Chg2Cap, MCI)."""
    return nn.Identity() if in_channels == d_model else nn.Conv2d(in_channels, d_model, 1)


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform for every matrix / kernel, as the papers' ``_reset_parameters`` do."""
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


class Attention(nn.Module):
    """Multi-head attention whose inner width ``attn_dim`` may differ from the token width.

    Chg2Cap attends in 2048 dimensions over 4096-d concatenated pair tokens, hence the separate width.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, attn_dim: int | None = None):
        super().__init__()
        attn_dim = attn_dim or dim
        if attn_dim % num_heads:
            raise ValueError(f"attention width {attn_dim} is not divisible by {num_heads} heads")
        self.num_heads, self.dropout = num_heads, dropout
        self.q, self.k, self.v = (nn.Linear(dim, attn_dim) for _ in range(3))
        self.out = nn.Linear(attn_dim, dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        """x ``[B, N, dim]`` queries context ``[B, M, dim]`` -> ``[B, N, dim]``."""
        q, k, v = (self._heads(proj(t)) for proj, t in ((self.q, x), (self.k, context), (self.v, context)))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).flatten(2))

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)  # [B, heads, N, head_dim]


class Block(nn.Module):
    """Post-norm transformer layer; self-attention when ``context`` is None, cross-attention otherwise."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float, attn_dim: int | None = None):
        super().__init__()
        self.attn = Attention(dim, num_heads, dropout, attn_dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x = self.norm1(x + self.drop(self.attn(x, x if context is None else context)))
        return self.norm2(x + self.drop(self.ffn(x)))


class Position2d(nn.Module):
    """Learned column and row embeddings (half the channels each), added to a ``[B, C, h, w]`` map.

    The papers size the tables to the one feature map they train on; here they hold ``max_size`` rows
    and columns so one encoder serves any map up to that size.
    """

    def __init__(self, dim: int, max_size: int = 64):
        super().__init__()
        self.max_size = max_size
        self.cols = nn.Embedding(max_size, dim // 2)
        self.rows = nn.Embedding(max_size, dim - dim // 2)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if max(h, w) > self.max_size:
            raise ValueError(
                f"feature map {h}x{w} is larger than the position table ({self.max_size}); "
                "build the encoder with a larger max_size"
            )
        cols = self.cols.weight[None, :w].expand(h, w, -1)
        rows = self.rows.weight[:h, None].expand(h, w, -1)
        return x + torch.cat([cols, rows], -1).permute(2, 0, 1)


def sinusoid(n: int, dim: int, device: torch.device | None = None) -> Tensor:
    """Fixed 1-D sine / cosine positions ``[n, dim]`` (Vaswani et al.), used by SEN."""
    position = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(n, dim, device=device)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return table


class ResBlock(nn.Module):
    """Bottleneck residual conv block: 1x1 (C/2) -> 3x3 -> 1x1 (C), BatchNorm after each, ReLU at the end."""

    def __init__(self, dim: int):
        super().__init__()
        mid = dim // 2
        self.body = nn.Sequential(
            nn.Conv2d(dim, mid, 1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=1), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, dim, 1), nn.BatchNorm2d(dim),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x + self.body(x))


class PairFusion(nn.Module):
    """Fuse two maps into one: ``[A, B]`` (and optionally ``cos(A, B)``) -> 1x1 conv -> :class:`ResBlock`.

    Chg2Cap and MCI do this at the start of their caption decoders; here it ends the encoder so every
    encoder hands the heads one token sequence.
    """

    def __init__(self, dim: int, out_dim: int, cosine: bool):
        super().__init__()
        self.cosine = cosine
        self.proj = nn.Conv2d(2 * dim + int(cosine), out_dim, 1)
        self.res = ResBlock(out_dim)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        parts = [a, b, F.cosine_similarity(a, b, dim=1)[:, None]] if self.cosine else [a, b]
        return self.res(self.proj(torch.cat(parts, 1)))
