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


def _sentence(text: str) -> str:
    return " ".join(text.lower().split())


class RetrievalAccumulator:
    """Pair embeddings and the embeddings of each pair's captions, keyed by pair id; scored both ways.

    Relevance, as RSICRC defines it: a text is relevant to its own pair, to every pair with the same
    sentence among its captions, and, for a no-change sentence, to every no-change pair (all no-change
    pairs count as one answer: none is a false negative of another)."""

    def __init__(self) -> None:
        self.pairs: dict[Hashable, np.ndarray] = {}
        self.texts: dict[Hashable, list[str]] = {}
        self.text_vectors: dict[Hashable, np.ndarray] = {}
        self.changed: dict[Hashable, bool] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def update(
        self,
        ids: Sequence[Hashable],
        pair_embeddings: Any,
        texts: Sequence[Sequence[str]],
        text_embeddings: Any,
        changed: Sequence[bool],
    ) -> None:
        """``text_embeddings``: the rows of every pair's texts, concatenated in order (None when no pair
        has a text)."""
        pairs = _as_array(pair_embeddings)
        flat = _as_array(text_embeddings) if text_embeddings is not None else np.zeros((0, pairs.shape[1]))
        if sum(len(t) for t in texts) != len(flat):
            raise ValueError(f"{len(flat)} text embeddings for {sum(len(t) for t in texts)} texts")
        start = 0
        for key, vector, own, flag in zip(ids, pairs, texts, changed, strict=True):
            rows = flat[start : start + len(own)]
            start += len(own)
            if key in self.pairs:  # DistributedSampler repeats pairs to even out shards
                continue
            self.pairs[key], self.texts[key] = vector, list(own)
            self.text_vectors[key], self.changed[key] = rows, bool(flag)

    def merge(self, other: RetrievalAccumulator) -> None:
        for key in other.pairs:
            if key not in self.pairs:
                self.pairs[key], self.texts[key] = other.pairs[key], other.texts[key]
                self.text_vectors[key], self.changed[key] = other.text_vectors[key], other.changed[key]

    def _relevance(self, keys: list, text_owner: list[int], sentences: list[str]) -> np.ndarray:
        """``[texts, pairs]``: pair j answers text i."""
        unchanged = np.array([not self.changed[k] for k in keys])
        owner = np.array(text_owner)
        rel = np.zeros((len(owner), len(keys)), dtype=bool)
        rel[np.arange(len(owner)), owner] = True
        rel |= unchanged[owner][:, None] & unchanged[None, :]
        by_sentence: dict[str, set[int]] = {}
        for sentence, pair in zip(sentences, owner, strict=True):
            by_sentence.setdefault(sentence, set()).add(int(pair))
        for i, sentence in enumerate(sentences):
            rel[i, list(by_sentence[sentence])] = True
        return rel

    def compute(self, exclude_unchanged: bool = False) -> dict[str, Any]:
        """``text_to_pair`` and ``pair_to_text`` (hit-rate R@1/5/10, MRR: ``metrics.retrieval``) and
        ``rsicrc`` (P@k, R@k over the relevant set, MRR@k; the first caption of each pair as the query).
        ``exclude_unchanged`` leaves no-change pairs out of queries and gallery (RSICRC's "sub" run)."""
        from changescope.metrics.retrieval import retrieval_scores, rsicrc_scores

        keys = [k for k in self.pairs if self.texts[k] and not (exclude_unchanged and not self.changed[k])]
        if not keys:
            raise ValueError("no pairs with captions to score")
        pairs = np.stack([self.pairs[k] for k in keys])
        owner = [j for j, k in enumerate(keys) for _ in self.texts[k]]
        sentences = [_sentence(t) for k in keys for t in self.texts[k]]
        texts = np.concatenate([self.text_vectors[k] for k in keys])
        sim = texts @ pairs.T
        rel = self._relevance(keys, owner, sentences)
        first = np.array([owner.index(j) for j in range(len(keys))])  # each pair's first caption
        return {
            "text_to_pair": retrieval_scores(sim, [set(np.flatnonzero(r)) for r in rel]),
            "pair_to_text": retrieval_scores(sim.T, [set(np.flatnonzero(c)) for c in rel.T]),
            "rsicrc": rsicrc_scores(sim[first], rel[first]),
            "no_change_pairs_relevant_to_each_other": True,
            "excluded_unchanged": exclude_unchanged,
            "pairs": len(keys),
            "texts": len(owner),
        }


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)
