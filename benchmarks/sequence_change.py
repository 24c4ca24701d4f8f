"""When did it change, and where? A temporal model against pair-model baselines on SynthChange sequences.

Sequences of an unseen seed are rendered in memory (``data.synth.sequence.render_sequence``, with its
weather: clouds, haze, one misregistered date) and every method reads the same ones:

* ``temporal``: the model's temporal head over all T dates (``tasks.sequence.detect_sequence``);
* ``pairs``: the consecutive-pairs baseline, the pair model on each interval (t, t + 1) alone;
* ``first``: the pair model on (first date, date t) for every t; interval i is what (0, i + 1) shows
  changed and (0, i) did not (the usual way to date change against a reference image).

The temporal questions each sequence carries (when, first / last change, how many times, between A and
B) are answered from each method's interval masks (``tasks.temporal_qa``) and scored as VQA (OA, AA);
the dated sequence caption is scored against the sequence's five references (pycocoevalcap, no METEOR).

Scores pool every sequence (``metrics.temporal.TemporalAccumulator``): per-interval binary change IoU / F1,
and over the pixels that truly changed, the share whose first changed interval is found exactly / within
one interval / at all, plus the false-change rate on pixels that never changed.

    python benchmarks/sequence_change.py --model RUN/model --sequences 200 --dates 5 --seed 2027
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from changescope.data.synth.sequence import render_sequence
from changescope.metrics.accumulators import CaptionAccumulator, VQAAccumulator
from changescope.metrics.temporal import TemporalAccumulator
from changescope.tasks.detection import iter_detections
from changescope.tasks.inference import Decoding, load
from changescope.tasks.sequence import detect_sequence
from changescope.tasks.temporal_qa import answer_temporal


def against_first(model, processor, images) -> np.ndarray:
    """Interval masks from the pair model on (date 0, date t): change that appears at t and not before."""
    pairs = [(str(t), images[0], images[t]) for t in range(1, len(images))]
    found = [d.mask > 0 for d in iter_detections(model, processor, pairs, decoding=Decoding(batch_size=16))]
    seen = np.zeros_like(found[0])
    masks = []
    for mask in found:
        masks.append(mask & ~seen)
        seen |= mask
    return np.stack(masks)


def run(model, processor, method: str, sequences) -> dict:
    scores, answers, captions = TemporalAccumulator(), VQAAccumulator(), CaptionAccumulator()
    classes = model.sequence_classes if method == "temporal" else list(model.config.classes)
    start = time.perf_counter()
    for n, seq in enumerate(sequences):
        images = list(seq.images)
        if method == "first":
            scores.update(against_first(model, processor, images), seq.interval_masks)
            continue
        years = [d[:4] for d in seq.dates]  # the references name years: "between 2016 and 2018 ..."
        change = detect_sequence(model, processor, images, years, baseline=method == "pairs")
        scores.update(change.interval_masks, seq.interval_masks)
        captions.update([n], [change.caption], [seq.captions], [bool(seq.events)])
        said = [answer_temporal(q["question"], change, seq.dates, classes) for q in seq.questions]
        answers.update(
            [(n, k) for k in range(len(said))],
            [a["answer"] if a else None for a in said],
            [q["answer"] for q in seq.questions],
            [q["qtype"] for q in seq.questions],
        )
    result = scores.compute()
    result["sequences_per_s"] = len(sequences) / (time.perf_counter() - start)
    if len(answers):
        result["questions"] = answers.compute()
        result["captions"] = captions.compute(meteor=False)["all"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--methods", default="temporal,pairs,first")
    parser.add_argument("--sequences", type=int, default=60)
    parser.add_argument("--dates", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--no-weather", action="store_true", help="clean sequences (generator 1.0)")
    parser.add_argument("--json", default=None, help="also write the scores here")
    args = parser.parse_args()

    model, processor, _ = load(args.model)
    methods = args.methods.split(",")
    if "temporal" in methods and "sequence" not in model.tasks:
        raise SystemExit(f"{args.model} has no temporal head: pass --methods pairs,first")
    sequences = [
        render_sequence(args.seed, i, args.size, args.dates, weather=not args.no_weather)
        for i in range(args.sequences)
    ]
    what = f"{args.sequences} sequences of {args.dates} dates, {args.size} px, seed {args.seed}"
    print(f"{what}, model {args.model}")
    results = {}
    for method in methods:
        result = run(model, processor, method, sequences)
        results[method] = result
        loc = result["localisation"]
        print(
            f"{method:>9}: interval IoU {result['IoU']:.3f} F1 {result['F1']:.3f} | first change exact "
            f"{loc['exact']:.3f} within one {loc['within_one']:.3f} detected {loc['detected']:.3f} | false "
            f"change {loc['false_change']:.4f} | {result['sequences_per_s']:.2f} seq/s"
        )
        if "questions" in result:
            qa = result["questions"]
            types = ", ".join(f"{t} {v:.3f}" for t, v in qa["per_type"].items())
            print(f"{'':>9}  temporal questions: OA {qa['OA']:.3f} AA {qa['AA']:.3f} ({types}; n={qa['n']})")
            text = result["captions"]
            print(f"{'':>9}  sequence captions: BLEU-4 {text['BLEU-4']:.3f} CIDEr-D {text['CIDEr-D']:.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), **results}, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
