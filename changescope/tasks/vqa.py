"""Asking a model about a pair: the answer (closed, or free form) and where it is (grounding).

The VQA head predicts the question type and the best answer among those seen with that type. When the
type is ``open`` (a request for a description), or the closed answer's confidence is under
``FREE_FORM_BELOW``, the caption decoder answers in free form, reading the change tokens and the
question; the result says which (``free_form``). The grounding head reads the same question as a query:
its mask (``> 0`` logits, components under ``min_area`` pixels removed) and boxes say where; an empty mask
means "no such change".
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from changescope.errors import ChangescopeError
from changescope.models.question_encoder import MAX_QUESTION_CHARS
from changescope.postprocess import MIN_AREA, boxes_from_mask, remove_small_objects, summarize_mask
from changescope.tasks.queries import OPEN

#: a closed answer less confident than this is replaced by the free-form one (when the model captions)
FREE_FORM_BELOW = 0.35


def check_question(question: Any) -> str:
    """The question, stripped; a one-line error when it is empty, too long or not UTF-8 text."""
    if isinstance(question, bytes):
        try:
            question = question.decode("utf-8")
        except UnicodeDecodeError:
            raise ChangescopeError("the question is not valid UTF-8 text") from None
    if not isinstance(question, str):
        raise ChangescopeError("the question must be text")
    try:
        question.encode("utf-8")  # command-line bytes that are not UTF-8 arrive as lone surrogates
    except UnicodeEncodeError:
        raise ChangescopeError("the question is not valid UTF-8 text") from None
    question = " ".join(question.split())
    if not question:
        raise ChangescopeError("the question is empty")
    if len(question) > MAX_QUESTION_CHARS:
        raise ChangescopeError(
            f"the question is {len(question)} characters long; the limit is {MAX_QUESTION_CHARS}"
        )
    return question


@dataclass
class Answer:
    #: the grounding mask, bool ``[H, W]`` at the input size (None: the model does not ground)
    mask: np.ndarray | None
    #: question, answer, type, free_form, confidence, closed_answer, number, grounding
    result: dict[str, Any]
    #: the decoded after image ``[H, W, 3]`` uint8, kept for the overlay (None: not kept)
    image: np.ndarray | None = None


def _closed(model, query) -> list[tuple[str, str | None, float]]:
    """(type, closed answer or None, confidence) per question."""
    types, answers, confidence = model.pick_answers(*model.answer_logits(query))
    config = model.config
    return [
        (config.qtypes[t], config.answers[a] if a >= 0 else None, float(c))
        for t, a, c in zip(types.tolist(), answers.tolist(), confidence.tolist(), strict=True)
    ]


def _free_form(model, processor, memory, query, beam_size: int = 1) -> list[str]:
    ff_memory, ff_mask = model.free_form_memory(memory, query)
    return processor.decode(model.generate_from(ff_memory, beam_size=beam_size, memory_mask=ff_mask))


def _number(text: str) -> int | None:
    words = text.split()
    return int(words[0]) if len(words) == 1 and words[0].isdigit() else None


def _agree_with_mask(
    classes: list[str], mask_of: Callable[[], np.ndarray], result: dict[str, Any], min_area: int
) -> dict[str, Any]:
    """The answer, unless it denies a change that the model's own mask (``mask_of()``, class ids, only
    computed for an answer that denies one) shows (``tasks/consistency.py``): "no" to whether anything
    changed becomes "yes", a free-form "no change" the mask's sentence."""
    from changescope.tasks.consistency import caption_from_mask, says_no_change

    update: dict[str, Any] = {"answer_source": "model"}
    answer = result.get("answer") or ""
    denies = result["type"] == "change_or_not" and answer.strip().lower() == "no" and not result["free_form"]
    free_denies = result["free_form"] and says_no_change(answer)
    if not (denies or free_denies):
        return update
    summary = summarize_mask(remove_small_objects(mask_of(), min_area), classes)
    if summary["objects"] == 0:
        return update
    if denies:
        update.update(answer="yes", answer_source="mask", model_answer=answer)
    else:
        update.update(answer=caption_from_mask(summary), answer_source="mask", model_answer=answer)
    return update


def _mask_of(model, processor, out, decoded: torch.Tensor, index: int) -> Callable[[], np.ndarray]:
    """The change mask ``detect`` makes for pair ``index``: from ``out`` when the pair fits the model's
    size, else tile by tile at its own resolution (``detection.predict_mask``)."""
    from changescope.tasks.detection import predict_mask

    if max(decoded.shape[-2:]) <= processor.image_size:
        return lambda: out.mask_logits[index].argmax(0).to(torch.uint8).numpy()
    return lambda: predict_mask(model, processor, decoded)


