"""Answers from a ChangeLLM: batched greedy generation (KV cache) over pairs and conversations.

``reply`` is the one entry point: each pair with the conversation so far and a new question gives the
model's next turn. ``describe`` asks for a description. The pair's change tokens are computed once per
batch; prompts are left-padded so one ``generate`` call serves the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from changescope.data.instructions import CAPTION_PROMPTS
from changescope.models.change_llm import IMAGE_TOKEN

#: what ``describe`` asks
DESCRIBE = CAPTION_PROMPTS[0]


def turns_with(history: Sequence[dict[str, str]] | None, question: str) -> list[dict[str, str]]:
    """The conversation so far plus ``question``; the first human turn gets the image placeholder."""
    turns = [dict(t) for t in history or []]
    if not turns:
        question = f"{IMAGE_TOKEN}\n{question}"
    return [*turns, {"from": "human", "value": question}]


def reply(
    model,
    processor,
    pairs: Sequence[tuple[Any, Any]],
    questions: Sequence[str],
    histories: Sequence[Sequence[dict[str, str]] | None] | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
) -> list[str]:
    """The model's answer to ``questions[i]`` about ``pairs[i]`` (before, after: paths, PIL images or
    arrays) after ``histories[i]`` (earlier turns, or None), ``batch_size`` pairs per ``generate`` call."""
    if len(pairs) != len(questions):
        raise ValueError(f"{len(pairs)} pairs for {len(questions)} questions")
    histories = list(histories) if histories is not None else [None] * len(pairs)
    answers: list[str] = []
    for start in range(0, len(pairs), batch_size):
        items = []
        for i in range(start, min(start + batch_size, len(pairs))):
            item = processor.prompt(turns_with(histories[i], questions[i]))
            item["images"] = processor.read_pair(*pairs[i])
            items.append(item)
        batch = processor.collate(items, left=True)
        with torch.inference_mode():
            ids = model.generate(
                batch,
                max_new_tokens=max_new_tokens,
                eos_token_id=processor.stop_ids,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        answers += processor.decode(ids)
    return answers


def describe(model, processor, pairs: Sequence[tuple[Any, Any]], **options) -> list[str]:
    """A description of the change of each pair (``reply`` to :data:`DESCRIBE`)."""
    return reply(model, processor, pairs, [DESCRIBE] * len(pairs), **options)
