"""Change VQA and grounding quality of a model next to image-blind baselines, on one dataset split.

Baselines: ``QuestionPrior`` (the most common training answer of the question's type, the type given) for
VQA; for grounding, the empty mask ("nothing of the kind changed"), which scores IoU 1 on every negative
query and 0 on every positive one. Model answers are the VQA head's closed answers (CDVQA's protocol).

    python benchmarks/vqa_quality.py --data DIR [--split test] [--model default]
"""

from __future__ import annotations

import argparse

from changescope.metrics.grounding import grounding_scores
from changescope.metrics.table import grounding_line, vqa_table
from changescope.metrics.vqa import vqa_scores
from changescope.models.baselines import QuestionPrior
from changescope.tasks.evaluation import evaluate
from changescope.tasks.inference import Decoding
from changescope.tasks.queries import load_records, read_target


def baseline_scores(train, test) -> tuple[dict | None, dict | None]:
    prior = QuestionPrior(train)
    vqa = [r for r in test if r.task == "vqa"]
    grounding = [r for r in test if r.task == "grounding"]
    vqa_result = (
        vqa_scores(
            {r.id: prior.answer(r.qtype) for r in vqa},
            {r.id: r.answer for r in vqa},
            {r.id: r.qtype for r in vqa},
        )
        if vqa
        else None
    )
    targets = [read_target(r.mask) for r in grounding]
    empty = grounding_scores([t & False for t in targets], targets) if targets else None
    return vqa_result, empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--format", default=None)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()

    train = load_records(args.data, "train", args.format)
    test = load_records(args.data, args.split, args.format)
    prior, empty = baseline_scores(train, test)
    result = evaluate(args.model, args.data, args.split, args.format, Decoding(batch_size=16))
    print(f"{args.data}, split '{args.split}'; model {args.model} ({result['preset']}); percent")
    if "vqa" in result:
        print("\nVQA: model (closed answers) vs the question-type prior")
        print(vqa_table(result["vqa"], baseline=prior))
    if "grounding" in result:
        print("\nmodel " + grounding_line(result["grounding"]))
        print("empty-mask baseline " + grounding_line(empty))
        negatives = sum(not t.any() for t in (read_target(r.mask) for r in test if r.task == "grounding"))
        print(f"({negatives} of {empty['n']} queries ask for a change that did not happen)")


if __name__ == "__main__":
    main()
