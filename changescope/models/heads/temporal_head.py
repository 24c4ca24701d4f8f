"""Change per interval from T dates: attention over time at every location, asked once per interval.

A pair model decides "changed between date i and i + 1" from those two dates alone, so a cloud, a hazy
date or one misregistered date reads as two changes (it comes, then goes). This head sees every date.
Following U-TAE (Garnot & Landrieu, "Panoptic segmentation of satellite image time series with
convolutional temporal attention networks", ICCV 2021), it attends over time per location of a coarse
feature map (the frozen backbone's stride-16 level, with the stride-32 level added) and keeps the fine
levels for the spatial detail. Where U-TAE pools the series into one map, change needs an answer per
interval: for interval i every date token gets a learned embedding of its offset from the interval
(``t - i``, clipped), so "the dates after i all differ from those before" and "only date i + 1 differs"
are different patterns; a transformer encoder over those T tokens is read out at dates i and i + 1.
The offsets are relative, so one head serves any T from 2 to ``max_dates``.

The per-interval vector is then refined spatially and upsampled with the finest level's difference
``|f(i + 1) - f(i)|`` (stride 4), which places edges. Output: one change logit per interval and pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class TemporalChangeHead(nn.Module):
    """``levels`` (backbone levels, finest first, each ``[B, T, C, h, w]``) -> change logits
    ``[B, T - 1, h0, w0]`` at the finest level's size."""

    def __init__(
        self,
        channels: list[int],
        d_model: int = 32,
        num_layers: int = 2,
        num_heads: int = 4,
        max_offset: int = 4,
        fine_channels: int = 16,
        dropout: float = 0.1,
    ):
        super().__init__()
        self.max_offset = max_offset
        self.coarse = nn.Conv2d(channels[-2], d_model, 1)
        self.deep = nn.Conv2d(channels[-1], d_model, 1)
        self.context = _block(d_model, d_model)
        self.offsets = nn.Embedding(2 * max_offset + 2, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, 2 * d_model, dropout, batch_first=True, norm_first=True
        )
        self.time = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.readout = nn.Sequential(nn.Linear(2 * d_model, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.middle = nn.Conv2d(channels[-3], fine_channels, 1)
        self.fine = nn.Conv2d(channels[0], fine_channels, 1)
        self.refine = _block(d_model + fine_channels, d_model)
        self.sharpen = _block(d_model + fine_channels, fine_channels)
        self.classifier = nn.Conv2d(fine_channels, 1, 1)

    def offset_ids(self, dates: int, device: torch.device) -> Tensor:
        """``[T - 1, T]`` embedding ids of each date's offset from each interval: ``t - i`` clipped to
        ``[-max_offset, max_offset + 1]`` (``+1`` is the interval's later date)."""
        t = torch.arange(dates, device=device)
        i = torch.arange(dates - 1, device=device)
        return (t[None, :] - i[:, None]).clamp(-self.max_offset, self.max_offset + 1) + self.max_offset

    def interval_tokens(self, levels: list[Tensor]) -> Tensor:
        """``[B, T - 1, d, h, w]`` at the coarse level: each interval's reading of the whole series."""
        coarse, deep = levels[-2], levels[-1]
        b, t, _, h, w = coarse.shape
        x = self.coarse(coarse.flatten(0, 1).float())
        x = x + F.interpolate(self.deep(deep.flatten(0, 1).float()), size=(h, w), mode="nearest")
        x = self.context(x)  # [B*T, d, h, w]
        d = x.shape[1]
        tokens = x.reshape(b, t, d, h * w).permute(0, 3, 1, 2).reshape(b * h * w, t, d)
        ids = self.offset_ids(t, x.device)  # [T-1, T]
        queries = tokens[:, None] + self.offsets(ids)[None]  # [BHW, T-1, T, d]
        mixed = self.time(queries.flatten(0, 1)).reshape(b * h * w, t - 1, t, d)
        steps = torch.arange(t - 1, device=x.device)
        pair = torch.cat([mixed[:, steps, steps], mixed[:, steps, steps + 1]], dim=-1)  # [BHW, T-1, 2d]
        out = self.readout(pair)
        return out.reshape(b, h, w, t - 1, d).permute(0, 3, 4, 1, 2)

    @staticmethod
    def _differences(level: Tensor, proj: nn.Module) -> Tensor:
        """``|proj(f(i + 1)) - proj(f(i))|`` per interval, ``[B * (T - 1), c, h, w]``."""
        b, t = level.shape[:2]
        x = proj(level.flatten(0, 1).float())
        x = x.reshape(b, t, *x.shape[1:])
        return (x[:, 1:] - x[:, :-1]).abs().flatten(0, 1)

    def forward(self, levels: list[Tensor]) -> Tensor:
        b, t = levels[0].shape[:2]
        z = self.interval_tokens(levels).flatten(0, 1)  # [B*(T-1), d, h, w]
        middle = self._differences(levels[-3], self.middle)
        z = F.interpolate(z, size=middle.shape[-2:], mode="bilinear", align_corners=False)
        z = self.refine(torch.cat([z, middle], dim=1))
        fine = self._differences(levels[0], self.fine)
        z = F.interpolate(z, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.classifier(self.sharpen(torch.cat([z, fine], dim=1)))
        return logits.reshape(b, t - 1, *logits.shape[-2:])


def temporal_loss(logits: Tensor, target: Tensor, ignore_index: int, dice_weight: float = 0.5) -> Tensor:
    """BCE + soft Dice on change per interval: ``logits`` ``[B, T-1, H, W]``, ``target`` 0 / 1 /
    ``ignore_index`` of the same shape (class ids already made binary)."""
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0
    y = (target == 1).float()
    bce = F.binary_cross_entropy_with_logits(logits[valid], y[valid])
    p = logits.sigmoid() * valid
    y = y * valid
    dice = 1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)
    return bce + dice_weight * dice
