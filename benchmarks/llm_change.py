"""A ChangeLLM next to the classic captioner: captions, closed answers, batched generation speed.

On the same test pairs of a SynthChange (or any masked) dataset:

* **captions**: the LLM's reply to "Describe what changed ..." and the classic model's caption, scored by
  pycocoevalcap against the references (``metrics.accumulators.CaptionAccumulator``);
* **closed answers**: the follow-up turns of the instruction file (``data.instructions``: counts, yes / no,
  3 x 3 grid, changed area, class names), asked after the conversation's true first exchange; exact match
  per kind;
* **speed**: new tokens per second of batched greedy generation at batch 1 and at ``--batch-size``
  (baseline: batch 1, in the same process);
* **real pairs** (``--realdata``): the held-out real tiles of ``retrieval_quality.tiles`` (the real
  validation splits of ``real_change.REAL_SETS``), asked "Did anything change?" and where (3 x 3 grid),
  against their label masks; the classic model answers both from its own change mask through the same
  answer writers (``data.instructions.grid_answer``).

    python benchmarks/llm_change.py --model RUN/model --data .data/synth_s2026 --pairs 100 \
        --realdata ../shared/realdata
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from changescope.data.instructions import read_instructions, write_instructions
from changescope.metrics.accumulators import CaptionAccumulator
from changescope.models.llm_hub import load_change_llm
from changescope.tasks.describe import iter_descriptions
from changescope.tasks.inference import Decoding, load
from changescope.tasks.llm_inference import describe, reply
from changescope.tasks.queries import open_pairs


def caption_scores(data: str, split: str, pairs: int, captions_for) -> dict:
    dataset, _ = open_pairs(data, split)
    entries = dataset.entries[:pairs]
    said = captions_for([(e.images[0], e.images[1]) for e in entries])
    acc = CaptionAccumulator(dataset.no_change_sentences)
    acc.update([e.id for e in entries], said, [e.captions for e in entries], [e.flag for e in entries])
    scores = acc.compute()
    return {"all": scores["all"], "change_accuracy": scores["change_accuracy"],
            "no_change_accuracy": scores["no_change_accuracy"], "examples": said[:3]}  # fmt: skip


def closed_answers(model, processor, rows, batch_size: int) -> dict:
    """Exact match per kind of every follow-up turn, after the true first exchange."""
    asks, truths, kinds, pairs, histories = [], [], [], [], []
    for row in rows:
        turns = row["conversations"]
        for k in range(1, len(turns) // 2):
            asks.append(turns[2 * k]["value"])
            truths.append(turns[2 * k + 1]["value"])
            kinds.append(row["kinds"][k])
            pairs.append(tuple(row["images"][:2]))
            histories.append(turns[: 2 * k])
    said = reply(model, processor, pairs, asks, histories, batch_size=batch_size)
    right, total = defaultdict(int), defaultdict(int)
    for kind, answer, truth in zip(kinds, said, truths, strict=True):
        total[kind] += 1
        right[kind] += answer.strip().lower() == truth.strip().lower()
    per_kind = {k: round(right[k] / total[k], 4) for k in sorted(total)}
    overall = sum(right.values()) / max(sum(total.values()), 1)
    return {"overall": round(overall, 4), "per_kind": per_kind, "n": sum(total.values())}


def tokens_per_second(model, processor, pairs, batch_size: int, max_new_tokens: int = 32) -> float:
    """New tokens per second of greedy generation over ``pairs`` at ``batch_size``."""
    questions = ["Describe what changed between the two images."] * len(pairs)
    start = time.perf_counter()
    said = reply(model, processor, pairs, questions, batch_size=batch_size, max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - start
    tokens = sum(len(processor.tokenizer.encode(s, add_special_tokens=False)) + 1 for s in said)
    return tokens / seconds


def real_tiles(realdata: Path, size: int, limit: int):
    """Up to ``limit`` ``(set, before, after, label)`` of ``retrieval_quality.tiles`` (the real held-out
    splits; uint8 arrays, ``IGNORE_INDEX`` where unlabelled), spread over the sets."""
    from retrieval_quality import tiles

    found = []
    for name, crop, label in tiles(realdata, size):
        before, after = ((crop[t].permute(1, 2, 0) * 255).round().byte().numpy() for t in (0, -1))
        found.append((name, before, after, label.numpy()))
    step = max(1, len(found) // limit)  # spread over the sets, not the first set's tiles alone
    return found[::step][:limit]


def real_answers(model, processor, classic, classic_processor, realdata: Path, limit: int, batch: int):
    """Did anything change, and where (3 x 3 grid), on real tiles: the LLM's words against the answers the
    classic model's own change mask gives through the same writers."""
    from changescope.data.instructions import CHANGED_PROMPTS, GRID_PROMPT, grid_answer
    from changescope.data.sample import IGNORE_INDEX
    from changescope.tasks.detection import iter_detections

    tiles = real_tiles(realdata, 256, limit)
    pairs = [(before, after) for _, before, after, _ in tiles]
    truth = [(label != IGNORE_INDEX) & (label > 0) for *_, label in tiles]
    said_changed = reply(model, processor, pairs, [CHANGED_PROMPTS[0]] * len(pairs), batch_size=batch)
    said_grid = reply(model, processor, pairs, [GRID_PROMPT] * len(pairs), batch_size=batch)
    named = [(str(i), a, b) for i, (a, b) in enumerate(pairs)]
    found = [d.mask > 0 for d in iter_detections(classic, classic_processor, named, batch_size=batch)]
    rows = {"llm": (said_changed, said_grid), "classic": (
        ["yes" if m.any() else "no" for m in found], [grid_answer(m) for m in found])}  # fmt: skip
    out = {"tiles": len(tiles), "sets": sorted({t[0] for t in tiles}),
           "changed_share": round(sum(bool(t.any()) for t in truth) / len(truth), 3)}  # fmt: skip
    for name, (changed, grid) in rows.items():
        yes_no = [
            a.strip().lower() == ("yes" if t.any() else "no") for a, t in zip(changed, truth, strict=True)
        ]
        where = [a.strip().lower() == grid_answer(t) for a, t in zip(grid, truth, strict=True)]
        out[name] = {"changed_accuracy": round(sum(yes_no) / len(yes_no), 4),
                     "grid_exact": round(sum(where) / len(where), 4)}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved ChangeLLM (RUN/model)")
    parser.add_argument("--classic", default="default", help="the classic captioner to compare with")
    parser.add_argument("--data", default=".data/synth_s2026")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--instructions", help="folder of <split>.jsonl (default: written from --data)")
    parser.add_argument("--realdata", type=Path, help="also the real held-out tiles of this folder")
    parser.add_argument("--real-tiles", type=int, default=120)
    parser.add_argument("--json", help="also write the scores here")
    args = parser.parse_args()
    torch.manual_seed(0)

    model, processor = load_change_llm(args.model)
    folder = Path(args.instructions or Path(args.model).parent / "bench_instructions")
    if not (folder / f"{args.split}.jsonl").is_file():
        write_instructions(args.data, folder, (args.split,))
    rows = read_instructions(folder / f"{args.split}.jsonl")[: args.pairs]

    results = {"model": args.model, "classic": args.classic, "data": args.data, "pairs": len(rows)}
    results["llm_captions"] = caption_scores(
        args.data, args.split, args.pairs, lambda p: describe(model, processor, p, batch_size=args.batch_size)
    )
    results["llm_closed"] = closed_answers(model, processor, rows, args.batch_size)
    pairs = [tuple(r["images"][:2]) for r in rows[:16]]
    one = tokens_per_second(model, processor, pairs, 1)
    many = tokens_per_second(model, processor, pairs, args.batch_size)
    results["tokens_per_second"] = {"batch_1": round(one, 1), f"batch_{args.batch_size}": round(many, 1),
                                    "ratio": round(many / one, 2)}  # fmt: skip

    classic, classic_processor, _ = load(args.classic)

    def classic_captions(pairs):
        named = [(str(i), a, b) for i, (a, b) in enumerate(pairs)]
        return [r["caption"] for r in iter_descriptions(classic, classic_processor, named, Decoding())]

    results["classic_captions"] = caption_scores(args.data, args.split, args.pairs, classic_captions)
    if args.realdata is not None:
        results["real"] = real_answers(
            model, processor, classic, classic_processor, args.realdata, args.real_tiles, args.batch_size
        )
    for name in ("llm_captions", "classic_captions"):
        row = results[name]
        s = row["all"]
        print(
            f"{name:>17}: BLEU-4 {s['BLEU-4']:.3f} CIDEr-D {s['CIDEr-D']:.3f} ROUGE-L {s['ROUGE-L']:.3f} "
            f"| change acc {row['change_accuracy']} no-change acc {row['no_change_accuracy']}"
        )
    closed = results["llm_closed"]
    print(f"       llm closed: {closed['overall']:.3f} (n={closed['n']}) {closed['per_kind']}")
    print(f"  tokens/s: {results['tokens_per_second']}")
    if "real" in results:
        print(f"  real tiles: {results['real']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
