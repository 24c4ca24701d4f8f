"""Temporal metrics on hand-made sequences whose scores are known."""

from __future__ import annotations

import numpy as np
import pytest

from changescope.metrics.temporal import (
    TemporalAccumulator,
    first_change_map,
    interval_scores,
    temporal_localisation,
)


def _target() -> np.ndarray:
    """Four intervals on 4 x 6 pixels: a building (2) in interval 0, a road (1) in interval 2, nothing
    in intervals 1 and 3."""
    masks = np.zeros((4, 4, 6), np.uint8)
    masks[0, 0:2, 0:2] = 2
    masks[2, 2:4, 3:6] = 1
    return masks


# ------------------------------------------------------------------------------------ interval scores
def test_perfect_prediction_scores_one_and_quiet_intervals_are_not_scored():
    target = _target()
    scores = interval_scores(target != 0, target)  # a bool prediction of a class-id target
    assert [s["IoU"] for s in scores["per_interval"]] == [1.0, None, 1.0, None]
    assert [s["F1"] for s in scores["per_interval"]] == [1.0, None, 1.0, None]
    assert scores["mIoU"] == scores["mF1"] == scores["IoU"] == scores["F1"] == 1.0
    assert scores["scored_intervals"] == 2


def test_partial_prediction_gives_the_counted_iou_and_f1():
    target = np.zeros((2, 3, 3), np.uint8)
    target[0, 0, :] = 3  # 3 changed pixels in interval 0
    pred = np.zeros_like(target)
    pred[0, 0, :2] = 1  # 2 hits, 1 miss
    pred[0, 2, 0] = 4  # 1 false alarm (the class does not matter)
    pred[1, 1, 1] = 1  # a false alarm in a quiet interval: IoU 0 there
    scores = interval_scores(pred, target)
    first, second = scores["per_interval"]
    assert (first["tp"], first["fp"], first["fn"]) == (2, 1, 1)
    assert first["IoU"] == pytest.approx(2 / 4) and first["F1"] == pytest.approx(4 / 6)
    assert second["IoU"] == 0.0 and second["F1"] == 0.0
    assert scores["mIoU"] == pytest.approx(0.25)
    assert scores["IoU"] == pytest.approx(2 / 5)  # pooled: tp 2, fp 2, fn 1


def test_ignored_target_pixels_are_skipped():
    target = np.zeros((1, 2, 2), np.uint8)
    target[0, 0, 0] = 2
    target[0, 1, :] = 255
    pred = np.ones_like(target)  # wrong only on ignored pixels and at (0, 1)
    scores = interval_scores(pred, target)
    assert (scores["per_interval"][0]["tp"], scores["per_interval"][0]["fp"]) == (1, 1)
    unmasked = interval_scores(pred, target, ignore_index=None)["per_interval"][0]
    assert (unmasked["tp"], unmasked["fp"]) == (3, 1)  # without an ignore index, 255 is a change class


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError):
        interval_scores(np.zeros((2, 4, 4)), np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError):
        interval_scores(np.zeros((4, 4)), np.zeros((4, 4), np.uint8))


# ---------------------------------------------------------------------------------------- localisation
def test_first_change_map_takes_the_first_non_zero_interval():
    masks = np.zeros((3, 1, 4), np.uint8)
    masks[1, 0, 0] = 2
    masks[2, 0, 0] = 1  # changes again later: the first interval counts
    masks[2, 0, 1] = 4
    masks[0, 0, 2] = 255
    first = first_change_map(masks)
    assert first.dtype == np.int16 and first.tolist() == [[1, 2, 0, -1]]
    assert first_change_map(masks, ignore_index=255).tolist() == [[1, 2, -1, -1]]


def test_perfect_localisation():
    target = first_change_map(_target())
    out = temporal_localisation(target, target)
    assert (out["exact"], out["within_one"], out["detected"], out["mean_abs_error"]) == (1.0, 1.0, 1.0, 0.0)
    assert out["false_change"] == 0.0
    assert (out["changed_pixels"], out["unchanged_pixels"]) == (10, 14)


