"""Semantic change segmentation from multi-level features of both dates.

Follows the change-detection branch of MCI (Liu et al., "Change-Agent", IEEE TGRS 2024): at every backbone
level the two dates are fused together with their absolute difference, and a top-down path upsamples the
coarse, change-aware maps and adds the finer ones, so the output has the coarse levels' context and the
fine levels' edges. The deepest level also receives the change encoder's tokens (the features the caption
decoder reads), which is what makes captioning and detection one model with shared change features.

Differs from MCI: a plain FPN-style top-down path (MCI interleaves its bi-temporal iterative interaction
layers with the decoder); |B - A| instead of MCI's learned difference; logits are upsampled bilinearly from
stride 4 rather than through transposed convolutions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ChangeMaskHead(nn.Module):
    """Per-pixel change-class logits from backbone levels (and optionally the change tokens).

    Args:
        level_channels: channels of each backbone level, finest first.
        num_classes: change classes, background (no change) included as class 0; 0 builds the fused
            feature path only (for a model that grounds queries but predicts no change classes).
        channels: width of the fused maps and of the top-down path.
        context_dim: width of the change encoder's tokens added at the deepest level (None: not used).
        two_stream: levels hold both dates (``[B, 2, C, h, w]``); False for a single-stream backbone whose
            levels are already joint (``[B, 1, C, h, w]``).
    """

    def __init__(
        self,
        level_channels: list[int],
        num_classes: int,
        channels: int = 64,
        context_dim: int | None = None,
        two_stream: bool = True,
    ):
        super().__init__()
        if num_classes == 1 or num_classes < 0:
            raise ValueError("a change mask needs at least 2 classes (background and one change class)")
        self.num_classes, self.two_stream = num_classes, two_stream
        streams = 3 if two_stream else 1  # A, B, |B - A|
        self.fuse = nn.ModuleList(_conv_bn_relu(streams * c, channels, 1) for c in level_channels)
        self.context = nn.Conv2d(context_dim, channels, 1) if context_dim else None
        self.smooth = nn.ModuleList(_conv_bn_relu(channels, channels, 3) for _ in level_channels[:-1])
        self.channels = channels
        self.classifier = (
            nn.Sequential(_conv_bn_relu(channels, channels, 3), nn.Conv2d(channels, num_classes, 1))
            if num_classes
            else None
        )

    def _fused(self, index: int, level: Tensor) -> Tensor:
        if self.two_stream:
            a, b = level[:, 0], level[:, 1]
            level = torch.cat([a, b, (b - a).abs()], dim=1)
        else:
            level = level[:, 0]
        return self.fuse[index](level.float())

    def forward(self, levels: list[Tensor], size: tuple[int, int], context: Tensor | None = None) -> Tensor:
        """levels: ``[B, S, C_i, h_i, w_i]`` finest first; context: ``[B, D, h, w]`` at the deepest level's
        size or None -> logits ``[B, num_classes, *size]``."""
        return self.classify(self.decode(levels, context), size)

    def classify(self, fused: Tensor, size: tuple[int, int]) -> Tensor:
        logits = self.classifier(fused)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def decode(self, levels: list[Tensor], context: Tensor | None = None) -> Tensor:
        """The fused change map at the finest level ``[B, channels, h_0, w_0]`` (what the classifier and
        the grounding head read)."""
        if len(levels) != len(self.fuse):
            raise ValueError(f"mask head expects {len(self.fuse)} feature levels, got {len(levels)}")
        x = self._fused(len(levels) - 1, levels[-1])
        if self.context is not None and context is not None:
            x = x + self.context(context)
        for index in range(len(levels) - 2, -1, -1):
            finer = self._fused(index, levels[index])
            x = F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[index](x + finer)
        return x


def mask_loss(logits: Tensor, target: Tensor, ignore_index: int = 255, dice_weight: float = 1.0) -> Tensor:
    """Cross-entropy plus ``dice_weight`` x multi-class soft Dice (over the batch, all classes).

    Dice keeps the small change classes from being drowned by background pixels, which cover most of a
    change-detection image; pixels equal to ``ignore_index`` (pairs without a label) count in neither term.
    """
    valid = (target != ignore_index).unsqueeze(1)
    if not valid.any():  # a batch of unlabelled pairs: cross-entropy would be NaN
        return logits.sum() * 0
    loss = F.cross_entropy(logits, target, ignore_index=ignore_index)
    if dice_weight <= 0:
        return loss
    probs = logits.softmax(dim=1) * valid
    onehot = F.one_hot(target.clamp(max=logits.shape[1] - 1), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    dice = (2 * inter + 1) / (probs.sum(dims) + onehot.sum(dims) + 1)
    return loss + dice_weight * (1 - dice.mean())
