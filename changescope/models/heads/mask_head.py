"""Semantic change segmentation from multi-level features of both dates.

Follows the change-detection branch of MCI (Liu et al., "Change-Agent", IEEE TGRS 2024): at every backbone
level the two dates are fused together with their absolute difference, and a top-down path upsamples the
coarse, change-aware maps and adds the finer ones, so the output has the coarse levels' context and the
fine levels' edges. The deepest level also receives the change encoder's tokens (the features the caption
decoder reads), which is what makes captioning and detection one model with shared change features.

Differs from MCI: a plain FPN-style top-down path (MCI interleaves its bi-temporal iterative interaction
layers with the decoder); |B - A| instead of MCI's learned difference; logits are upsampled bilinearly from
stride 4 rather than through transposed convolutions.

A second instance with ``binary=True`` and no classes is the model's *change head*: it predicts
*whether* a pixel changed (one logit), separately from *what* it became (the class logits). Real
change-detection data mostly has binary labels (LEVIR-CD, WHU-CD, OSCD, SZTAKI...), so the change /
no-change decision can learn from every dataset while the classes learn from the data that names them,
and a trained model's class head (and the grounding head, which reads its fused map) stay as they were
when a change head is added and fine-tuned on real pairs. ``compose`` turns the two into one score map
whose argmax is "no change" where P(change) <= 0.5 and otherwise the most likely change class, so every
consumer of class scores (argmax, tile blending) stays the same.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from changescope.data.sample import UNKNOWN_CHANGE


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
        binary: add the change / no-change logit (see the module docstring); with ``num_classes=0`` it is
            the only output.
        class_inputs: channels of further inputs the change logit reads beside the fused map (a change
            head reads the class head's log-probabilities, so where the class head is sure, e.g. on imagery
            like its training data, the change head can follow it).
    """

    def __init__(
        self,
        level_channels: list[int],
        num_classes: int,
        channels: int = 64,
        context_dim: int | None = None,
        two_stream: bool = True,
        binary: bool = False,
        class_inputs: int = 0,
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
        self.class_inputs = class_inputs
        self.binary = (
            nn.Sequential(_conv_bn_relu(channels + class_inputs, channels, 3), nn.Conv2d(channels, 1, 1))
            if binary
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

    def classify(self, fused: Tensor, size: tuple[int, int], extra: Tensor | None = None) -> Tensor:
        """Class logits ``[B, K, *size]``, then the change logit as one more channel when ``binary``."""
        return upsample(self.logits(fused, extra), size)

    def logits(self, fused: Tensor, extra: Tensor | None = None) -> Tensor:
        """``classify`` at the fused map's resolution; ``extra``: the ``class_inputs`` channels."""
        parts = [self.classifier(fused)] if self.classifier is not None else []
        if self.binary is not None:
            if self.class_inputs:
                if extra is None:
                    raise ValueError(f"this change head reads {self.class_inputs} class channels; none given")
                fused = torch.cat([fused, extra.to(fused.dtype)], dim=1)
            parts.append(self.binary(fused))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

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


def upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def compose(class_logits: Tensor, change_logit: Tensor | None, threshold: float = 0.5) -> Tensor:
    """One score map ``[B, K, H, W]`` from class logits and an optional change logit.

    Background scores log P(no change); class k scores log P(change) + log q_k - max_j log q_j, where q is
    the softmax over the change classes only. So the argmax is background exactly where P(change) <= 0.5,
    and otherwise the most likely change class; the softmax of the map is a usable per-class weight for
    blending overlapping tiles. Without a change logit the class logits are returned as they are.
    ``threshold`` moves the decision to P(change) > threshold (a model's calibrated
    ``config.change_threshold``), by shifting the change logit by logit(threshold).
    """
    if change_logit is None:
        return class_logits
    change = change_logit.float().unsqueeze(1)
    if threshold != 0.5:
        change = change - math.log(threshold / (1 - threshold))
    log_q = class_logits[:, 1:].float().log_softmax(dim=1)
    log_q = log_q - log_q.amax(dim=1, keepdim=True)
    return torch.cat([F.logsigmoid(-change), F.logsigmoid(change) + log_q], dim=1)


def mask_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    dice_weight: float = 1.0,
    change_logit: Tensor | None = None,
) -> Tensor:
    """Cross-entropy plus ``dice_weight`` x multi-class soft Dice (over the batch, all classes), plus the
    same pair of terms for the change logit when there is one.

    Dice keeps the small change classes from being drowned by background pixels, which cover most of a
    change-detection image; pixels equal to ``ignore_index`` (pairs without a label) count in no term.
    ``UNKNOWN_CHANGE`` pixels (changed, class not given) count as change for the change logit and in
    neither class term.
    """
    if change_logit is not None:
        return _class_loss(
            logits, target.masked_fill(target == UNKNOWN_CHANGE, ignore_index), ignore_index, dice_weight
        ) + binary_loss(change_logit, target, ignore_index, dice_weight)
    return _class_loss(logits, target, ignore_index, dice_weight)


def binary_loss(change_logit: Tensor, target: Tensor, ignore_index: int = 255, dice_weight: float = 1.0):
    """BCE + ``dice_weight`` x soft Dice of the change class, over labelled pixels (target 0 = no change,
    anything else but ``ignore_index`` = change)."""
    valid = target != ignore_index
    if not valid.any():
        return change_logit.sum() * 0
    changed = ((target > 0) & valid).float()
    logit = change_logit.float()
    loss = F.binary_cross_entropy_with_logits(logit[valid], changed[valid])
    if dice_weight <= 0:
        return loss
    probs = logit.sigmoid() * valid
    dice = (2 * (probs * changed).sum() + 1) / (probs.sum() + changed.sum() + 1)
    return loss + dice_weight * (1 - dice)


def _class_loss(logits: Tensor, target: Tensor, ignore_index: int, dice_weight: float) -> Tensor:
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
