"""Temporal change metrics for image time series: per-interval change masks and the date of change.

A sequence of T dates has T-1 intervals; interval i lies between date i and date i + 1.

* **Per-interval change.** Change is class id > 0 in an interval mask ``[T-1, H, W]`` (any class: this
  scores *when*, not *what*). Target pixels equal to ``ignore_index`` are skipped in that interval.
  IoU = TP / (TP + FP + FN), F1 = 2 TP / (2 TP + FP + FN); an interval with no change in prediction or
  target has no defined score (``None``) and the means (``mIoU``, ``mF1``) skip it, so quiet intervals
  neither reward nor punish a model. ``IoU`` / ``F1`` pool the counts of all intervals.
* **Date of change.** ``first_change_map`` gives each pixel the index of the first interval in which it
  changed, -1 where it never did. Over pixels that truly changed: ``exact`` (predicted first interval
  equal to the target's), ``within_one`` (detected and at most one interval off), ``detected``
  (predicted to change at all) and ``mean_abs_error`` (in intervals, over detected pixels). Over pixels
  that never changed: ``false_change`` (predicted to change). A rate whose denominator is 0 is ``None``.

Everything is numpy; :class:`TemporalAccumulator` pools the counts over many sequences (``merge`` adds
another one's, for sharded evaluation) in the style of ``metrics/accumulators.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_LOCALISATION_COUNTS = (
    "changed",
    "exact",
    "within_one",
    "detected",
    "abs_error",
    "unchanged",
    "false_change",
)


def _array(values: Any) -> np.ndarray:
    """A numpy view of an array or a tensor (any device), without importing torch."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if den > 0 else None


