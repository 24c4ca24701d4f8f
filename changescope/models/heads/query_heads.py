"""Heads that read a question (or a grounding query) together with the change features.

* ``QueryFusion``: the question's tokens attend to the change tokens (cross attention, as in CDVQA-Net
  and VisTA's reasoning decoder), giving question-aware tokens and one pooled vector.
* ``AnswerHead``: from the pooled vector, the question type and a closed-vocabulary answer. At
  inference the answer is chosen among the answers seen with the predicted type, so a yes/no question
  never gets "buildings".
* ``GroundingHead``: a text-conditioned mask decoder. The pooled query modulates (FiLM: per-channel scale
  and shift) the mask head's finest fused map of both dates, and a query-specific 1x1 kernel turns it into
  one logit per pixel (VisTA predicts its answer mask from the question the same way, through a decoder
  conditioned on the text). An empty mask means "no such change".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QueryFusion(nn.Module):
    def __init__(
        self, text_dim: int, d_model: int, num_layers: int = 2, num_heads: int = 8, dropout: float = 0.1
    ):
        super().__init__()
        self.proj = nn.Linear(text_dim, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                d_model, num_heads, 4 * d_model, dropout=dropout, batch_first=True, norm_first=True
            )
            for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, text: Tensor, pad: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        """text ``[N, L, E]``, pad ``[N, L]`` (True = padding), memory ``[N, M, D]`` (the change tokens of
        each question's pair) -> question-aware tokens ``[N, L, D]`` and their masked mean ``[N, D]``."""
        x = self.proj(text)
        for layer in self.layers:
            x = layer(x, memory, tgt_key_padding_mask=pad)
        x = self.norm(x)
        keep = (~pad).unsqueeze(-1).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1)
        return x, pooled


class AnswerHead(nn.Module):
    def __init__(self, d_model: int, num_types: int, num_answers: int, dropout: float = 0.1):
        super().__init__()
        self.types = nn.Linear(d_model, num_types)
        self.answers = nn.Sequential(
            nn.Linear(d_model, 2 * d_model),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * d_model, num_answers),
        )

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor]:
        return self.types(pooled), self.answers(pooled)


class GroundingHead(nn.Module):
    def __init__(self, d_model: int, channels: int):
        super().__init__()
        self.film = nn.Linear(d_model, 2 * channels)
        self.kernel = nn.Linear(d_model, channels + 1)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU()
        )

    def forward(self, pixels: Tensor, pooled: Tensor, size: tuple[int, int]) -> Tensor:
        """pixels ``[N, C, h, w]`` (each query's pair), pooled ``[N, D]`` -> logits ``[N, *size]``."""
        scale, shift = self.film(pooled)[:, :, None, None].chunk(2, dim=1)
        x = self.conv(pixels * (1 + scale) + shift)
        kernel = self.kernel(pooled)
        logits = torch.einsum("nchw,nc->nhw", x, kernel[:, :-1]) + kernel[:, -1, None, None]
        return F.interpolate(logits[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def grounding_loss(logits: Tensor, target: Tensor, dice_weight: float = 1.0) -> Tensor:
    """Binary cross-entropy plus ``dice_weight`` x soft Dice over the queries whose target is not empty.

    Negative queries (empty target: the change did not happen) are taught by the cross-entropy alone;
    Dice is undefined-ish on them (any prediction of an empty target scores the smoothing constant).
    """
    target = target.float()
    loss = F.binary_cross_entropy_with_logits(logits, target)
    positive = target.flatten(1).any(1)
    if dice_weight <= 0 or not positive.any():
        return loss
    probs = logits[positive].sigmoid().flatten(1)
    goal = target[positive].flatten(1)
    dice = (2 * (probs * goal).sum(1) + 1) / (probs.sum(1) + goal.sum(1) + 1)
    return loss + dice_weight * (1 - dice.mean())
