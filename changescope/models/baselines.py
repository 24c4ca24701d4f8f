"""Trivial caption baselines every model must beat by a wide margin.

* ``most_common_caption``: always predict the most frequent training caption (after ``normalize``).
* ``nearest_pair_captions``: predict the first caption of the training pair whose change image
  ``|B - A|`` (downsampled to ``size`` x ``size``) is nearest in L2: a retrieval baseline that sees pixels.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image

from changescope.data.readers.base import CaptionPairDataset
from changescope.data.text import normalize


def most_common_caption(train: CaptionPairDataset) -> str:
    counts = Counter(normalize(c) for entry in train.entries for c in entry.captions)
    if not counts:
        raise ValueError("the training split has no captions")
    return min(counts, key=lambda c: (-counts[c], c))


def _difference_features(dataset: CaptionPairDataset, size: int) -> np.ndarray:
    feats = np.empty((len(dataset), size * size * 3), np.float32)
    for i, entry in enumerate(dataset.entries):
        a, b = (
            np.asarray(Image.fromarray(x).resize((size, size), Image.BILINEAR), np.float32)
            for x in dataset.read_images(entry)
        )
        feats[i] = np.abs(b - a).ravel()
    return feats


def nearest_pair_captions(
    train: CaptionPairDataset, test: CaptionPairDataset, size: int = 32
) -> dict[str, str]:
    """Map each test pair id to the first caption of its nearest training pair."""
    train_feats = _difference_features(train, size)
    test_feats = _difference_features(test, size)
    # squared L2 via the expansion, in blocks to bound memory on large splits
    train_sq = (train_feats**2).sum(1)
    predictions = {}
    for start in range(0, len(test_feats), 256):
        block = test_feats[start : start + 256]
        dist = train_sq[None, :] - 2 * block @ train_feats.T
        for row, j in enumerate(dist.argmin(1)):
            entry = test.entries[start + row]
            predictions[entry.id] = train.entries[int(j)].captions[0]
    return predictions
