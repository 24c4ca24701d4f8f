"""The change threshold: chosen on validation histograms of P(change), one dataset at a time.

A mix validates on several sources of very different size (300 SynthChange chips beside two SZTAKI pairs).
Pooling their pixels lets the largest source choose the threshold, and SynthChange's crisp probabilities
chose 0.44 for the default, where the real sources' best thresholds were near 0.1 (RESULTS.md, "The
change threshold"). So the threshold maximises the *mean over sources* of each source's change F1; with
one source that is the pooled F1, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from changescope.data.sample import IGNORE_INDEX

#: bins of the change-probability histograms (edges k / BINS are the candidate thresholds)
THRESHOLD_BINS = 100


def probability_histograms(sources: int) -> torch.Tensor:
    """Empty histograms ``[sources, 2 (unchanged, changed), BINS]``."""
    return torch.zeros(sources, 2, THRESHOLD_BINS, dtype=torch.float64)


def add_probabilities(
    histograms: torch.Tensor, source: int, probs: torch.Tensor, changed: torch.Tensor
) -> None:
    """Count ``probs`` (P(change) of labelled pixels) of ``source`` by their label ``changed`` (bool)."""
    for row, value in ((0, False), (1, True)):
        hist = torch.histc(probs[changed == value].float(), bins=THRESHOLD_BINS, min=0.0, max=1.0)
        histograms[source, row] += hist.double().cpu()


def add_batch(histograms: torch.Tensor, sources: SourceIndex, change_logit, target, ids) -> None:
    """Count a batch: ``change_logit`` and binary ``target`` (0, 1, ``IGNORE_INDEX``) ``[B, ...]``, and pair
    ``ids`` naming each row's source (a sequence batch's rows hold every interval of a pair)."""
    probs = change_logit.detach().float().sigmoid()
    for k, pair_id in enumerate(ids):
        valid = target[k] != IGNORE_INDEX
        add_probabilities(histograms, sources.of(pair_id), probs[k][valid], target[k][valid] == 1)


def f1_curves(histograms: torch.Tensor) -> torch.Tensor:
    """Change F1 ``[sources, BINS]`` of calling P(change) >= k / BINS changed, per source."""
    neg, pos = histograms[:, 0], histograms[:, 1]
    tp = pos.flip(-1).cumsum(-1).flip(-1)
    fp = neg.flip(-1).cumsum(-1).flip(-1)
    fn = pos.sum(-1, keepdim=True) - tp
    return 2 * tp / (2 * tp + fp + fn).clamp(min=1)


def calibrate(histograms: torch.Tensor) -> tuple[float, float]:
    """``(threshold, mean change F1 at it)`` over the sources that hold changed pixels (a source without
    change has F1 0 at every threshold and would only dilute the mean); edge 0 is never chosen, as it
    would call every pixel changed."""
    curves = f1_curves(histograms)
    scored = histograms[:, 1].sum(-1) > 0
    mean = curves[scored].mean(0) if scored.any() else curves.mean(0)
    best = int(mean[1:].argmax()) + 1
    return best / THRESHOLD_BINS, float(mean[best])


@dataclass
class SourceIndex:
    """Which validation source a pair id belongs to: one source unless the dataset names them per entry
    (``entry_sources``, as a mix does)."""

    names: tuple[str, ...] = ("all",)
    by_id: dict[str, int] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return len(self.names)

    def of(self, pair_id: str) -> int:
        return self.by_id.get(pair_id, 0)

    @classmethod
    def of_dataset(cls, dataset) -> SourceIndex:
        sources = getattr(dataset, "entry_sources", None)
        if not sources:
            return cls()
        names = tuple(dict.fromkeys(sources))
        by_id: dict[str, int] = {}
        # not strict: --limit-pairs trims a dataset's entries (a prefix), not its source list
        for entry, source in zip(dataset.entries, sources, strict=False):
            if by_id.setdefault(entry.id, names.index(source)) != names.index(source):
                return cls()  # one id in two sources: they cannot be told apart, so pool them
        return cls(names, by_id)
