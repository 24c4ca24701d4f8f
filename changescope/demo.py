"""``make demo``: the main job on the built-in default, end to end with what exists today.

Generates a small SynthChange set, checks it, builds the train-split vocabulary, and scores two trivial
caption baselines under the paper protocol. The captioning model itself arrives with the next milestone;
until then this demo says so rather than pretending.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DEMO_PAIRS = 120
DEMO_SEED = 0


def run(out: str | Path = "demo", pairs: int = DEMO_PAIRS, seed: int = DEMO_SEED) -> dict:
    from changescope.data.check import check_dataset
    from changescope.data.readers import open_dataset
    from changescope.data.synth import generate
    from changescope.data.text import Vocabulary
    from changescope.fileio import write_text_atomic
    from changescope.metrics.score import score_predictions
    from changescope.metrics.table import caption_table
    from changescope.models.baselines import most_common_caption, nearest_pair_captions

    out = Path(out)
    data = out / f"synthchange-{pairs}-seed{seed}"
    start = time.perf_counter()
    if (data / "synthchange.json").is_file():
        print(f"[1/4] reusing {data}")
    else:
        generate(data, pairs=pairs, size=256, seed=seed)
        print(f"[1/4] generated {pairs} SynthChange pairs in {data} ({time.perf_counter() - start:.1f} s)")

    report = check_dataset(data)
    print("[2/4] dataset check:\n" + report.format_text())

    train = open_dataset(data, "train", format="synthchange")
    test = open_dataset(data, "test", format="synthchange")
    vocab = Vocabulary.build((c for e in train.entries for c in e.captions), min_freq=2)
    vocab.save(out / "vocab.json")
    print(f"[3/4] vocabulary: {len(vocab) - 4} words from the train split (count >= 2) -> {out}/vocab.json")

    results = {}
    common = most_common_caption(train)
    baselines = {
        "most common caption": {e.id: common for e in test.entries},
        "nearest training pair by pixel difference": nearest_pair_captions(train, test),
    }
    for name, predictions in baselines.items():
        pred_path = out / f"pred_{name.split()[0]}.jsonl"
        lines = (json.dumps({"id": i, "caption": c}) for i, c in predictions.items())
        write_text_atomic(pred_path, "\n".join(lines) + "\n")
        results[name] = score_predictions(pred_path, data, split="test", format="synthchange")
        print(f"[4/4] baseline '{name}' on the SynthChange test split ({pred_path}):")
        print(caption_table(results[name]))
    print(
        "\nNo captioning model ships yet: the next milestone trains one on SynthChange and this demo will "
        "then caption the test pairs and write demo/report.html."
    )
    print(f"done in {time.perf_counter() - start:.1f} s")
    return {"data": str(data), "check_ok": report.ok, "baselines": results}


def main() -> int:
    from changescope.errors import ChangescopeError

    try:
        run()
    except ChangescopeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
