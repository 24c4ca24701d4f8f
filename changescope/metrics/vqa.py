"""Change-VQA accuracy as CDVQA reports it: overall, average over question types, and per type.

An answer is right when its ``normalize``-d text equals the ``normalize``-d reference ("Yes." == "yes").
OA = right / all questions; AA = mean of the per-type accuracies, so rare question types weigh as much
as common ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from typing import Any

from changescope.data.text import normalize


def vqa_scores(
    predictions: Mapping[Any, str],
    answers: Mapping[Any, str],
    qtypes: Mapping[Any, str],
) -> dict[str, Any]:
    """``{"OA", "AA", "per_type": {type: accuracy}, "counts": {type: n}, "n"}``, scored over ``answers``' ids.

    Every id of ``answers`` needs a prediction and a question type; predictions for other ids are an
    error too, so a mismatched file is never scored silently.
    """
    if not answers:
        raise ValueError("no answers to score")
    missing = [key for key in answers if key not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} question id(s), first {missing[0]!r}")
    extra = [key for key in predictions if key not in answers]
    if extra:
        raise ValueError(f"{len(extra)} predicted id(s) have no reference answer, first {extra[0]!r}")
    untyped = [key for key in answers if key not in qtypes]
    if untyped:
        raise ValueError(f"no question type for {len(untyped)} id(s), first {untyped[0]!r}")
    right: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    for key, answer in answers.items():
        qtype = str(qtypes[key])
        counts[qtype] += 1
        right[qtype] += normalize(str(predictions[key])) == normalize(str(answer))
    per_type = {qtype: right[qtype] / n for qtype, n in sorted(counts.items())}
    return {
        "OA": sum(right.values()) / len(answers),
        "AA": sum(per_type.values()) / len(per_type),
        "per_type": per_type,
        "counts": dict(sorted(counts.items())),
        "n": len(answers),
    }