def iter_answers(
    model,
    processor,
    pairs: Iterable[tuple[Any, Any, Any]],
    question: str,
    min_area: int = MIN_AREA,
    batch_size: int = 16,
) -> Iterator[Answer]:
    """An :class:`Answer` to ``question`` per ``(id, before, after)`` of ``pairs``, in order (images: file
    paths, PIL images or arrays; the id is not used here, callers zip it back).

    Batched: ``batch_size`` pairs are decoded at a time (memory stays flat in the number of pairs) and go
    through ONE forward pass; the question is read once per pair of the batch, the closed answers, the
    free-form ones (for the rows that need one) and the grounding maps come from that pass. Each answer
    keeps the decoded after image (``image``) for its overlay."""
    from changescope.models.change_model import QueryOutput
    from changescope.tasks.detection import after_rgb

    if "vqa" not in model.tasks and "grounding" not in model.tasks:
        model.require("vqa")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    question = check_question(question)
    grounds = "grounding" in model.tasks
    has_mask = "mask" in model.tasks
    classes = list(model.config.classes)
    remaining = iter(pairs)
    while chunk := list(itertools.islice(remaining, batch_size)):
        decoded = [processor.read_pair(before, after) for _, before, after in chunk]
        results: list[dict[str, Any]] = [{"question": question} for _ in chunk]
        masks: list[np.ndarray | None] = [None] * len(chunk)
        with torch.inference_mode():
            images = torch.stack([processor.resize(pair) for pair in decoded])
            out = model(images, masks=has_mask, pixels=grounds)
            query = model.read_queries(out.memory, [question] * len(chunk), torch.arange(len(chunk)))
            if "vqa" in model.tasks:
                closed = _closed(model, query)
                free = [
                    model.decoder is not None
                    and (qtype == OPEN or answer is None or confidence < FREE_FORM_BELOW)
                    for qtype, answer, confidence in closed
                ]
                rows = [i for i, f in enumerate(free) if f]
                texts: dict[int, str] = {}
                if rows:  # free-form answers for the rows that need one, decoded together
                    index = torch.tensor(rows)
                    sub = QueryOutput(query.tokens[index], query.pad[index], query.pooled[index], index)
                    texts = dict(zip(rows, _free_form(model, processor, out.memory, sub), strict=True))
                for i, (qtype, answer, confidence) in enumerate(closed):
                    text = texts[i] if free[i] else answer
                    results[i].update(
                        answer=text,
                        type=qtype,
                        free_form=free[i],
                        confidence=round(confidence, 4),
                        closed_answer=answer,
                        number=_number(text or "") if qtype == "count" else None,
                    )
                    if has_mask:
                        mask_of = _mask_of(model, processor, out, decoded[i], i)
                        results[i].update(_agree_with_mask(classes, mask_of, results[i], min_area))
            if grounds:
                logits = model.ground(out, query, (processor.image_size,) * 2)
                for i, pair in enumerate(decoded):
                    up = processor.resize_logits(logits[i : i + 1, None], pair.shape[-2:])[0, 0]
                    mask = remove_small_objects((up > 0).numpy().astype(np.uint8), min_area) != 0
                    masks[i] = mask
                    results[i]["grounding"] = {
                        "pixels": int(mask.sum()),
                        "percent": round(100.0 * float(mask.mean()), 4),
                        "boxes": [[round(v, 6) for v in box] for box in boxes_from_mask(mask)],
                        "empty": not bool(mask.any()),
                        "min_area": min_area,
                    }
        for i, pair in enumerate(decoded):
            yield Answer(masks[i], results[i], after_rgb(pair))
        del decoded, masks


def ask_pair(
    model, processor, before: str | Path, after: str | Path, question: str, min_area: int = MIN_AREA
) -> Answer:
    """Answer ``question`` about the pair of images and ground it: :func:`iter_answers` of one pair."""
    return next(iter_answers(model, processor, [("pair", before, after)], question, min_area, batch_size=1))


def write_answer(answer: Answer, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``mask.png`` (0 / 255), ``overlay.png`` (over ``answer.image``, the decoded after image) and
    ``answer.json`` as the folder ``out`` (``fileio.output_dir``: built beside it and moved in whole; a
    non-empty ``out`` needs ``overwrite``)."""
    from changescope.fileio import write_outputs
    from changescope.overlay import overlay

    images = {}
    if answer.mask is not None:
        if answer.image is None:
            raise ValueError("write_answer needs the answer's after image (Answer.image) for the overlay")
        mask = answer.mask.astype(np.uint8)
        images["mask.png"] = Image.fromarray(mask * np.uint8(255), mode="L")
        images["overlay.png"] = overlay(answer.image, mask, ["background", "answer"])
    return write_outputs(out, images, "answer.json", answer.result, overwrite)
