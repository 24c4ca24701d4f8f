"""``changescope evaluate`` for a ChangeLLM: the classic models' tables, from free-text replies.

On a split the LLM is asked, per pair, to describe the change (scored by pycocoevalcap through the same
``CaptionAccumulator`` as every captioner) and each of the pair's question records, one question a
conversation (scored by ``VQAAccumulator``: CDVQA's OA, AA and accuracy per question type, counting
among them). A reply is mapped to the question type's closed answers before scoring
(``closed_answer``), as LLM evaluations on CDVQA-style sets do; a reply that maps to none is wrong.
Every reply that states a number or whether anything changed is checked against the change mask of
the LLM's own vision model (``tasks.llm_evidence``); the rate of agreement is reported per kind.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from changescope.data.text import normalize
from changescope.errors import DataError
from changescope.tasks.consistency import says_no_change
from changescope.tasks.llm_evidence import stated_numbers

_NOTHING = re.compile(r"\b(none|nothing)\b")
_BIN = re.compile(r"^(\d+(?:\.\d+)?)_to_(\d+(?:\.\d+)?)$")


def _words(text: str) -> str:
    return normalize(text.replace("_", " "))


def closed_answer(reply: str, candidates: list[str]) -> str | None:
    """The closed answer among ``candidates`` (one question type's answers) that ``reply`` gives, or None.

    In order: the reply is a candidate (case, punctuation and ``_`` / space aside); it starts with yes / no;
    the first number it states ("none of it" / a no-change sentence: 0) is a candidate, or falls in a
    candidate's ``a_to_b`` bin (a percentage for ratio questions); exactly one candidate occurs in it as
    whole words."""
    said = _words(reply)
    by_words = {_words(c): c for c in candidates}
    if said in by_words:
        return by_words[said]
    first = said.split(" ", 1)[0] if said else ""
    if first in ("yes", "no") and first in by_words:
        return by_words[first]
    counts, shares = stated_numbers(reply)
    numbers = [*shares, *counts]
    if not numbers and (says_no_change(reply) or _NOTHING.search(said)):
        numbers = [0]  # "none of it", "no change has occurred": a count or share of zero
    if numbers:
        value = numbers[0]
        for candidate in candidates:
            if _words(candidate) == _words(str(value if not float(value).is_integer() else int(value))):
                return candidate
            found = _BIN.match(candidate)
            if found and float(found.group(1)) <= value <= float(found.group(2)):
                return candidate
    inside = [c for w, c in by_words.items() if w and re.search(rf"\b{re.escape(w)}\b", said)]
    return inside[0] if len(inside) == 1 else None


def evaluate_llm(
    path: str | Path,
    data: str | Path,
    split: str = "test",
    format: str | None = None,
    batch_size: int = 8,
    meteor: bool | None = None,
    predictions_out: str | Path | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Caption keys as ``score`` gives them, ``vqa`` (OA, AA, per type) and ``citations`` (agreement of the
    replies' numbers with the vision model's mask) for the ChangeLLM saved in ``path``."""
    import torch

    from changescope.metrics.accumulators import CaptionAccumulator, VQAAccumulator
    from changescope.metrics.score import caption_report
    from changescope.models.llm_hub import load_change_llm
    from changescope.tasks.inference import write_jsonl
    from changescope.tasks.llm_inference import DESCRIBE, cite_replies, look, reply
    from changescope.tasks.queries import attach, first_pairs, open_pairs

    model, processor = load_change_llm(path)
    dataset, records = open_pairs(data, split, format)
    records = first_pairs(dataset, [r for r in records if r.task == "vqa"], limit)
    queries = attach(dataset.entries, records, "records")
    has_references = any(e.captions for e in dataset.entries)
    if not (has_references or records):
        raise DataError(data, f"split '{split}' has no captions and no questions to score a ChangeLLM on")
    candidates: dict[str, set[str]] = defaultdict(set)
    for record in records:
        candidates[record.qtype].add(str(record.answer))
    captions = CaptionAccumulator(getattr(type(dataset), "no_change_sentences", ()))
    answers = VQAAccumulator()
    agree: dict[str, list[bool]] = defaultdict(list)
    rows = []
    with torch.inference_mode():
        for start in range(0, len(dataset), batch_size):
            entries = dataset.entries[start : start + batch_size]
            files = [(e.images[0], e.images[-1]) for e in entries]
            # (pair in the batch, question, question type, true answer); None type: the caption prompt
            asks = [(k, DESCRIBE, None, None) for k in range(len(entries)) if has_references]
            for k in range(len(entries)):
                asks += [(k, q, t, a) for q, t, a in queries[start + k].vqa]
            questions = [q for _, q, _, _ in asks]
            sights = look(model, processor, files)  # one vision pass per pair: the LM's tokens and the mask
            said = reply(
                model,
                processor,
                [files[k] for k, *_ in asks],
                questions,
                batch_size=batch_size,
                features=[sights[k].features for k, *_ in asks],
            )
            checked = cite_replies(questions, said, [sights[k].summary for k, *_ in asks])
            for n, (ask, text, (_, cite)) in enumerate(zip(asks, said, checked, strict=True)):
                k, _, qtype, truth = ask
                entry = entries[k]
                if cite is not None:
                    agree[cite["kind"]].append(cite["agrees"])
                if qtype is None:
                    captions.update([entry.id], [text], [entry.captions], [entry.flag])
                    rows.append({"id": entry.id, "caption": text})
                else:
                    closed = closed_answer(text, sorted(candidates[qtype]))
                    answers.update([(entry.id, start + n)], [closed], [truth], [qtype])
    result: dict[str, Any] = {}
    if len(captions):
        result.update(caption_report(captions.compute(meteor=meteor), dataset))
    if len(answers):
        result["vqa"] = answers.compute()
    checked_all = [a for values in agree.values() for a in values]
    result["citations"] = {
        "n": len(checked_all),
        "agree": sum(checked_all) / len(checked_all) if checked_all else None,
        "per_kind": {k: {"n": len(v), "agree": sum(v) / len(v)} for k, v in sorted(agree.items())},
    }
    if predictions_out is not None:
        write_jsonl(predictions_out, rows)
    result.update(
        {
            "model": str(path),
            "preset": "change-llm",
            "tasks": ["caption", "vqa"],
            "decoding": {"greedy": True, "max_new_tokens": model.config.max_new_tokens},
            "precision": "fp32",
            "vocab_sha256": None,
            "seed": None,
            "data": str(data),
            "split": split,
            "n": len(dataset),
            "limit": limit,
        }
    )
    return result
