"""The shared metric accumulators: batch updates and merged shards score exactly as one pass over the
whole set does (what DDP validation relies on), and as the list-based metric functions do."""

import pickle

import numpy as np
import pytest
import torch

from changescope.metrics.accumulators import CaptionAccumulator, GroundingAccumulator, VQAAccumulator
from changescope.metrics.captions import evaluate_captions
from changescope.metrics.grounding import grounding_scores
from changescope.metrics.segmentation import ConfusionMatrix
from changescope.metrics.vqa import vqa_scores

NO_CHANGE = ("the scene is the same as before",)


def _captions():
    ids = [f"p{i}" for i in range(8)]
    captions = ["a road was built", "the scene is the same as before", "two houses appeared", "a road"] * 2
    refs = [["a road was built near houses", "a new road"], list(NO_CHANGE)] * 4
    changed = [True, False] * 4
    return ids, captions, refs, changed


def test_caption_shards_merge_to_the_whole_split_score():
    ids, captions, refs, changed = _captions()
    by_id = {k: dict(zip(ids, v, strict=True)) for k, v in (("c", captions), ("r", refs), ("x", changed))}
    whole = evaluate_captions(by_id["c"], by_id["r"], by_id["x"], NO_CHANGE, meteor=False)
    first, second = CaptionAccumulator(NO_CHANGE), CaptionAccumulator(NO_CHANGE)
    first.update(ids[:5], captions[:5], refs[:5], changed[:5])
    second.update(ids[3:], captions[3:], refs[3:], changed[3:])  # p3, p4 repeated, as DistributedSampler pads
    first.merge(pickle.loads(pickle.dumps(second)))
    assert len(first) == 8
    assert first.compute(meteor=False) == whole


def test_caption_accumulator_keeps_the_first_caption_of_a_repeated_pair():
    acc = CaptionAccumulator()
    acc.update(["a"], ["first"], [["ref"]], [True])
    acc.update(["a"], ["second"], [["ref"]], [True])
    assert acc.predictions == {"a": "first"}


def test_vqa_accumulator_equals_vqa_scores_and_merges():
    keys = [("p", k) for k in range(6)]
    predicted = ["yes", "no", None, "2", "3", "road"]
    truth = ["yes", "yes", "no", "2", "2", "road"]
    qtypes = ["change_or_not", "change_or_not", "change_or_not", "count", "count", "change_to_what"]
    answers = [p or "" for p in predicted]  # no closed answer counts as wrong
    expected = vqa_scores(*(dict(zip(keys, v, strict=True)) for v in (answers, truth, qtypes)))
    a, b = VQAAccumulator(), VQAAccumulator()
    a.update(keys[:2], predicted[:2], truth[:2], qtypes[:2])
    b.update(keys[2:], predicted[2:], truth[2:], qtypes[2:])
    a.merge(b)
    assert a.compute() == expected
    assert expected["counts"]["change_or_not"] == 3 and expected["OA"] == pytest.approx(3 / 6)


def test_grounding_accumulator_batches_shards_and_lists_agree():
    rng = np.random.default_rng(0)
    preds = [rng.random((12, 12)) > 0.6 for _ in range(7)]
    targets = [rng.random((12, 12)) > 0.5 for _ in range(7)]
    preds[0][:] = False  # empty vs empty scores 1
    targets[0][:] = False
    expected = grounding_scores(preds, targets)
    batched = GroundingAccumulator()
    batched.update(torch.from_numpy(np.stack(preds[:4])), torch.from_numpy(np.stack(targets[:4])))
    rest = GroundingAccumulator()
    for p, t in zip(preds[4:], targets[4:], strict=True):
        rest.update(p, t.astype(np.uint8))
    batched.merge(rest)
    got = batched.compute()
    assert got["n"] == expected["n"] == 7
    assert got["mIoU"] == pytest.approx(expected["mIoU"]) and got["cIoU"] == pytest.approx(expected["cIoU"])
    inter = [int((p & t).sum()) for p, t in zip(preds, targets, strict=True)]
    union = [int((p | t).sum()) for p, t in zip(preds, targets, strict=True)]
    assert got["cIoU"] == pytest.approx(sum(inter) / sum(union))
    assert got["mIoU"] == pytest.approx(
        np.mean([i / u if u else 1.0 for i, u in zip(inter, union, strict=True)])
    )


def test_grounding_accumulator_refuses_mismatched_shapes_and_empty_compute():
    acc = GroundingAccumulator()
    with pytest.raises(ValueError, match="differs from target"):
        acc.update(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no masks"):
        acc.compute()


def test_confusion_matrix_merge_adds_shards():
    rng = np.random.default_rng(1)
    pred, target = rng.integers(0, 3, (4, 8, 8)), rng.integers(0, 3, (4, 8, 8))
    whole, a, b = ConfusionMatrix(3), ConfusionMatrix(3), ConfusionMatrix(3)
    whole.update(pred, target)
    a.update(pred[:1], target[:1])
    b.update(pred[1:], target[1:])
    a.merge(b)
    assert torch.equal(a.matrix, whole.matrix)
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(ConfusionMatrix(2))
