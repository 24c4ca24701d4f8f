"""What test-time views cost: detect over a folder of 256 px pairs, and one large pair mapped tile by tile.

One process, one model; each ``--tta`` count runs the same work and is timed against ``tta=1`` run in the
same process just before it (timings here are noisy: read the ratios):

* detect: ``iter_detections`` (the ``detect`` / ``describe`` path: one forward pass per batch gives the
  masks and the captions' change tokens, then greedy captions) over ``--pairs`` SynthChange test pairs;
* a large pair: ``mask_probabilities`` on a ``--large`` px pair (tiles of 256 with 32 px overlap, the
  way ``scene`` and ``detect`` map pairs larger than the model), the mask alone.

    python benchmarks/tta_speed.py --data .data/synth2000 [--pairs 64] [--large 1024] [--precision fp32]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from changescope.tasks.detection import iter_detections, mask_probabilities
from changescope.tasks.inference import Decoding, load


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a SynthChange folder (its test split is read)")
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--large", type=int, default=1024)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--views", default="2,4,8")
    args = parser.parse_args()
    model, processor, _ = load("default", args.precision)
    folder = Path(args.data) / "images" / "test"
    names = sorted(p.name for p in (folder / "A").iterdir())[: args.pairs]
    rows = [(n, folder / "A" / n, folder / "B" / n) for n in names]
    decoding = Decoding(batch_size=32)
    torch.manual_seed(0)
    large = torch.rand(2, 3, args.large, args.large)

    def detect():
        for _ in iter_detections(model, processor, rows, decoding=decoding):
            pass

    def tiles():
        with torch.inference_mode():
            mask_probabilities(model, processor, large)

    model.set_tta(1)
    detect()  # warm-up
    print(f"precision {model.precision}, {len(rows)} pairs, a {args.large} px pair; seconds, ratio to tta=1")
    for views in (int(v) for v in args.views.split(",")):
        for name, job in (("detect", detect), ("large pair", tiles)):
            model.set_tta(1)
            base = timed(job)
            model.set_tta(views)
            spent = timed(job)
            rate = f" ({len(rows) / spent:.1f} pairs/s)" if name == "detect" else ""
            times = f"tta=1 {base:6.2f} s, tta={views} {spent:6.2f} s{rate}"
            print(f"tta={views} {name:10s}: {times}, {spent / base:.2f}x")


if __name__ == "__main__":
    main()
