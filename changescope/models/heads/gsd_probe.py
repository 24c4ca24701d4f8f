"""Is this pair coarse satellite imagery? A linear probe on the backbone's pooled features.

A model with a second change head for coarse imagery (``config.coarse_gsd``) needs the ground sampling
distance to pick a head, and plain PNGs carry none. The scale of what an image shows is visible in it:
10 m Sentinel-2 or 30 m Landsat tiles hold no roofs, cars or road markings, only blurred blocks and
fields, which the backbone's deepest levels summarise well. So the probe reads the mean and standard
deviation over space of the last two backbone levels (both dates averaged) and gives one logit, > 0 for
imagery of ``coarse_gsd`` or coarser. It is fitted after the rest of the model, by logistic regression on
the training tiles whose GSD is known (``benchmarks/fit_gsd_probe.py``), with the features' standardisation
folded into its weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def pooled_features(levels: list[Tensor]) -> Tensor:
    """``[B, 2 * (C_-2 + C_-1)]``: mean and standard deviation over space of the last two levels
    (``[B, S, C, h, w]``), averaged over the dates."""
    parts = []
    for level in levels[-2:]:
        level = level.float()
        parts += [level.mean((-2, -1)).mean(1), level.std((-2, -1), correction=0).mean(1)]
    return torch.cat(parts, dim=1)


class GsdProbe(nn.Module):
    """Logit of "coarse imagery" ``[B]`` from backbone levels (``pooled_features``)."""

    def __init__(self, level_channels: list[int]):
        super().__init__()
        self.linear = nn.Linear(2 * sum(level_channels[-2:]), 1)

    def forward(self, levels: list[Tensor]) -> Tensor:
        return self.linear(pooled_features(levels))[:, 0]


def fit_probe(features: Tensor, coarse: Tensor, l2: float = 0.02, steps: int = 100) -> tuple[Tensor, Tensor]:
    """Logistic regression of ``coarse`` ``[N]`` (bool) on ``features`` ``[N, F]`` (``pooled_features``):
    classes weighted to count the same, ``l2`` x the squared weights added to the mean loss, fitted on
    standardised features by L-BFGS. Returns ``(weight [F], bias [])`` for the raw features, the
    standardisation folded in."""
    x = features.double()
    y = coarse.double()
    if not 0 < y.sum() < len(y):
        raise ValueError("fitting the GSD probe needs both coarse and fine examples")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    # each class weighs half of the loss, however many examples it has
    sample_weight = torch.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        bce = nn.functional.binary_cross_entropy_with_logits(z @ w + b, y, weight=sample_weight)
        loss = bce + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    weight = (w / std).detach()
    return weight.float(), (b - (weight * mean).sum()).detach().float()
