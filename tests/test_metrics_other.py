from collections import deque

import numpy as np
import pytest
import torch

from changescope.metrics.grounding import grounding_scores
from changescope.metrics.retrieval import bidirectional, retrieval_scores
from changescope.metrics.segmentation import ConfusionMatrix
from changescope.metrics.vqa import vqa_scores
from changescope.postprocess import boxes_from_mask, label_components

# --- segmentation -------------------------------------------------------------------------------------


def test_confusion_matrix_hand_case():
    target = torch.tensor([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])  # tensors and arrays mix
    cm = ConfusionMatrix(4)
    cm.update(pred, target)
    out = cm.compute(["background", "road", "building", "water"])
    bg, road, building = (out["per_class"][n] for n in ("background", "road", "building"))
    assert (bg["IoU"], bg["F1"], bg["precision"], bg["recall"]) == pytest.approx((1 / 3, 1 / 2, 1 / 2, 1 / 2))
    assert (road["IoU"], road["F1"], road["precision"], road["recall"]) == pytest.approx(
        (2 / 3, 4 / 5, 2 / 3, 1)
    )
    assert (building["IoU"], building["F1"], building["precision"], building["recall"]) == pytest.approx(
        (1 / 2, 2 / 3, 1, 1 / 2)
    )
    # "water" is in neither prediction nor target: undefined, and left out of the means
    assert out["per_class"]["water"] == {
        "IoU": None,
        "F1": None,
        "precision": None,
        "recall": None,
        "support": 0,
    }
    assert out["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert out["mIoU_no_bg"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert out["mF1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)
    assert out["mF1_no_bg"] == pytest.approx((4 / 5 + 2 / 3) / 2)
    assert out["OA"] == pytest.approx(4 / 6) and out["pixels"] == 6
    assert out["confusion"][2] == [1, 0, 1, 0]


def test_confusion_matrix_ignore_index_and_errors():
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(torch.tensor([1, 0, 1]), torch.tensor([1, 255, 255]))
    assert cm.compute()["pixels"] == 1 and cm.compute()["OA"] == 1.0
    with pytest.raises(ValueError, match="integer class ids"):
        cm.update(torch.rand(3), torch.tensor([0, 1, 1]))
    with pytest.raises(ValueError, match="class id 2"):
        cm.update(torch.tensor([0, 2]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="3 values"):
        cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))


def test_confusion_matrix_matches_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    gen = torch.Generator().manual_seed(0)
    k = 5
    cm = ConfusionMatrix(k, ignore_index=255)
    metrics = {
        "IoU": tm.MulticlassJaccardIndex(k, average=None, ignore_index=255),
        "F1": tm.MulticlassF1Score(k, average=None, ignore_index=255),
        "precision": tm.MulticlassPrecision(k, average=None, ignore_index=255),
        "recall": tm.MulticlassRecall(k, average=None, ignore_index=255),
    }
    for _ in range(3):  # accumulate over batches
        target = torch.randint(0, k - 1, (2, 32, 32), generator=gen)  # class 4 never in the target
        pred = torch.where(
            torch.rand(target.shape, generator=gen) < 0.6,
            target,
            torch.randint(0, k, target.shape, generator=gen),
        )
        target[torch.rand(target.shape, generator=gen) < 0.05] = 255
        cm.update(pred, target)
        for metric in metrics.values():
            metric.update(pred, target)
    out = cm.compute()
    for name, metric in metrics.items():
        reference = metric.compute().tolist()
        for cls in range(k):
            ours = out["per_class"][str(cls)][name]
            if ours is not None:  # torchmetrics reports undefined values as 0
                assert ours == pytest.approx(reference[cls], abs=1e-6), (name, cls)
    # class 4 is predicted but never in the target: IoU 0 (defined), recall undefined
    assert out["per_class"]["4"]["recall"] is None and out["per_class"]["4"]["IoU"] == 0.0
    assert out["mIoU"] == pytest.approx(metrics["IoU"].compute().mean().item(), abs=1e-6)


# --- VQA ----------------------------------------------------------------------------------------------


def test_vqa_scores_hand_case():
    answers = {"q1": "yes", "q2": "no", "q3": "0_to_10", "q4": "no"}
    qtypes = {"q1": "change_or_not", "q2": "change_or_not", "q3": "change_ratio", "q4": "change_or_not"}
    preds = {"q1": "Yes.", "q2": "yes", "q3": "0_to_10", "q4": " NO"}
    out = vqa_scores(preds, answers, qtypes)
    assert out["OA"] == pytest.approx(3 / 4)
    assert out["per_type"] == pytest.approx({"change_or_not": 2 / 3, "change_ratio": 1.0})
    assert out["AA"] == pytest.approx((2 / 3 + 1) / 2)
    assert out["counts"] == {"change_or_not": 3, "change_ratio": 1} and out["n"] == 4
    with pytest.raises(ValueError, match="no prediction for 1 question"):
        vqa_scores({"q1": "yes"}, {"q1": "yes", "q2": "no"}, qtypes)
    with pytest.raises(ValueError, match="no reference answer"):
        vqa_scores({"q1": "yes", "q9": "no"}, {"q1": "yes"}, qtypes)
    with pytest.raises(ValueError, match="no question type"):
        vqa_scores({"q1": "yes"}, {"q1": "yes"}, {})


# --- grounding ----------------------------------------------------------------------------------------


