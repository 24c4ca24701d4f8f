"""The one sample dict every task uses (DESIGN.md section 3), and how samples become a batch.

Keys of a sample:

``image``
    float tensor ``[T, C, H, W]`` in [0, 1]; T = 2 for a pair (A earlier, B later), T > 2 for a series.
``mask``
    long tensor ``[H, W]`` of semantic change classes (LEVIR-MCI: 0 background, 1 road, 2 building).
``captions``
    list of reference sentences (raw text, as the dataset spells them).
``changed``
    bool: the dataset's change flag, or derived from the captions when it has none.
optional
    ``id`` (str), ``question``, ``answer``, ``qtype`` (str), ``boxes`` (float ``[N, 4]``, xyxy in [0, 1]),
    ``times`` (list of ISO dates), ``semantic`` (long ``[T, H, W]`` land-cover maps per date),
    ``interval_masks`` (long ``[T-1, H, W]``: interval i is the change from date i to date i + 1, 0 none,
    else a class id, ``IGNORE_INDEX`` unlabelled; time-series readers, ``readers/timeseries.py``),
    ``crs``, ``transform``, ``window`` (scene tiles).

A batch has the same keys: tensors of equal shape are stacked (``image`` -> ``[B, T, C, H, W]``; sequences
of one T, so ``interval_masks`` -> ``[B, T-1, H, W]``),
``changed`` becomes a bool tensor ``[B]``, everything else a list of length B.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

Sample = dict[str, Any]

IMAGE = "image"
MASK = "mask"
CAPTIONS = "captions"
CHANGED = "changed"
INTERVAL_MASKS = "interval_masks"

_STACKED = ("image", "mask", "semantic", INTERVAL_MASKS)

#: ``mask`` value of a pixel without a label (losses and metrics skip it)
IGNORE_INDEX = 255
#: ``mask`` value of a changed pixel whose class is not known (binary change labels mixed into class data)
UNKNOWN_CHANGE = 254
#: the classes of binary change-detection data
BINARY_CLASSES = ("background", "change")


def validate_sample(sample: Sample) -> Sample:
    """Check the contract; raise ``ValueError`` naming the key that breaks it."""
    image = sample.get(IMAGE)
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        raise ValueError("sample['image'] must be a float tensor [T, C, H, W]")
    if image.shape[0] < 2:
        raise ValueError(f"sample['image'] has T={image.shape[0]}; a change needs at least 2 dates")
    height, width = image.shape[-2:]
    mask = sample.get(MASK)
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.long or mask.ndim != 2:
            raise ValueError("sample['mask'] must be a long tensor [H, W]")
        if tuple(mask.shape) != (height, width):
            raise ValueError(f"sample['mask'] is {tuple(mask.shape)}, image is {(height, width)}")
    intervals = sample.get(INTERVAL_MASKS)
    if intervals is not None:
        expected = (image.shape[0] - 1, height, width)
        if not isinstance(intervals, torch.Tensor) or intervals.dtype != torch.long or intervals.ndim != 3:
            raise ValueError("sample['interval_masks'] must be a long tensor [T-1, H, W]")
        if tuple(intervals.shape) != expected:
            raise ValueError(
                f"sample['interval_masks'] is {tuple(intervals.shape)}; [T-1, H, W] is {expected}"
            )
    captions = sample.get(CAPTIONS)
    if captions is not None and not (
        isinstance(captions, list) and all(isinstance(c, str) for c in captions)
    ):
        raise ValueError("sample['captions'] must be a list of str")
    if CHANGED in sample and not isinstance(sample[CHANGED], bool):
        raise ValueError("sample['changed'] must be a bool")
    boxes = sample.get("boxes")
    if boxes is not None and (not isinstance(boxes, torch.Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4):
        raise ValueError("sample['boxes'] must be a float tensor [N, 4] (xyxy in [0, 1])")
    return sample


def collate(samples: Sequence[Sample]) -> Sample:
    """Batch samples; use as ``DataLoader(collate_fn=collate)``."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    keys = set(samples[0])
    for sample in samples[1:]:
        if set(sample) != keys:
            missing = sorted(keys.symmetric_difference(sample))
            raise ValueError(f"samples in one batch have different keys: {missing}")
    batch: Sample = {}
    for key in sorted(keys):
        values = [s[key] for s in samples]
        if key in _STACKED and all(v is not None for v in values):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) != 1:
                raise ValueError(f"cannot stack '{key}' of shapes {sorted(shapes)}; resize first")
            batch[key] = torch.stack(values)
        elif key == CHANGED:
            batch[key] = torch.tensor(values, dtype=torch.bool)
        else:
            batch[key] = values
    return batch
