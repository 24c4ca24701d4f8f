"""Answers from a ChangeLLM: batched greedy generation (KV cache) over pairs and conversations.

``reply`` is the one entry point: each pair with the conversation so far and a new question gives the
model's next turn. ``describe`` asks for a description. The pair's change tokens are computed once per
batch; prompts are left-padded so one ``generate`` call serves the batch.

``masks`` runs the LLM's own vision model as ``detect`` does (its change mask, cleaned and summarised), and
``cite_replies`` attaches that mask's reading to every reply that states a number or whether anything
changed (``tasks.llm_evidence``). ``ChangeLLMChat`` is one conversation about one pair with the agent's
interface (``set_images``, ``ask``), what ``changescope chat`` and ``serve``'s ``/chat`` and web app run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from changescope.data.instructions import CAPTION_PROMPTS
from changescope.errors import ChangescopeError
from changescope.models.change_llm import IMAGE_TOKEN
from changescope.postprocess import MIN_AREA
from changescope.tasks.llm_evidence import citation, cited

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
        rows = range(start, min(start + batch_size, len(pairs)))
        # rows about the same pair (a pair's questions) share one vision forward pass
        keys = [_pair_key(pairs[i]) for i in rows]
        unique = list(dict.fromkeys(keys))
        first = {key: rows[keys.index(key)] for key in unique}
        images = torch.stack([processor.read_pair(*pairs[first[key]]) for key in unique])
        batch = processor.collate(
            [processor.prompt(turns_with(histories[i], questions[i])) for i in rows], left=True
        )
        which = torch.tensor([unique.index(key) for key in keys])
        with torch.inference_mode():
            memory, last = model.vision_features(images)
            ids = model.generate(
                batch,
                features=(memory[which], last[which]),
                max_new_tokens=max_new_tokens,
                eos_token_id=processor.stop_ids,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        answers += processor.decode(ids)
    return answers


def _pair_key(pair: tuple[Any, Any]) -> tuple:
    """Equal for the same two files (or the same two in-memory images)."""
    return tuple(str(p) if isinstance(p, (str, Path)) else id(p) for p in pair)


def describe(model, processor, pairs: Sequence[tuple[Any, Any]], **options) -> list[str]:
    """A description of the change of each pair (``reply`` to :data:`DESCRIBE`)."""
    return reply(model, processor, pairs, [DESCRIBE] * len(pairs), **options)


def masks(model, processor, pairs: Sequence[tuple[Any, Any]], min_area: int = MIN_AREA) -> list[dict | None]:
    """The ``detect`` summary (``postprocess.summarize_mask`` plus the mask's own caption) of each pair by the
    ChangeLLM's vision model, or None per pair when that model has no mask head."""
    from changescope.tasks.detection import iter_detections

    if "mask" not in model.vision.tasks:
        return [None] * len(pairs)
    rows = [(str(i), a, b) for i, (a, b) in enumerate(pairs)]
    return [d.result for d in iter_detections(model.vision, processor.image_processor, rows, min_area)]


def cite_replies(
    questions: Sequence[str], answers: Sequence[str], summaries: Sequence[dict | None]
) -> list[tuple[str, dict | None]]:
    """``(text with the mask's reading appended, citation or None)`` per answer (``llm_evidence``)."""
    out = []
    for question, answer, summary in zip(questions, answers, summaries, strict=True):
        cite = citation(question, answer, summary)
        out.append((cited(answer, cite), cite))
    return out


class ChangeLLMChat:
    """One conversation with a ChangeLLM about one pair; the agent's interface (``set_images``, ``ask``), so
    ``chat`` and ``serve`` hold it where they would hold an agent. The pair's mask is read once per pair;
    ``lock`` (the server's inference lock) is held around each forward pass."""

    def __init__(self, model, processor, lock: threading.RLock | None = None, min_area: int = MIN_AREA):
        self.model, self.processor, self.min_area = model, processor, min_area
        self.lock = lock or threading.RLock()
        self.pair: tuple[Any, Any] | None = None
        self.history: list[dict[str, str]] = []
        self.summary: dict | None = None

    def set_images(self, before, after) -> None:
        """A new pair: the conversation starts again (the LM sees only this pair's tokens)."""
        with self.lock:
            self.summary = masks(self.model, self.processor, [(before, after)], self.min_area)[0]
        self.pair, self.history = (before, after), []

    def ask(self, message: str) -> dict[str, Any]:
        """``{"reply", "answer", "citation", "tool_calls"}``: the reply, with the mask's reading when it
        states a number (``tool_calls`` then names the change mask, as the agent names its tools)."""
        if self.pair is None:
            raise ChangescopeError("this chat has no images yet: give a before and an after image first")
        with self.lock:
            answer = reply(self.model, self.processor, [self.pair], [message], [self.history])[0]
        self.history = [*turns_with(self.history, message), {"from": "gpt", "value": answer}]
        ((text, cite),) = cite_replies([message], [answer], [self.summary])
        calls = [] if cite is None else [{"name": "change_mask", "arguments": {"min_area": self.min_area}}]
        return {"reply": text, "answer": answer, "citation": cite, "tool_calls": calls}
