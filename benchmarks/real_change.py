"""Binary change detection on real labelled pairs: models next to the pixel-difference baseline.

Every dataset split listed in ``REAL_SETS`` (folders of ``../shared/realdata``, read through
``open_dataset``) is scored per dataset with pooled pixels: change F1 / IoU / precision / recall over the
labelled pixels (unlabelled pixels, e.g. Landsat's sparse samples, count nowhere). A model with class
masks counts every change class as "change". Pairs larger than the model's size are mapped tile by tile at
their own resolution (``tasks.detection.mask_probabilities``).

Baseline: ``DifferenceBaseline`` (RGB distance, threshold, opening + closing), its threshold tuned for
change IoU on the same dataset's train split when it has one, else on the pooled train splits of the
datasets at the same resolution group, so it gets the labels the model got.

Consistency (models with a caption decoder): the share of pairs where the decoder's caption and the
mask agree on whether anything changed (``tasks.consistency.agrees``), before the inference rule that
replaces a "no change" caption contradicted by the mask.

    python benchmarks/real_change.py --model default --model OLD_MODEL_DIR [--realdata ../shared/realdata]

A model spec may name a precision and test-time views: ``default@bf16``, ``default@tta=4``,
``default@fp32@tta=8``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from changescope.data.readers import open_dataset
from changescope.data.sample import BINARY_CLASSES, IGNORE_INDEX
from changescope.metrics.segmentation import ConfusionMatrix
from changescope.models.baselines import DifferenceBaseline
from changescope.postprocess import remove_small_objects, summarize_mask
from changescope.tasks.data import binary_target
from changescope.tasks.detection import mask_probabilities

#: (name, folder under realdata, format, split, resolution group); none of these splits is trained on, and
#: only Landsat Taizhou was seen in model selection
REAL_SETS = [
    ("SZTAKI test (1.5 m)", "sztaki-airchange", "sztaki", "test", "aerial"),
    ("EGY-BCD test (0.25 m)", "egy-bcd-ncc-samples/NCC samples", "folder", "test", "aerial"),
    ("xBD / Ida-BD test (0.5 m)", "xbd-idabd-dahitra", "xbd", "test", "aerial"),
    ("OSCD test cities (10 m)", "oscd-test10-labels", "oscd", "test", "10m"),
    # Taizhou is the landsat reader's val scene, which the default's training mix used for model
    # selection (benchmarks/mixes/realdata.yaml): not held out, and labelled so
    ("Landsat Taizhou (30 m, model-selection scene)", "landsat-taizhou-nanjing", "landsat", "val", "30m"),
    ("SAR / heterogeneous (out of domain)", "sar-heterogeneous-yulisun-inlpg", "triplets", "test", "sar"),
]
#: where each group's baseline is tuned when a dataset has no train split of its own
TRAIN_SETS = {
    "aerial": [
        ("sztaki-airchange", "sztaki"),
        ("egy-bcd-ncc-samples/NCC samples", "folder"),
        ("xbd-idabd-dahitra", "xbd"),
    ],
    "10m": [("oscd-8cities", "oscd")],
    "30m": [("landsat-taizhou-nanjing", "landsat")],
    "sar": [],
}


def load_spec(spec: str):
    """``MODEL[@PRECISION][@tta=N]`` -> ``tasks.inference.load``'s triple."""
    from changescope.tasks.inference import load

    name, *options = spec.split("@")
    views = [int(o.removeprefix("tta=")) for o in options if o.startswith("tta=")]
    precisions = [o for o in options if not o.startswith("tta=")]
    return load(name, precisions[0] if precisions else None, views[0] if views else 1)


def scores(confusion: ConfusionMatrix) -> dict[str, float | None]:
    change = confusion.compute(BINARY_CLASSES)["per_class"]["change"]
    return {k: change[k] for k in ("F1", "IoU", "precision", "recall")}


class _Concat(torch.utils.data.ConcatDataset):
    def __init__(self, parts):
        super().__init__(parts)
        self.classes = BINARY_CLASSES


def fit_baseline(realdata: Path, folder: str, fmt: str, group: str) -> DifferenceBaseline:
    own = open_dataset(realdata / folder, "train", fmt)
    if len(own):
        return DifferenceBaseline().fit(own, pairs=50)
    parts = [open_dataset(realdata / f, "train", x) for f, x in TRAIN_SETS[group]]
    parts = [p for p in parts if len(p)]
    if not parts:
        return DifferenceBaseline(threshold=0.2)
    return DifferenceBaseline().fit(_Concat(parts), pairs=50)


