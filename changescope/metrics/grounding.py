"""Grounding metrics (text -> change mask).

mIoU is the mean over samples of each sample's IoU; cIoU (cumulative) is the sum of intersections over the
sum of unions, so large targets weigh more. A sample whose prediction and target are both empty scores
IoU 1 (the model correctly found nothing); empty against non-empty scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def grounding_scores(pred_masks: Sequence[Any], target_masks: Sequence[Any]) -> dict[str, Any]:
    """``{"mIoU", "cIoU", "n"}`` of binary masks (non-zero = target), each prediction shaped as its target
    (``metrics.accumulators.GroundingAccumulator`` over a list)."""
    from changescope.metrics.accumulators import GroundingAccumulator

    if len(pred_masks) != len(target_masks):
        raise ValueError(f"{len(pred_masks)} predicted masks for {len(target_masks)} targets")
    scores = GroundingAccumulator()
    for index, (pred, target) in enumerate(zip(pred_masks, target_masks, strict=True)):
        try:
            scores.update(pred, target)
        except ValueError as err:
            raise ValueError(f"sample {index}: {err}") from None
    return scores.compute()
