"""Change-detection quality of a model next to the classical baseline, on one dataset split.

Baseline: ``changescope.models.baselines.DifferenceBaseline``, the per-pixel RGB distance of the two dates
thresholded and cleaned with a morphological opening and closing; its threshold is tuned on training
pairs (binary change IoU) and every changed pixel gets the most frequent training change class. Both rows
are scored with the same confusion matrix at the labels' size. "change IoU / F1" merge all change classes
into one (binary change detection), which is the baseline's own task.

    python benchmarks/detection_quality.py --data DIR [--split test] [--model default]
"""

from __future__ import annotations

import argparse

import torch

from changescope.data.readers import open_dataset
from changescope.metrics.segmentation import ConfusionMatrix
from changescope.models.baselines import DifferenceBaseline
from changescope.tasks.evaluation import evaluate
from changescope.tasks.inference import Decoding


def binary_scores(confusion: list[list[int]]) -> dict[str, float]:
    """Change IoU / F1 with every change class merged into one."""
    cm = torch.tensor(confusion, dtype=torch.float64)
    tp = cm[1:, 1:].sum()
    fp, fn = cm[0, 1:].sum(), cm[1:, 0].sum()
    return {"change IoU": float(tp / (tp + fp + fn)), "change F1": float(2 * tp / (2 * tp + fp + fn))}


def baseline_scores(train, test, pairs: int) -> tuple[dict, DifferenceBaseline]:
    baseline = DifferenceBaseline().fit(train, pairs=pairs)
    confusion = ConfusionMatrix(len(test.classes))
    for index in range(len(test)):
        sample = test[index]
        if "mask" in sample:
            confusion.update(baseline.predict(sample["image"]), sample["mask"])
    return confusion.compute(test.classes), baseline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--format", default=None)
    parser.add_argument("--model", default="default", help="a MODEL, or 'none' for the baseline only")
    parser.add_argument("--fit-pairs", type=int, default=200, help="training pairs to tune the baseline on")
    args = parser.parse_args()

    train = open_dataset(args.data, "train", args.format)
    test = open_dataset(args.data, args.split, args.format)
    rows = {}
    baseline_result, baseline = baseline_scores(train, test, args.fit_pairs)
    rows["baseline: |B - A| threshold + morphology"] = baseline_result
    if args.model != "none":
        result = evaluate(args.model, args.data, args.split, args.format, Decoding(batch_size=16))
        rows[f"model {args.model} ({result['preset']})"] = result["detection"]
    classes = list(test.classes)
    columns = [
        "mIoU",
        "mIoU_no_bg",
        "mF1_no_bg",
        "change IoU",
        "change F1",
        *[f"IoU {c}" for c in classes[1:]],
    ]
    print(f"{args.data}, split '{args.split}', {len(test)} pairs; percent")
    print(f"| {'':<42}|" + "".join(f"{c:>14}" for c in columns))
    for name, result in rows.items():
        values = {**result, **binary_scores(result["confusion"])}
        values.update({f"IoU {c}": result["per_class"][c]["IoU"] for c in classes[1:]})
        cells = "".join(f"{'n/a' if values[c] is None else f'{100 * values[c]:.2f}':>14}" for c in columns)
        print(f"| {name:<42}|{cells}")
    print(
        f"baseline threshold {baseline.threshold:.2f} (RGB distance, [0, 1] units), kernel "
        f"{baseline.kernel}, change class '{classes[baseline.change_class]}', fitted on "
        f"{min(args.fit_pairs, len(train))} training pairs"
    )


if __name__ == "__main__":
    main()
