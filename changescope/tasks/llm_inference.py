"""Answers from a ChangeLLM: batched greedy generation (KV cache) over pairs and conversations.

``reply`` is the one entry point: each pair with the conversation so far and a new question gives the
model's next turn. ``describe`` asks for a description. The pair's change tokens are computed once per
batch (or given, from ``look``); prompts are left-padded so one ``generate`` call serves the batch.

``look`` runs the LLM's own vision model once per pair as ``detect`` runs it: the same forward pass gives
the change tokens the LM reads and the change mask (cleaned and summarised) that ``cite_replies`` attaches
to every reply stating a number or whether anything changed (``tasks.llm_evidence``). ``ChangeLLMChat`` is
one conversation about one pair with the agent's interface (``set_images``, ``ask``), what ``changescope
chat`` and ``serve``'s ``/chat`` and web app run.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
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


Features = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Sight:
    """What the vision model saw of one pair: the LM's inputs and the ``detect`` summary of its mask."""

    #: change tokens ``[1, N, D]`` and last backbone level ``[1, 2, C, h, w]`` (``vision_features``)
    features: Features
    #: ``postprocess.summarize_mask`` of the mask and its caption (None: the vision model has no mask head)
    summary: dict | None


def look(model, processor, pairs: Sequence[tuple[Any, Any]], min_area: int = MIN_AREA) -> list[Sight]:
    """One decoding and one vision forward pass per pair (before, after: paths, PIL images or arrays)."""
    from changescope.tasks.detection import iter_detections

    if "mask" not in model.vision.tasks:
        with torch.inference_mode():
            memory, last = _vision_pass(model, processor, pairs)
        return [Sight((memory[i : i + 1], last[i : i + 1]), None) for i in range(len(pairs))]
    rows = [(str(i), a, b) for i, (a, b) in enumerate(pairs)]
    seen = iter_detections(
        model.vision, processor.image_processor, rows, min_area, captions=False, tokens=True
    )
    return [Sight(d.tokens, d.result) for d in seen]


def reply(
    model,
    processor,
    pairs: Sequence[tuple[Any, Any]],
    questions: Sequence[str],
    histories: Sequence[Sequence[dict[str, str]] | None] | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 8,
    features: Sequence[Features] | None = None,
) -> list[str]:
    """The model's answer to ``questions[i]`` about ``pairs[i]`` (before, after: paths, PIL images or
    arrays) after ``histories[i]`` (earlier turns, or None), ``batch_size`` pairs per ``generate`` call.
    ``features[i]``: the pair's ``Sight.features`` when ``look`` has already seen it (not read again)."""
    if len(pairs) != len(questions) or (features is not None and len(features) != len(pairs)):
        raise ValueError(f"{len(pairs)} pairs for {len(questions)} questions")
    histories = list(histories) if histories is not None else [None] * len(pairs)
    answers: list[str] = []
    for start in range(0, len(pairs), batch_size):
        rows = range(start, min(start + batch_size, len(pairs)))
        batch = processor.collate(
            [processor.prompt(turns_with(histories[i], questions[i])) for i in rows], left=True
        )
        with torch.inference_mode():
            if features is None:
                seen = _vision_pass(model, processor, [pairs[i] for i in rows])
            else:
                seen = tuple(torch.cat([features[i][k] for i in rows]) for k in range(2))
            ids = model.generate(
                batch,
                features=seen,
                max_new_tokens=max_new_tokens,
                eos_token_id=processor.stop_ids,
                pad_token_id=processor.tokenizer.pad_token_id,
            )
        answers += processor.decode(ids)
    return answers


def _vision_pass(model, processor, pairs: Sequence[tuple[Any, Any]]) -> Features:
    """Change tokens and last level per row; rows about the same pair (a pair's questions) share one pass."""
    keys = [_pair_key(pair) for pair in pairs]
    unique = list(dict.fromkeys(keys))
    images = torch.stack([processor.read_pair(*pairs[keys.index(key)]) for key in unique])
    memory, last = model.vision_features(images)
    which = torch.tensor([unique.index(key) for key in keys])
    return memory[which], last[which]


def _pair_key(pair: tuple[Any, Any]) -> tuple:
    """Equal for the same two files (or the same two in-memory images)."""
    return tuple(str(p) if isinstance(p, (str, Path)) else id(p) for p in pair)


def describe(model, processor, pairs: Sequence[tuple[Any, Any]], **options) -> list[str]:
    """A description of the change of each pair (``reply`` to :data:`DESCRIBE`)."""
    return reply(model, processor, pairs, [DESCRIBE] * len(pairs), **options)


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
    ``chat`` and ``serve`` hold it where they would hold an agent. The pair is seen (``look``) once, when
    it is set; ``lock`` (the server's inference lock) is held around each forward pass."""

    def __init__(self, model, processor, lock: threading.RLock | None = None, min_area: int = MIN_AREA):
        self.model, self.processor, self.min_area = model, processor, min_area
        self.lock = lock or threading.RLock()
        self.pair: tuple[Any, Any] | None = None
        self.sight: Sight | None = None
        self.history: list[dict[str, str]] = []

    def set_images(self, before, after) -> None:
        """A new pair: the conversation starts again (the LM sees only this pair's tokens)."""
        with self.lock:
            self.sight = look(self.model, self.processor, [(before, after)], self.min_area)[0]
        self.pair, self.history = (before, after), []

    def ask(self, message: str) -> dict[str, Any]:
        """``{"reply", "answer", "citation", "tool_calls"}``: the reply, with the mask's reading when it
        states a number (``tool_calls`` then names the change mask, as the agent names its tools)."""
        if self.pair is None or self.sight is None:
            raise ChangescopeError("this chat has no images yet: give a before and an after image first")
        with self.lock:
            (answer,) = reply(
                self.model,
                self.processor,
                [self.pair],
                [message],
                [self.history],
                features=[self.sight.features],
            )
        self.history = [*turns_with(self.history, message), {"from": "gpt", "value": answer}]
        ((text, cite),) = cite_replies([message], [answer], [self.sight.summary])
        calls = [] if cite is None else [{"name": "change_mask", "arguments": {"min_area": self.min_area}}]
        return {"reply": text, "answer": answer, "citation": cite, "tool_calls": calls}
