"""Change-detection metrics from an accumulated confusion matrix.

Per class: IoU = TP / (TP + FP + FN), F1 = 2 TP / (2 TP + FP + FN), precision = TP / (TP + FP),
recall = TP / (TP + FN). A value whose denominator is 0 is undefined and reported as ``None`` (IoU and F1:
the class is absent from both prediction and target; precision: never predicted; recall: never in the
target). Means skip undefined values, so a class that never occurs does not pull mIoU towards 0 or 1.
"mIoU" / "mF1" average all classes including background (as MCI reports); "mIoU_no_bg" / "mF1_no_bg"
average classes 1..K-1, which is what the change classes alone score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def _as_tensor(values: Any, name: str) -> torch.Tensor:
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    if tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(
            f"{name} must hold integer class ids, got {tensor.dtype} (take argmax of logits first)"
        )
    return tensor.reshape(-1).long()


def _ratio(num: np.ndarray, den: np.ndarray) -> list[float | None]:
    return [float(n / d) if d > 0 else None for n, d in zip(num, den, strict=True)]


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


class ConfusionMatrix:
    """Accumulates a ``[K, K]`` confusion matrix (rows = target class, columns = predicted class).

    ``update`` takes tensors (any device) or arrays of class ids of any one shape; pixels whose target is
    ``ignore_index`` are skipped; any other id outside ``0..K-1`` is a ``ValueError``.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.matrix.zero_()

    def merge(self, other: ConfusionMatrix) -> None:
        """Add another matrix of the same classes (a shard of the same split)."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge {other.num_classes} classes into {self.num_classes}")
        self.matrix += other.matrix

    def update(self, pred: Any, target: Any) -> None:
        pred_t = _as_tensor(pred, "pred")
        target_t = _as_tensor(target, "target").to(pred_t.device)
        if pred_t.numel() != target_t.numel():
            raise ValueError(f"pred has {pred_t.numel()} values but target has {target_t.numel()}")
        if self.ignore_index is not None:
            keep = target_t != self.ignore_index
            pred_t, target_t = pred_t[keep], target_t[keep]
        k = self.num_classes
        for name, values in (("pred", pred_t), ("target", target_t)):
            if values.numel() and (values.min() < 0 or values.max() >= k):
                bad = values[(values < 0) | (values >= k)][0].item()
                raise ValueError(f"{name} holds class id {bad}, outside 0..{k - 1}")
        counts = torch.bincount(target_t * k + pred_t, minlength=k * k)
        self.matrix += counts.reshape(k, k).cpu()

    def compute(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """Per-class IoU / F1 / precision / recall and the means; see the module docstring for the rules."""
        k = self.num_classes
        names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
        if len(names) != k:
            raise ValueError(f"{len(names)} class names for {k} classes")
        cm = self.matrix.numpy().astype(np.float64)
        tp = np.diag(cm)
        fp = cm.sum(axis=0) - tp
        fn = cm.sum(axis=1) - tp
        iou = _ratio(tp, tp + fp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        total = cm.sum()
        per_class = {
            name: {
                "IoU": iou[i],
                "F1": f1[i],
                "precision": precision[i],
                "recall": recall[i],
                "support": int(tp[i] + fn[i]),
            }
            for i, name in enumerate(names)
        }
        return {
            "per_class": per_class,
            "mIoU": _mean(iou),
            "mIoU_no_bg": _mean(iou[1:]),
            "mF1": _mean(f1),
            "mF1_no_bg": _mean(f1[1:]),
            "OA": float(tp.sum() / total) if total > 0 else None,
            "pixels": int(total),
            "confusion": self.matrix.tolist(),
        }