def _mean(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def _check_intervals(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} differs from target {target.shape}")
    if pred.ndim != 3:
        raise ValueError(f"interval masks must be [T-1, H, W], got shape {pred.shape}")


def interval_counts(pred: Any, target: Any, ignore_index: int | None = 255) -> np.ndarray:
    """``int64 [T-1, 3]``: TP, FP, FN of binary change per interval (the state the scores come from)."""
    pred, target = _array(pred), _array(target)
    _check_intervals(pred, target)
    valid = target != ignore_index if ignore_index is not None else np.ones(target.shape, bool)
    p = (pred != 0) & valid
    t = (target != 0) & valid
    axes = (1, 2)
    return np.stack([(p & t).sum(axes), (p & ~t).sum(axes), (~p & t).sum(axes)], axis=1).astype(np.int64)


def _scores(counts: np.ndarray) -> dict[str, Any]:
    """Per-interval and mean IoU / F1 from ``[T-1, 3]`` counts (rules in the module docstring)."""
    per_interval = []
    for tp, fp, fn in counts.tolist():
        per_interval.append(
            {
                "IoU": _ratio(tp, tp + fp + fn),
                "F1": _ratio(2 * tp, 2 * tp + fp + fn),
                "tp": tp,
                "fp": fp,
                "fn": fn,
            }
        )
    tp, fp, fn = counts.sum(axis=0).tolist() if len(counts) else (0, 0, 0)
    return {
        "per_interval": per_interval,
        "mIoU": _mean([s["IoU"] for s in per_interval]),
        "mF1": _mean([s["F1"] for s in per_interval]),
        "IoU": _ratio(tp, tp + fp + fn),
        "F1": _ratio(2 * tp, 2 * tp + fp + fn),
        "scored_intervals": sum(s["IoU"] is not None for s in per_interval),
    }


def interval_scores(pred: Any, target: Any, ignore_index: int | None = 255) -> dict[str, Any]:
    """Binary change IoU and F1 of each interval of one sequence, and their means over the intervals
    with any predicted or target change. ``pred``: bool or class ids ``[T-1, H, W]``; ``target``: class
    ids of the same shape."""
    return _scores(interval_counts(pred, target, ignore_index))


def first_change_map(interval_masks: Any, ignore_index: int | None = None) -> np.ndarray:
    """``int16 [H, W]``: index of the first interval whose mask is non-zero at each pixel, -1 = never.
    Pixels equal to ``ignore_index`` do not count as change."""
    masks = _array(interval_masks)
    if masks.ndim != 3:
        raise ValueError(f"interval masks must be [T-1, H, W], got shape {masks.shape}")
    changed = masks != 0
    if ignore_index is not None:
        changed &= masks != ignore_index
    return np.where(changed.any(axis=0), changed.argmax(axis=0), -1).astype(np.int16)


def localisation_counts(pred_first: Any, target_first: Any, valid: Any = None) -> dict[str, int]:
    """The counts behind :func:`temporal_localisation` (``valid``: optional bool mask of pixels to score)."""
    pred, target = _array(pred_first).astype(np.int64), _array(target_first).astype(np.int64)
    if pred.shape != target.shape:
        raise ValueError(f"predicted first-change map {pred.shape} differs from target {target.shape}")
    keep = np.ones(target.shape, bool) if valid is None else _array(valid).astype(bool)
    changed = keep & (target >= 0)
    detected = changed & (pred >= 0)
    error = np.abs(pred - target)
    return {
        "changed": int(changed.sum()),
        "exact": int((changed & (pred == target)).sum()),
        "within_one": int((detected & (error <= 1)).sum()),
        "detected": int(detected.sum()),
        "abs_error": int(error[detected].sum()),
        "unchanged": int((keep & (target < 0)).sum()),
        "false_change": int((keep & (target < 0) & (pred >= 0)).sum()),
    }


def _localisation(counts: dict[str, int]) -> dict[str, Any]:
    changed = counts["changed"]
    return {
        "exact": _ratio(counts["exact"], changed),
        "within_one": _ratio(counts["within_one"], changed),
        "detected": _ratio(counts["detected"], changed),
        "mean_abs_error": _ratio(counts["abs_error"], counts["detected"]),
        "false_change": _ratio(counts["false_change"], counts["unchanged"]),
        "changed_pixels": changed,
        "unchanged_pixels": counts["unchanged"],
    }


def temporal_localisation(pred_first: Any, target_first: Any, valid: Any = None) -> dict[str, Any]:
    """How well the predicted date of change matches the true one (``first_change_map`` outputs, -1 =
    never): ``exact``, ``within_one``, ``detected``, ``mean_abs_error`` over truly changed pixels,
    ``false_change`` over never-changed ones; see the module docstring."""
    return _localisation(localisation_counts(pred_first, target_first, valid))


class TemporalAccumulator:
    """Per-interval TP / FP / FN and the localisation counts, pooled over sequences.

    Sequences of different lengths pool interval by interval (interval k of every sequence long enough
    to have one). Memory is a few integers per interval whatever the number of sequences."""

    def __init__(self, ignore_index: int | None = 255):
        self.ignore_index = ignore_index
        self.counts = np.zeros((0, 3), np.int64)
        self.localisation = dict.fromkeys(_LOCALISATION_COUNTS, 0)
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def _add(self, counts: np.ndarray, localisation: dict[str, int]) -> None:
        if len(counts) > len(self.counts):
            grown = np.zeros((len(counts), 3), np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        self.counts[: len(counts)] += counts
        for key, value in localisation.items():
            self.localisation[key] += value

    def update(self, pred: Any, target: Any) -> None:
        """One sequence ``[T-1, H, W]`` or a batch ``[N, T-1, H, W]``: predicted change (bool or class
        ids) and target class ids. Localisation skips pixels whose target is ignored in any interval."""
        pred, target = _array(pred), _array(target)
        if pred.ndim == 3:
            pred, target = pred[None], target[None]
        if pred.shape != target.shape or pred.ndim != 4:
            raise ValueError(
                f"need [N, T-1, H, W] or [T-1, H, W] of one shape, got {pred.shape}, {target.shape}"
            )
        for p, t in zip(pred, target, strict=True):
            valid = None
            if self.ignore_index is not None:
                valid = ~(t == self.ignore_index).any(axis=0)
            target_first = first_change_map(t, self.ignore_index)
            self._add(
                interval_counts(p, t, self.ignore_index),
                localisation_counts(first_change_map(p), target_first, valid),
            )
            self.n += 1

    def merge(self, other: TemporalAccumulator) -> None:
        """Add another accumulator's counts (a shard of the same evaluation)."""
        self._add(other.counts, other.localisation)
        self.n += other.n

    def compute(self) -> dict[str, Any]:
        """The :func:`interval_scores` keys on the pooled counts, ``localisation`` (the
        :func:`temporal_localisation` keys) and ``sequences``; ``ValueError`` when nothing was added."""
        if self.n == 0:
            raise ValueError("no sequences to score")
        return {**_scores(self.counts), "localisation": _localisation(self.localisation), "sequences": self.n}
