"""Grounding metrics (text -> change mask) and connected components of a mask.

mIoU is the mean over samples of each sample's IoU; cIoU (cumulative) is the sum of intersections over the
sum of unions, so large targets weigh more. A sample whose prediction and target are both empty scores
IoU 1 (the model correctly found nothing); empty against non-empty scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

#: half of the 8-neighbourhood: right, down, down-right, down-left (each edge is listed once)
_OFFSETS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _binary(mask: Any) -> np.ndarray:
    array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return array != 0


def grounding_scores(pred_masks: Sequence[Any], target_masks: Sequence[Any]) -> dict[str, Any]:
    """``{"mIoU", "cIoU", "n"}`` of binary masks (non-zero = target), each prediction shaped as its target."""
    if len(pred_masks) != len(target_masks):
        raise ValueError(f"{len(pred_masks)} predicted masks for {len(target_masks)} targets")
    if len(target_masks) == 0:
        raise ValueError("no masks to score")
    ious = []
    inter_total = union_total = 0
    for index, (pred, target) in enumerate(zip(pred_masks, target_masks, strict=True)):
        pred_b, target_b = _binary(pred), _binary(target)
        if pred_b.shape != target_b.shape:
            raise ValueError(
                f"sample {index}: predicted mask {pred_b.shape} differs from target {target_b.shape}"
            )
        inter = int(np.logical_and(pred_b, target_b).sum())
        union = int(np.logical_or(pred_b, target_b).sum())
        ious.append(inter / union if union else 1.0)
        inter_total += inter
        union_total += union
    return {
        "mIoU": sum(ious) / len(ious),
        "cIoU": inter_total / union_total if union_total else 1.0,
        "n": len(ious),
    }


def _edges(fg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices ``(u, v)`` of every pair of 8-adjacent foreground pixels."""
    h, w = fg.shape
    index = np.arange(h * w).reshape(h, w)
    us, vs = [], []
    for dy, dx in _OFFSETS:
        src = (slice(0, h - dy), slice(max(0, -dx), w - max(0, dx)))
        dst = (slice(dy, h), slice(max(0, dx), w - max(0, -dx)))
        both = fg[src] & fg[dst]
        us.append(index[src][both])
        vs.append(index[dst][both])
    return np.concatenate(us), np.concatenate(vs)


def label_components(mask: Any) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of a 2-D mask (non-zero = foreground).

    Returns ``(labels, n)``: int64 labels of the mask's shape, 0 = background and 1..n numbered in raster
    order of each component's first pixel. Vectorised union-find: every round hooks the larger root of each
    edge whose ends disagree onto the smaller one, then compresses paths, so a component's root ends as its
    smallest (first) pixel index and the rounds needed grow with log(component size), not its diameter.
    """
    fg = _binary(mask)
    if fg.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {fg.shape}")
    parent = np.arange(fg.size)
    u, v = _edges(fg)
    while u.size:
        ru, rv = parent[u], parent[v]
        differ = ru != rv
        u, v, ru, rv = u[differ], v[differ], ru[differ], rv[differ]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
        while True:  # path compression: afterwards every pixel points straight at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    labels = np.zeros(fg.shape, dtype=np.int64)
    pixels = np.flatnonzero(fg)
    roots, inverse = np.unique(parent[pixels], return_inverse=True)
    labels.flat[pixels] = inverse.reshape(-1) + 1
    return labels, int(roots.size)


def boxes_from_mask(mask: Any, min_pixels: int = 1) -> list[tuple[float, float, float, float]]:
    """Boxes ``(x0, y0, x1, y1)`` in [0, 1] of the 8-connected components with >= ``min_pixels`` pixels.

    Coordinates are pixel edges divided by width / height, so a component covering the whole image is
    ``(0, 0, 1, 1)`` and a single pixel at (row 0, col 0) of a W x H mask is ``(0, 0, 1/W, 1/H)``. Boxes come
    in raster order of each component's first pixel.
    """
    labels, n = label_components(mask)
    if n == 0:
        return []
    h, w = labels.shape
    ys, xs = np.nonzero(labels)
    comp = labels[ys, xs] - 1
    size = np.bincount(comp, minlength=n)
    y0 = np.full(n, h)
    x0 = np.full(n, w)
    y1 = np.full(n, -1)
    x1 = np.full(n, -1)
    np.minimum.at(y0, comp, ys)
    np.minimum.at(x0, comp, xs)
    np.maximum.at(y1, comp, ys)
    np.maximum.at(x1, comp, xs)
    return [
        (float(x0[i] / w), float(y0[i] / h), float((x1[i] + 1) / w), float((y1[i] + 1) / h))
        for i in range(n)
        if size[i] >= min_pixels
    ]
