"""Per-task metric accumulators: ``update`` batch by batch, ``merge`` shards, ``compute`` once.

``changescope evaluate``, training validation and the demo all score through these, so a number means the
same thing wherever it is printed. Each accumulator holds only what its metric needs (captions by id,
answers by key, four running sums for grounding), is picklable, and ``merge`` adds another one's state:
under DDP every rank gathers the others' accumulators and merges them, so all ranks score the whole split.
Change masks accumulate in :class:`changescope.metrics.segmentation.ConfusionMatrix` (its ``merge`` adds
matrices).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np
import torch


class CaptionAccumulator:
    """Captions keyed by pair id with their references and change flags; scored by pycocoevalcap.

    A pair seen twice keeps its first caption (DistributedSampler repeats pairs to even out shards)."""

    def __init__(self, no_change_sentences: Sequence[str] = ()):
        self.no_change_sentences = tuple(no_change_sentences)
        self.predictions: dict[Hashable, str] = {}
        self.references: dict[Hashable, list[str]] = {}
        self.changed: dict[Hashable, bool] = {}

    def __len__(self) -> int:
        return len(self.predictions)

    def update(
        self,
        ids: Iterable[Hashable],
        captions: Iterable[str],
        references: Iterable[Sequence[str]],
        changed: Iterable[bool],
    ) -> None:
        for key, caption, refs, flag in zip(ids, captions, references, changed, strict=True):
            if key not in self.predictions:
                self.predictions[key] = caption
                self.references[key] = list(refs)
                self.changed[key] = bool(flag)

    def merge(self, other: CaptionAccumulator) -> None:
        for key, caption in other.predictions.items():
            self.predictions.setdefault(key, caption)
            self.references.setdefault(key, other.references[key])
            self.changed.setdefault(key, other.changed[key])

    def compute(self, meteor: bool | None = None) -> dict[str, Any]:
        """``metrics.captions.evaluate_captions`` of everything accumulated (whole set, subsets, accuracy)."""
        from changescope.metrics.captions import evaluate_captions

        return evaluate_captions(
            self.predictions, self.references, self.changed, self.no_change_sentences, meteor=meteor
        )


class VQAAccumulator:
    """Closed answers keyed by question (any hashable key, e.g. ``(pair id, k)``), scored as CDVQA does."""

    def __init__(self) -> None:
        self.predicted: dict[Hashable, str] = {}
        self.truth: dict[Hashable, str] = {}
        self.qtypes: dict[Hashable, str] = {}

    def __len__(self) -> int:
        return len(self.truth)

    def update(
        self,
        keys: Iterable[Hashable],
        predicted: Iterable[str | None],
        truth: Iterable[str],
        qtypes: Iterable[str],
    ) -> None:
        for key, answer, right, qtype in zip(keys, predicted, truth, qtypes, strict=True):
            self.predicted[key] = answer or ""  # no closed answer (an open question) is simply wrong
            self.truth[key] = right
            self.qtypes[key] = qtype

    def merge(self, other: VQAAccumulator) -> None:
        self.predicted.update(other.predicted)
        self.truth.update(other.truth)
        self.qtypes.update(other.qtypes)

    def compute(self) -> dict[str, Any]:
        """``{"OA", "AA", "per_type", "counts", "n"}`` (``metrics.vqa.vqa_scores``)."""
        from changescope.metrics.vqa import vqa_scores

        return vqa_scores(self.predicted, self.truth, self.qtypes)


def _as_bool(mask: Any) -> torch.Tensor:
    tensor = mask if isinstance(mask, torch.Tensor) else torch.from_numpy(np.asarray(mask))
    return tensor.detach() != 0


class GroundingAccumulator:
    """mIoU (mean of per-sample IoU) and cIoU (summed intersections over summed unions) of binary masks.

    Memory is four numbers whatever the split's size. A sample whose prediction and target are both empty
    scores IoU 1 (the model correctly found nothing); empty against non-empty scores 0."""

    def __init__(self) -> None:
        self.iou_sum = 0.0
        self.n = 0
        self.intersection = 0
        self.union = 0

    def __len__(self) -> int:
        return self.n

    def update(self, pred: Any, target: Any) -> None:
        """One mask ``[H, W]`` or a batch ``[N, H, W]`` (tensors or arrays, non-zero = target); each
        prediction must have its target's shape."""
        pred_b, target_b = _as_bool(pred), _as_bool(target).to(_as_bool(pred).device)
        if pred_b.shape != target_b.shape:
            raise ValueError(
                f"predicted mask {tuple(pred_b.shape)} differs from target {tuple(target_b.shape)}"
            )
        if pred_b.ndim == 2:
            pred_b, target_b = pred_b[None], target_b[None]
        inter = (pred_b & target_b).flatten(1).sum(1).tolist()
        union = (pred_b | target_b).flatten(1).sum(1).tolist()
        for i, u in zip(inter, union, strict=True):
            self.iou_sum += i / u if u else 1.0
            self.intersection += i
            self.union += u
        self.n += len(inter)

    def merge(self, other: GroundingAccumulator) -> None:
        self.iou_sum += other.iou_sum
        self.n += other.n
        self.intersection += other.intersection
        self.union += other.union

    def compute(self) -> dict[str, Any]:
        """``{"mIoU", "cIoU", "n"}``; ``ValueError`` when nothing was accumulated."""
        if self.n == 0:
            raise ValueError("no masks to score")
        return {
            "mIoU": self.iou_sum / self.n,
            "cIoU": self.intersection / self.union if self.union else 1.0,
            "n": self.n,
        }
