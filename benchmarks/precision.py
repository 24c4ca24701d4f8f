"""Inference precision: the same model and split evaluated in fp32 and under bf16 autocast, in one process.

Prints every score both ways with the difference, and the wall time ratio (fp32 / bf16). The issue's bar:
CIDEr-D within 1 point, mIoU within 0.5, or the precision is not a safe default.

    python benchmarks/precision.py --data .data/synth-eval --split test [--model default] [--json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def flat(result: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


KEYS = (
    "CIDEr-D", "BLEU-4", "detection/mIoU", "detection/mIoU_no_bg", "vqa/OA", "vqa/AA", "grounding/mIoU",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from changescope.tasks.evaluation import evaluate
    from changescope.tasks.inference import Decoding

    rows = {}
    for precision in args.precisions.split(","):
        start = time.perf_counter()
        result = evaluate(
            args.model, args.data, args.split, decoding=Decoding(), meteor=False, precision=precision
        )
        rows[precision] = {"seconds": time.perf_counter() - start, **flat(result)}
    base, *others = list(rows)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'metric':<24}" + "".join(f"{p:>10}" for p in rows) + "".join(f"{'d ' + o:>10}" for o in others))
    for key in (*KEYS, "seconds"):
        if key not in rows[base]:
            continue
        values = [rows[p].get(key, float("nan")) for p in rows]
        scale = 1 if key == "seconds" else 100  # scores as percent / CIDEr-D x 100, as the papers print them
        diffs = [rows[o].get(key, float("nan")) - rows[base][key] for o in others]
        print(
            f"{key:<24}"
            + "".join(f"{v * scale:>10.2f}" for v in values)
            + "".join(f"{d * scale:>+10.2f}" for d in diffs)
        )
    for other in others:
        print(f"wall time ratio {base} / {other}: {rows[base]['seconds'] / rows[other]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
