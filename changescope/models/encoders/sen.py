"""SEN's difference encoder on a single-stream extractor (CAGD blocks).

Zhou et al., "Single-Stream Extractor Network With Contrastive Pre-Training for Remote Sensing Change
Captioning", IEEE TGRS 2024 (code: mrazhou/SEN, ``modules/SEN.py``: ``DiffEncoder`` and ``CAGD``).

Idea: one backbone sees both dates at once as a 6-channel image, so its map is already joint. The dates
are told apart again by a shallow embedding of each raw image, which gates the joint map's channels
(channel attention from average- and max-pooled embeddings). Each CAGD block ("cross-attention-guided
differencing") lets the A and B streams read the joint map by cross-attention, takes their difference
B - A, refines it with self-attention and adds it to the joint map.

Convention: ``single_stream = True``; call ``forward(feat_ab, None, images=pair)`` with ``feat_ab`` the
backbone map of ``concat(A, B)`` (``Backbone(..., in_chans=6)``) and ``pair`` that same
``[B, 2 * image_channels, H, W]`` input in [0, 1]. The raw pair is needed because the date streams come
from the pixels, as in the paper.

Where ours differs: the shallow embedding average-pools each image to the map's size and applies a 1x1
conv, where the code samples pixels with a strided 1x1 conv (stride 32, tied to the backbone stage);
pooling works for any backbone stride. The 1x1 projection to d_model sits here, where the code keeps it
in the extractor. Paper sizes: ``d_model=512, num_layers=2, num_heads=8``, feed-forward 2 * d_model.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from changescope.models.encoders.base import ChangeEncoder
from changescope.models.encoders.layers import Attention, Block, projection, sinusoid, to_tokens, xavier_init


class ChannelGate(nn.Module):
    """Channel attention: a shared MLP on the average- and max-pooled ``guide`` scales ``x``'s channels."""

    def __init__(self, dim: int, reduction: int = 16):
        super().__init__()
        hidden = max(dim // reduction, 1)
        self.mlp = nn.Sequential(
            nn.Conv2d(dim, hidden, 1, bias=False), nn.ReLU(), nn.Conv2d(hidden, dim, 1, bias=False)
        )

    def forward(self, guide: Tensor, x: Tensor) -> Tensor:
        avg, peak = guide.mean((2, 3), keepdim=True), guide.amax((2, 3), keepdim=True)
        return (self.mlp(avg) + self.mlp(peak)).sigmoid() * x


class CAGD(nn.Module):
    """The A and B streams read the joint map; their difference, self-attended, is added to it."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.read_a = Block(dim, num_heads, 2 * dim, dropout)
        self.read_b = Block(dim, num_heads, 2 * dim, dropout)
        self.attn = Attention(dim, num_heads, dropout)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, a: Tensor, b: Tensor, joint: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, b = self.read_a(a, joint), self.read_b(b, joint)
        diff = b - a
        diff = self.norm(diff + self.drop(self.attn(diff, diff)))
        return a, b, joint + diff


class SENEncoder(ChangeEncoder):
    """Difference encoder for a single-stream (6-channel) backbone map.

    Args (beyond the common ones):
        image_channels: channels of one date in ``images`` (3 for RGB).

    Output: ``[B, h*w, d_model]``.
    """

    single_stream = True

    def __init__(
        self,
        in_channels: int,
        d_model: int = 512,
        num_layers: int = 2,
        num_heads: int = 8,
        dropout: float = 0.1,
        image_channels: int = 3,
    ):
        super().__init__(in_channels, d_model, num_layers, num_heads, dropout)
        self.image_channels = image_channels
        self.proj = projection(in_channels, d_model)
        self.embed = nn.Conv2d(image_channels, d_model, 1)  # shallow embedding, shared by both dates
        self.gate_a, self.gate_b = ChannelGate(d_model), ChannelGate(d_model)
        self.layers = nn.ModuleList(CAGD(d_model, num_heads, dropout) for _ in range(num_layers))
        xavier_init(self)

    def forward(
        self, feat_ab: Tensor, feat_b: Tensor | None = None, *, images: Tensor | None = None
    ) -> Tensor:
        """feat_ab ``[B, in_channels, h, w]``, None, images ``[B, 2 * image_channels, H, W]`` -> tokens."""
        if feat_b is not None:
            raise ValueError("SEN is single-stream: pass the map of concat(A, B) and None, not two maps")
        pair = f"[B, {2 * self.image_channels}, H, W] (A and B stacked)"
        if images is None or images.ndim != 4 or images.shape[1] != 2 * self.image_channels:
            got = None if images is None else tuple(images.shape)
            raise ValueError(f"SEN needs images={pair}, got {got}")
        if feat_ab.ndim != 4 or feat_ab.shape[1] != self.in_channels:
            expected = f"[B, {self.in_channels}, h, w]"
            raise ValueError(f"expected a feature map {expected}, got {tuple(feat_ab.shape)}")
        joint = self.proj(feat_ab)
        small = F.adaptive_avg_pool2d(images, joint.shape[-2:])
        image_a, image_b = small.split(self.image_channels, 1)
        pos = sinusoid(joint.shape[-2] * joint.shape[-1], self.d_model, joint.device).to(joint.dtype)
        a = to_tokens(self.gate_a(self.embed(image_a), joint)) + pos
        b = to_tokens(self.gate_b(self.embed(image_b), joint)) + pos
        joint = to_tokens(joint) + pos
        for layer in self.layers:
            a, b, joint = layer(a, b, joint)
        return joint
