"""The consecutive-pairs baseline on SynthChange sequences: when did it change, and where?

Sequences of an unseen seed are rendered in memory (``data.synth.sequence.render_sequence``); a pair model
maps each interval (t, t + 1) on its own (``tasks.sequence.detect_sequence``) and the scores pool every
sequence (``metrics.temporal.TemporalAccumulator``): per-interval binary change IoU / F1, and over the
pixels that truly changed, the share whose first changed interval is found exactly / within one interval /
at all, plus the false-change rate on pixels that never changed. A T-date model must beat these numbers.

    python benchmarks/sequence_baseline.py --model default --sequences 60 --dates 5 --seed 2027
"""

from __future__ import annotations

import argparse
import json
import time

from changescope.data.synth.sequence import render_sequence
from changescope.metrics.temporal import TemporalAccumulator
from changescope.tasks.inference import load
from changescope.tasks.sequence import detect_sequence


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--sequences", type=int, default=60)
    parser.add_argument("--dates", type=int, default=5)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--json", default=None, help="also write the scores here")
    args = parser.parse_args()

    model, processor, _ = load(args.model)
    scores = TemporalAccumulator()
    start = time.perf_counter()
    for index in range(args.sequences):
        seq = render_sequence(args.seed, index, args.size, args.dates)
        found = detect_sequence(model, processor, list(seq.images), seq.dates)
        scores.update(found.interval_masks, seq.interval_masks)
    seconds = time.perf_counter() - start
    result = scores.compute()
    result["sequences_per_s"] = args.sequences / seconds
    print(
        f"{args.sequences} sequences of {args.dates} dates, {args.size} px, seed {args.seed}: {seconds:.0f} s"
    )
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict))}, indent=1))
    print(json.dumps({k: v for k, v in result.items() if isinstance(v, dict)}, indent=1)[:2000])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), **result}, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