def test_a_prediction_one_interval_late_is_within_one_but_never_exact():
    target = _target()
    late = np.roll(target, 1, axis=0)  # every change predicted in the following interval
    out = temporal_localisation(first_change_map(late), first_change_map(target))
    assert (out["exact"], out["within_one"], out["detected"], out["mean_abs_error"]) == (0.0, 1.0, 1.0, 1.0)
    assert out["false_change"] == 0.0
    two_late = temporal_localisation(first_change_map(np.roll(target, 2, axis=0)), first_change_map(target))
    assert two_late["within_one"] == 0.0 and two_late["detected"] == 1.0


def test_an_empty_prediction_detects_nothing():
    target = first_change_map(_target())
    none = np.full_like(target, -1)
    out = temporal_localisation(none, target)
    assert (out["exact"], out["within_one"], out["detected"], out["false_change"]) == (0.0, 0.0, 0.0, 0.0)
    assert out["mean_abs_error"] is None  # nothing detected to measure


def test_false_changes_are_counted_on_pixels_that_never_changed():
    target = first_change_map(_target())
    pred = target.copy()
    pred[3, 0] = 3  # never changed in truth
    pred[0, 5] = 0
    out = temporal_localisation(pred, target)
    assert out["false_change"] == pytest.approx(2 / 14) and out["exact"] == 1.0
    valid = np.ones(target.shape, bool)
    valid[3, 0] = False
    assert temporal_localisation(pred, target, valid)["false_change"] == pytest.approx(1 / 13)


# ----------------------------------------------------------------------------------------- accumulator
def _random_sequences(
    rng: np.random.Generator, n: int, intervals: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        target = (rng.random((intervals, 8, 8)) < 0.1) * rng.integers(1, 5, (intervals, 8, 8))
        target[rng.random(target.shape) < 0.02] = 255
        pred = rng.random((intervals, 8, 8)) < 0.12
        out.append((pred, target.astype(np.uint8)))
    return out


def test_one_sequence_in_the_accumulator_scores_as_the_functions_do():
    target = _target()
    pred = np.roll(target, 1, axis=0)
    acc = TemporalAccumulator()
    acc.update(pred, target)
    result = acc.compute()
    assert result["sequences"] == len(acc) == 1
    assert result["per_interval"] == interval_scores(pred, target)["per_interval"]
    localisation = temporal_localisation(first_change_map(pred), first_change_map(target))
    assert result["localisation"] == localisation


def test_merged_shards_equal_one_accumulator_over_everything():
    rng = np.random.default_rng(0)
    sequences = _random_sequences(rng, 6, 3) + _random_sequences(rng, 5, 5)  # two lengths pool per interval
    whole = TemporalAccumulator()
    for pred, target in sequences:
        whole.update(pred, target)
    shards = [TemporalAccumulator() for _ in range(3)]
    for k, (pred, target) in enumerate(sequences):
        shards[k % 3].update(pred, target)
    merged = TemporalAccumulator()
    for shard in shards:
        merged.merge(shard)
    assert merged.compute() == whole.compute()
    assert len(whole.compute()["per_interval"]) == 5 and whole.compute()["sequences"] == 11
    batched = TemporalAccumulator()
    batched.update(np.stack([p for p, _ in sequences[:6]]), np.stack([t for _, t in sequences[:6]]))
    one_by_one = TemporalAccumulator()
    for pred, target in sequences[:6]:
        one_by_one.update(pred, target)
    assert batched.compute() == one_by_one.compute()


def test_localisation_skips_pixels_ignored_in_any_interval():
    target = _target()
    target[3, 0, 0] = 255  # a changed pixel (interval 0) whose later label is unknown
    acc = TemporalAccumulator()
    acc.update(np.zeros_like(target), target)
    assert acc.compute()["localisation"]["changed_pixels"] == 9


def test_tensors_are_accepted_and_an_empty_accumulator_refuses_to_score():
    torch = pytest.importorskip("torch")
    target = _target()
    acc = TemporalAccumulator()
    acc.update(torch.from_numpy(target != 0), torch.from_numpy(target))
    assert acc.compute()["mIoU"] == 1.0
    with pytest.raises(ValueError, match="no sequences"):
        TemporalAccumulator().compute()