@torch.inference_mode()
def score_model(model, processor, dataset, min_area: int, use_gsd: bool = True) -> tuple[dict, float | None]:
    from changescope.tasks.consistency import agrees
    from changescope.tasks.inference import Decoding, caption_pairs

    confusion = ConfusionMatrix(2, ignore_index=IGNORE_INDEX)
    agree = []
    for index in range(len(dataset)):
        sample = dataset[index]
        gsd = sample.get("gsd") if use_gsd else None
        probs = mask_probabilities(model, processor, sample["image"], gsd)
        mask = remove_small_objects(probs.argmax(0).to(torch.uint8).numpy(), min_area)
        confusion.update(binary_target(torch.from_numpy(mask).long()), binary_target(sample["mask"]))
        if model.decoder is not None:
            caption = caption_pairs(model, processor, sample["image"][None], Decoding())[0]
            agree.append(agrees(caption, summarize_mask(mask, list(model.config.classes))))
    return scores(confusion), (sum(agree) / len(agree) if agree else None)


def score_baseline(baseline: DifferenceBaseline, dataset) -> dict:
    confusion = ConfusionMatrix(2, ignore_index=IGNORE_INDEX)
    for index in range(len(dataset)):
        sample = dataset[index]
        confusion.update((baseline.predict(sample["image"]) > 0).long(), binary_target(sample["mask"]))
    return scores(confusion)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        default=[],
        help="MODEL[@PRECISION][@tta=N] (default@bf16, default@tta=4), repeatable",
    )
    parser.add_argument(
        "--realdata", default=str(Path(__file__).resolve().parents[2] / "shared" / "realdata")
    )
    parser.add_argument("--min-area", type=int, default=10)
    parser.add_argument("--only", default=None, help="comma-separated folder names to score")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--synth", default=None, help="also score this SynthChange folder's test split")
    parser.add_argument(
        "--no-gsd", action="store_true", help="withhold each dataset's GSD, as for plain PNGs without --gsd"
    )
    args = parser.parse_args()
    realdata = Path(args.realdata)
    models = [(spec, *load_spec(spec)[:2]) for spec in args.model]
    rows = []
    sets = list(REAL_SETS)
    if args.synth:
        sets.insert(0, ("SynthChange test", str(Path(args.synth).resolve()), "synthchange", "test", "synth"))
    for name, folder, fmt, split, group in sets:
        if args.only and folder.split("/")[0] not in args.only.split(","):
            continue
        dataset = open_dataset(realdata / folder, split, fmt)
        start = time.perf_counter()
        if group == "synth":
            baseline = DifferenceBaseline().fit(open_dataset(folder, "train", fmt), pairs=200)
        else:
            baseline = fit_baseline(realdata, folder, fmt, group)
        row = {"set": name, "pairs": len(dataset), "baseline": score_baseline(baseline, dataset)}
        row["baseline_threshold"] = baseline.threshold
        for spec, model, processor in models:
            row[spec], row[f"{spec} consistency"] = score_model(
                model, processor, dataset, args.min_area, not args.no_gsd
            )
        row["seconds"] = round(time.perf_counter() - start, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    header = "| real pairs | n | pixel difference F1 | " + " | ".join(f"{s} F1 (P / R)" for s in args.model)
    print(header + " |")
    print("|" + "---|" * (3 + len(args.model)))
    for row in rows:
        cells = [row["set"], str(row["pairs"]), f"{100 * (row['baseline']['F1'] or 0):.1f}"]
        for spec in args.model:
            f1, p, r = (100 * (row[spec][k] or 0) for k in ("F1", "precision", "recall"))
            cells.append(f"{f1:.1f} ({p:.0f} / {r:.0f})")
        print("| " + " | ".join(cells) + " |")
    for spec in args.model:
        rates = [row[f"{spec} consistency"] for row in rows if row[f"{spec} consistency"] is not None]
        if rates:
            print(
                f"{spec}: caption / mask agreement per set: " + ", ".join(f"{100 * r:.0f} %" for r in rates)
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
