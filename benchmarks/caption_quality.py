"""Caption quality of a model next to the two trivial baselines, on one dataset split, one protocol.

Baselines: the most common training caption for every pair, and the first caption of the training pair
nearest by pixel difference (``changescope.models.baselines``). All rows are scored by
``changescope.metrics.score.score_dataset`` (pycocoevalcap; METEOR when Java is present).

    python benchmarks/caption_quality.py --data DIR [--split test] [--model default] [--beam 3]
"""

from __future__ import annotations

import argparse

from changescope.data.readers import open_dataset
from changescope.metrics.score import score_dataset
from changescope.models.baselines import most_common_caption, nearest_pair_captions
from changescope.tasks.evaluation import evaluate
from changescope.tasks.inference import Decoding

COLUMNS = ("BLEU-1", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S*m", "no_change_accuracy", "change_accuracy")


def row(name: str, result: dict) -> str:
    cells = "".join(f"{'n/a' if result.get(c) is None else f'{100 * result[c]:.2f}':>14}" for c in COLUMNS)
    return f"| {name:<44}|{cells}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--format", default=None)
    parser.add_argument("--model", default="default", help="a MODEL, or 'none' for the baselines only")
    parser.add_argument("--beam", type=int, default=1)
    args = parser.parse_args()

    train = open_dataset(args.data, "train", args.format)
    test = open_dataset(args.data, args.split, args.format)
    common = most_common_caption(train)
    rows = {
        "baseline: most common training caption": score_dataset(
            {e.id: common for e in test.entries}, test, args.data
        ),
        "baseline: nearest training pair (pixels)": score_dataset(
            nearest_pair_captions(train, test), test, args.data
        ),
    }
    model = None
    if args.model != "none":
        model = evaluate(args.model, args.data, args.split, args.format, Decoding(beam_size=args.beam))
        rows[f"model {args.model} ({model['preset']}, beam {args.beam})"] = model
    print(f"{args.data}, split '{args.split}', {len(test)} pairs; percent (CIDEr-D x100)")
    print(f"| {'':<44}|" + "".join(f"{c.replace('_accuracy', ' acc'):>14}" for c in COLUMNS))
    for name, result in rows.items():
        print(row(name, result))
    print(f"most common caption: '{common}'")
    if model is not None:
        print(f"model vocabulary sha256 {model['vocab_sha256'][:12]}, training seed {model['seed']}")


if __name__ == "__main__":
    main()