def test_grounding_scores_hand_case():
    preds = [np.array([[1, 1], [0, 0]]), np.zeros((2, 2)), torch.zeros(2, 2)]
    targets = [np.array([[1, 0], [0, 0]]), np.zeros((2, 2)), torch.ones(2, 2)]
    out = grounding_scores(preds, targets)
    assert out["mIoU"] == pytest.approx((1 / 2 + 1 + 0) / 3)  # empty vs empty = 1, empty vs full = 0
    assert out["cIoU"] == pytest.approx((1 + 0 + 0) / (2 + 0 + 4))
    assert out["n"] == 3
    assert grounding_scores([np.zeros((3, 3))], [np.zeros((3, 3))]) == {"mIoU": 1.0, "cIoU": 1.0, "n": 1}
    with pytest.raises(ValueError, match="sample 0"):
        grounding_scores([np.zeros((2, 3))], [np.zeros((3, 2))])


def test_boxes_from_mask_hand_case():
    mask = np.array(
        [
            [1, 0, 0, 0, 1],
            [0, 1, 0, 0, 0],  # touches (0, 0) diagonally: one component
            [0, 0, 0, 0, 0],
            [0, 0, 0, 7, 7],
        ]
    )
    expected = [(0, 0, 2 / 5, 2 / 4), (4 / 5, 0, 1, 1 / 4), (3 / 5, 3 / 4, 1, 1)]
    np.testing.assert_allclose(boxes_from_mask(mask), expected)
    np.testing.assert_allclose(
        boxes_from_mask(torch.from_numpy(mask), min_pixels=2), [expected[0], expected[2]]
    )
    assert boxes_from_mask(np.array([[0, 1], [1, 0]])) == [(0.0, 0.0, 1.0, 1.0)]  # anti-diagonal link
    assert boxes_from_mask(np.ones((3, 4))) == [(0.0, 0.0, 1.0, 1.0)]
    assert boxes_from_mask(np.zeros((3, 4))) == []
    with pytest.raises(ValueError, match="2-D"):
        boxes_from_mask(np.ones((1, 3, 4)))


def _bfs_labels(fg: np.ndarray) -> np.ndarray:
    labels = np.zeros(fg.shape, dtype=np.int64)
    h, w = fg.shape
    count = 0
    for y in range(h):
        for x in range(w):
            if fg[y, x] and not labels[y, x]:
                count += 1
                labels[y, x] = count
                queue = deque([(y, x)])
                while queue:
                    cy, cx = queue.popleft()
                    for ny in range(max(cy - 1, 0), min(cy + 2, h)):
                        for nx in range(max(cx - 1, 0), min(cx + 2, w)):
                            if fg[ny, nx] and not labels[ny, nx]:
                                labels[ny, nx] = count
                                queue.append((ny, nx))
    return labels


def test_label_components_matches_bfs():
    rng = np.random.default_rng(0)
    snake = np.zeros((21, 21), dtype=bool)  # one long winding component: many union-find rounds
    snake[::4, :] = True
    snake[1::8, -1] = snake[2::8, -1] = snake[3::8, -1] = True
    snake[5::8, 0] = snake[6::8, 0] = snake[7::8, 0] = True
    masks = [rng.random((40, 50)) < p for p in (0.2, 0.4, 0.6)] + [snake]
    for mask in masks:
        labels, n = label_components(mask)
        expected = _bfs_labels(mask)
        np.testing.assert_array_equal(labels, expected)
        assert n == expected.max()
    assert label_components(snake)[1] == 1


# --- retrieval ----------------------------------------------------------------------------------------


def test_retrieval_scores_hand_case_with_pessimistic_ties():
    sim = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.8], [0.3, 0.6, 0.6]])
    # ranks: 1; 3 (item 0 ties with the positive and counts above it); 1 (best of the two positives)
    out = retrieval_scores(sim, [0, 1, {1, 2}])
    assert out["R@1"] == pytest.approx(2 / 3)
    assert out["R@5"] == out["R@10"] == 1.0
    assert out["MRR"] == pytest.approx((1 + 1 / 3 + 1) / 3)
    far = retrieval_scores(torch.arange(12.0)[None], [0])  # 11 items above the positive: rank 12
    assert (far["R@1"], far["R@5"], far["R@10"], far["MRR"]) == (0.0, 0.0, 0.0, pytest.approx(1 / 12))
    flat = retrieval_scores(np.zeros((2, 6)), [0, 5])  # constant scores give the worst rank
    assert flat["MRR"] == pytest.approx(1 / 6)
    with pytest.raises(ValueError, match="NaN"):
        retrieval_scores(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(ValueError, match="outside"):
        retrieval_scores(sim, [0, 1, 3])
    with pytest.raises(ValueError, match="no positive"):
        retrieval_scores(sim, [0, 1, set()])


def test_bidirectional():
    sim = np.array([[0.9, 0.2, 0.1], [0.3, 0.5, 0.4], [0.1, 0.8, 0.2], [0.7, 0.6, 0.0]])
    out = bidirectional(sim, [0, 0, 1, 1])  # pair 2 has no text: not a pair-to-text query
    t2p, p2t = out["text_to_pair"], out["pair_to_text"]
    assert t2p["n"] == 4 and t2p["R@1"] == pytest.approx(2 / 4)
    assert t2p["MRR"] == pytest.approx((1 + 1 / 3 + 1 + 1 / 2) / 4)
    assert p2t["n"] == 2 and p2t["R@1"] == 1.0 and p2t["MRR"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        bidirectional(sim, [0, 0, 1, 3])
