"""Trivial and classical baselines every model must beat by a wide margin.

* ``most_common_caption``: always predict the most frequent training caption (after ``normalize``).
* ``nearest_pair_captions``: predict the first caption of the training pair whose change image
  ``|B - A|`` (downsampled to ``size`` x ``size``) is nearest in L2: a retrieval baseline that sees pixels.
* ``DifferenceBaseline``: classical change detection, a thresholded pixel difference cleaned with
  morphology, its threshold tuned on training pairs.
* ``QuestionPrior``: change VQA without looking at the images: the most common training answer of the
  question's type (the type is given, as CDVQA's and VisTA's per-type priors are).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from changescope.data.readers.base import CaptionPairDataset
from changescope.data.sample import IGNORE_INDEX
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


def _erode(x: torch.Tensor, k: int) -> torch.Tensor:
    return -F.max_pool2d(-x, k, stride=1, padding=k // 2)


def _dilate(x: torch.Tensor, k: int) -> torch.Tensor:
    return F.max_pool2d(x, k, stride=1, padding=k // 2)


class DifferenceBaseline:
    """Change mask from ``|B - A|``: per-pixel Euclidean RGB distance (in [0, 1] units) above a threshold,
    then a morphological opening (removes speckle) and closing (fills holes) with a ``kernel`` square.

    Pixel differences cannot tell a road from a building, so every changed pixel gets ``change_class``
    (by default the most frequent change class of the training masks). ``fit`` picks the threshold that
    maximises the binary change IoU over training pairs: the baseline gets the same data as the model.
    """

    def __init__(self, threshold: float = 0.2, kernel: int = 5, change_class: int = 1):
        self.threshold, self.kernel, self.change_class = threshold, kernel, change_class

    def change_map(self, pair: torch.Tensor) -> torch.Tensor:
        """``[2, 3, H, W]`` in [0, 1] -> per-pixel distance ``[H, W]``."""
        return (pair[1] - pair[0]).pow(2).sum(0).sqrt()

    def clean(self, binary: torch.Tensor) -> torch.Tensor:
        x = binary.float()[None, None]
        k = self.kernel
        x = _dilate(_erode(x, k), k)  # opening
        x = _erode(_dilate(x, k), k)  # closing
        return x[0, 0] > 0.5

    def predict(self, pair: torch.Tensor) -> torch.Tensor:
        """Class ids ``[H, W]`` (0 or ``change_class``)."""
        changed = self.clean(self.change_map(pair) > self.threshold)
        return changed.long() * self.change_class

    def fit(
        self, train: CaptionPairDataset, pairs: int = 200, grid: tuple[float, ...] | None = None
    ) -> DifferenceBaseline:
        grid = grid or tuple(np.round(np.arange(0.04, 0.62, 0.02), 2))
        counts = np.zeros(len(train.classes), np.int64)
        inter, union = np.zeros(len(grid)), np.zeros(len(grid))
        for index in np.linspace(0, len(train) - 1, min(pairs, len(train))).astype(int):
            sample = train[int(index)]
            if "mask" not in sample:
                continue
            labelled = sample["mask"] != IGNORE_INDEX  # sparse labels (Landsat) leave most pixels out
            target = (sample["mask"] > 0) & labelled
            counts += np.bincount(sample["mask"][labelled].numpy(), minlength=len(counts))[: len(counts)]
            distance = self.change_map(sample["image"])
            for i, threshold in enumerate(grid):
                pred = self.clean(distance > threshold) & labelled
                inter[i] += (pred & target).sum().item()
                union[i] += (pred | target).sum().item()
        if not counts[1:].any():
            raise ValueError("no changed pixels in the training masks to fit the baseline on")
        self.threshold = float(grid[int(np.argmax(inter / np.maximum(union, 1)))])
        self.change_class = int(np.argmax(counts[1:]) + 1)
        return self


class QuestionPrior:
    """The most common training answer per question type; ``answer(qtype)``."""

    def __init__(self, records):
        counts: dict[str, Counter] = {}
        for record in records:
            if record.task == "vqa":
                counts.setdefault(record.qtype, Counter())[normalize(record.answer)] += 1
        if not counts:
            raise ValueError("no vqa records to fit the question prior on")
        self.answers = {t: min(c, key=lambda a, c=c: (-c[a], a)) for t, c in counts.items()}

    def answer(self, qtype: str) -> str:
        return self.answers.get(qtype, "")
