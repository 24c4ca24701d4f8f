"""The change threshold is calibrated per validation source (metrics/threshold.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from changescope.metrics.threshold import (
    THRESHOLD_BINS,
    SourceIndex,
    add_probabilities,
    calibrate,
    f1_curves,
    probability_histograms,
)


def test_f1_curves_match_counting_pixels():
    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(5000, generator=generator)
    changed = torch.rand(5000, generator=generator) < probs  # informative, not separable
    histograms = probability_histograms(1)
    add_probabilities(histograms, 0, probs, changed)
    curve = f1_curves(histograms)[0]
    for k in (1, 10, 37, 50, 80, 99):
        called = probs >= k / THRESHOLD_BINS
        tp, fp, fn = (called & changed).sum(), (called & ~changed).sum(), (~called & changed).sum()
        assert curve[k].item() == pytest.approx(float(2 * tp / (2 * tp + fp + fn)), abs=2e-3), k


def _source(n: int, changed_at: float, unchanged_at: float) -> tuple[torch.Tensor, torch.Tensor]:
    """n changed pixels at P = changed_at and n unchanged at P = unchanged_at."""
    probs = torch.cat([torch.full((n,), changed_at), torch.full((n,), unchanged_at)])
    return probs, torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])


def test_a_small_source_counts_as_much_as_a_large_one():
    # a large synthetic-like source: crisp, any threshold in (0.31, 0.95] separates it; a small real-like
    # source whose changed pixels only reach P = 0.125: pooled pixels would not need it at all
    histograms = probability_histograms(3)
    add_probabilities(histograms, 0, *_source(100_000, 0.955, 0.305))
    add_probabilities(histograms, 1, *_source(100, 0.125, 0.025))
    add_probabilities(histograms, 2, torch.full((50,), 0.505), torch.zeros(50, dtype=torch.bool))  # no change
    threshold, f1 = calibrate(histograms)
    # in (0.025, 0.125]: source 1 is perfect (F1 1), source 0 calls its unchanged pixels too (F1 2/3); the
    # source without change does not dilute the mean; above 0.31 the mean would be (1 + 0) / 2
    assert 0.025 < threshold <= 0.125
    assert f1 == pytest.approx((1 + 2 / 3) / 2)
    pooled = probability_histograms(1)
    pooled[0] = histograms.sum(0)
    assert calibrate(pooled)[0] > 0.305  # one pooled histogram: the large source chooses


def test_sources_come_from_the_mix_and_pool_when_ids_collide():
    entry = SimpleNamespace
    mix = SimpleNamespace(
        entries=[entry(id="a"), entry(id="b"), entry(id="c")], entry_sources=["x", "y", "y"]
    )
    index = SourceIndex.of_dataset(mix)
    assert index.names == ("x", "y") and [index.of(i) for i in "abc"] == [0, 1, 1]
    clash = SimpleNamespace(entries=[entry(id="a"), entry(id="a")], entry_sources=["x", "y"])
    assert SourceIndex.of_dataset(clash).count == 1
    assert SourceIndex.of_dataset(SimpleNamespace(entries=[entry(id="a")])).count == 1
