"""Small helpers shared by the model modules."""

from __future__ import annotations

from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters in ``module`` (shared tensors counted once).

    ``trainable_only`` counts only parameters with ``requires_grad`` (a frozen backbone then counts 0).
    """
    # .parameters() already yields a tensor shared between sub-modules once
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
