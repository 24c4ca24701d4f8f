"""Calibrate a trained model's change threshold on a validation split, one source at a time.

Runs the model over the split (a mix file's val split: each source's val pairs, tiled as in training),
counts P(change) of changed / unchanged labelled pixels per source and picks the threshold that maximises
the mean of the sources' change F1 (``metrics.threshold.calibrate``, the rule training now uses). Prints
each source's own best threshold and its F1 at the chosen one; ``--write-config`` stores the threshold
in that model's ``config.json`` (atomically), which is how the shipped default was recalibrated:

    python benchmarks/calibrate_threshold.py --model default --data benchmarks/mixes/realdata.yaml \\
        --write-config changescope/pretrained/default/config.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from changescope.fileio import write_json_atomic
from changescope.metrics.threshold import (
    THRESHOLD_BINS,
    SourceIndex,
    add_batch,
    calibrate,
    f1_curves,
    probability_histograms,
)
from changescope.tasks.data import binary_target
from changescope.tasks.inference import load
from changescope.tasks.queries import open_pairs


@torch.inference_mode()
def histograms_of(model, processor, dataset, batch_size: int) -> tuple[torch.Tensor, SourceIndex]:
    sources = SourceIndex.of_dataset(dataset)
    histograms = probability_histograms(sources.count)
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([processor.resize(s["image"]) for s in samples])
        out = model(images)
        if out.change_logit is None:
            raise SystemExit(f"{model.config.preset}: this model has no change head to calibrate")
        target = torch.stack([binary_target(processor.resize_mask(s["mask"])) for s in samples])
        add_batch(histograms, sources, out.change_logit, target, [s["id"] for s in samples])
    return histograms, sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", required=True, help="a mix file or dataset with change masks")
    parser.add_argument("--split", default="val")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--write-config", default=None, help="store the threshold in this config.json")
    args = parser.parse_args()
    model, processor = load(args.model, "fp32")[:2]
    dataset, _ = open_pairs(args.data, args.split)
    histograms, sources = histograms_of(model, processor, dataset, args.batch_size)
    threshold, mean_f1 = calibrate(histograms)
    curves = f1_curves(histograms)
    chosen = round(threshold * THRESHOLD_BINS)
    old = model.config.change_threshold
    before = round(old * THRESHOLD_BINS)
    rows = []
    for s, name in enumerate(sources.names):
        best = int(curves[s, 1:].argmax()) + 1
        rows.append(
            {
                "source": name,
                "pixels_changed": int(histograms[s, 1].sum()),
                "best_threshold": best / THRESHOLD_BINS,
                "best_F1": float(curves[s, best]),
                "F1_at_old": float(curves[s, before]),
                "F1_at_new": float(curves[s, chosen]),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"old_threshold": old, "threshold": threshold, "mean_F1": mean_f1}))
    if args.write_config:
        path = Path(args.write_config)
        config = json.loads(path.read_text())
        config["change_threshold"] = threshold
        write_json_atomic(path, config)
        print(f"wrote change_threshold {threshold} to {path}")


if __name__ == "__main__":
    main()
