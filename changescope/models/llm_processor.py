"""Conversations <-> token ids for :class:`~changescope.models.change_llm.ChangeLLM`.

A conversation is the instruction-data record's ``conversations`` list (``{"from": "human" | "gpt",
"value": ...}``, LLaVA's convention, the first human turn holding ``<image>``). It is rendered with the LM's
own chat template after the model's system prompt; the loss is taken on the assistant's turns only (their
text and the end-of-turn token), never on the prompt or the visual tokens. The text is cut at ``<image>``
and tokenized as two halves, so the visual tokens sit between them (``image_at``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from changescope.errors import ChangescopeError
from changescope.models.change_llm import IMAGE_TOKEN

ROLES = {"human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}
IGNORE = -100


def check_conversation(conversations: Sequence[dict[str, str]], answered: bool = True) -> None:
    """Turns alternate human / gpt from a human one; ``<image>`` once, in the first; a trailing gpt turn
    unless ``answered`` is False (a prompt)."""
    if not conversations:
        raise ChangescopeError("a conversation needs at least one turn")
    for i, turn in enumerate(conversations):
        role = ROLES.get(turn.get("from", ""))
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ChangescopeError(f"turn {i + 1} is from {turn.get('from')!r}: turns alternate human, gpt")
    if answered and len(conversations) % 2:
        raise ChangescopeError("the conversation ends on a human turn: nothing to learn from")
    if not answered and len(conversations) % 2 == 0:
        raise ChangescopeError("a prompt ends on a human turn")
    count = sum(turn["value"].count(IMAGE_TOKEN) for turn in conversations)
    if count != 1 or IMAGE_TOKEN not in conversations[0]["value"]:
        raise ChangescopeError(f"the first human turn must hold {IMAGE_TOKEN} once (found {count} in all)")


class ChangeLLMProcessor:
    """The LM's tokenizer and chat template, the system prompt, and the vision model's image processor."""

    def __init__(self, tokenizer, system_prompt: str, image_processor=None):
        self.tokenizer, self.system_prompt, self.image_processor = tokenizer, system_prompt, image_processor
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        #: where a reply ends: the template's end-of-turn token where it has one, else end of sequence
        self.stop_ids = sorted({tokenizer.eos_token_id, *self._end_of_turn()} - {None})

    def _end_of_turn(self) -> list[int]:
        text = self._render([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}])
        tail = text[text.rindex("y") + 1 :].strip()
        ids = self.tokenizer.encode(tail, add_special_tokens=False) if tail else []
        return ids[:1]

    def _render(self, messages: list[dict[str, str]], generation: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def messages(self, conversations: Sequence[dict[str, str]]) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": ROLES[t["from"]], "content": t["value"]} for t in conversations]

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]], int]:
        """Ids and character spans of ``text`` cut at ``<image>``; the index the visual tokens go at."""
        cut = text.index(IMAGE_TOKEN)
        left, right = text[:cut], text[cut + len(IMAGE_TOKEN) :]
        ids, spans = [], []
        for part, offset in ((left, 0), (right, cut + len(IMAGE_TOKEN))):
            enc = self.tokenizer(part, add_special_tokens=False, return_offsets_mapping=True)
            ids += enc["input_ids"]
            spans += [(s + offset, e + offset) for s, e in enc["offset_mapping"]]
            if offset == 0:
                image_at = len(ids)
        return ids, spans, image_at

    def encode(self, conversations: Sequence[dict[str, str]]) -> dict[str, Any]:
        """A training example: ``input_ids``, ``labels`` (-100 except the assistant's turns), ``image_at``."""
        check_conversation(conversations)
        messages = self.messages(conversations)
        text = self._render(messages)
        answers = []
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                start = len(self._render(messages[:i], generation=True))
                answers.append((start, len(self._render(messages[: i + 1]).rstrip())))
        ids, spans, image_at = self._tokenize(text)
        labels = [
            token if any(a <= s and e <= b for a, b in answers) and e > s else IGNORE
            for token, (s, e) in zip(ids, spans, strict=True)
        ]
        return {"input_ids": ids, "labels": labels, "image_at": image_at}

    def prompt(self, conversations: Sequence[dict[str, str]]) -> dict[str, Any]:
        """A generation prompt: the conversation so far (ending on a human turn), the assistant's header."""
        check_conversation(conversations, answered=False)
        ids, _, image_at = self._tokenize(self._render(self.messages(conversations), generation=True))
        return {"input_ids": ids, "labels": [IGNORE] * len(ids), "image_at": image_at}

    def collate(self, items: list[dict[str, Any]], left: bool = False) -> dict[str, torch.Tensor]:
        """Pad a list of :meth:`encode` / :meth:`prompt` results (right for training, ``left`` for
        generation); ``images`` ``[B, 2, 3, H, W]`` are stacked when the items have them."""
        width = max(len(item["input_ids"]) for item in items)
        pad = self.tokenizer.pad_token_id
        batch = {"input_ids": [], "attention_mask": [], "labels": [], "image_at": []}
        for item in items:
            n = len(item["input_ids"])
            fill = width - n
            before, after = (fill, 0) if left else (0, fill)
            batch["input_ids"].append([pad] * before + item["input_ids"] + [pad] * after)
            batch["attention_mask"].append([0] * before + [1] * n + [0] * after)
            batch["labels"].append([IGNORE] * before + item["labels"] + [IGNORE] * after)
            batch["image_at"].append(before + item["image_at"])
        out = {key: torch.tensor(value) for key, value in batch.items()}
        if all("images" in item for item in items):
            out["images"] = torch.stack([item["images"] for item in items])
        return out

    def read_pair(self, before, after) -> torch.Tensor:
        """A pair (paths, PIL images or arrays) -> ``[2, 3, S, S]`` at the vision model's size."""
        if self.image_processor is None:
            raise ChangescopeError("this processor has no image processor (the vision model's)")
        return self.image_processor.resize(self.image_processor.read_stack([before, after]))

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Generated ids -> replies, cut at the first stop token."""
        replies = []
        for row in ids.tolist():
            for i, token in enumerate(row):
                if token in self.stop_ids:
                    row = row[:i]
                    break
            replies.append(self.tokenizer.decode(row, skip_special_tokens=True).strip())
        return replies
