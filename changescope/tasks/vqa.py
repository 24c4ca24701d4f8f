"""Asking a model about a pair: the answer (closed, or free form) and where it is (grounding).

The VQA head predicts the question type and the best answer among those seen with that type. When the
type is ``open`` (a request for a description), or the closed answer's confidence is under
``FREE_FORM_BELOW``, the caption decoder answers in free form, reading the change tokens and the
question; the result says which (``free_form``). The grounding head reads the same question as a query:
its mask (``> 0`` logits, components under ``min_area`` pixels removed) and boxes say where; an empty mask
means "no such change".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from changescope.errors import ChangescopeError
from changescope.metrics.grounding import boxes_from_mask
from changescope.models.question_encoder import MAX_QUESTION_CHARS
from changescope.tasks.detection import MIN_AREA, remove_small_objects
from changescope.tasks.queries import OPEN, attach

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


def _agree_with_mask(model, out, result: dict[str, Any], min_area: int) -> dict[str, Any]:
    """The answer, unless it denies a change that the model's own mask shows (``tasks/consistency.py``):
    "no" to whether anything changed becomes "yes", a free-form "no change" the mask's sentence."""
    from changescope.tasks.consistency import caption_from_mask, says_no_change
    from changescope.tasks.detection import summarize_mask

    mask = out.mask_logits[0].argmax(0).to(torch.uint8).numpy()
    summary = summarize_mask(remove_small_objects(mask, min_area), list(model.config.classes))
    update: dict[str, Any] = {"answer_source": "model"}
    if summary["objects"] == 0:
        return update
    answer = result.get("answer") or ""
    if result["type"] == "change_or_not" and answer.strip().lower() == "no" and not result["free_form"]:
        update.update(answer="yes", answer_source="mask", model_answer=answer)
    elif result["free_form"] and says_no_change(answer):
        update.update(answer=caption_from_mask(summary), answer_source="mask", model_answer=answer)
    return update


def ask_pair(
    model, processor, before: str | Path, after: str | Path, question: str, min_area: int = MIN_AREA
) -> Answer:
    """Answer ``question`` about the pair of image files and ground it."""
    if "vqa" not in model.tasks and "grounding" not in model.tasks:
        model.require("vqa")
    question = check_question(question)
    pair = processor.read_pair(before, after)
    grounds = "grounding" in model.tasks
    with torch.inference_mode():
        has_mask = "mask" in model.tasks
        out = model(processor.resize(pair)[None], masks=has_mask, pixels=grounds)
        query = model.read_queries(out.memory, [question], torch.zeros(1, dtype=torch.long))
        result: dict[str, Any] = {"question": question}
        if "vqa" in model.tasks:
            qtype, closed, confidence = _closed(model, query)[0]
            free = model.decoder is not None and (
                qtype == OPEN or closed is None or confidence < FREE_FORM_BELOW
            )
            answer = _free_form(model, processor, out.memory, query)[0] if free else closed
            result.update(
                answer=answer,
                type=qtype,
                free_form=free,
                confidence=round(confidence, 4),
                closed_answer=closed,
                number=_number(answer or "") if qtype == "count" else None,
            )
            if has_mask:
                result.update(_agree_with_mask(model, out, result, min_area))
        mask = None
        if grounds:
            logits = model.ground(out, query, (processor.image_size,) * 2)
            logits = processor.resize_logits(logits[:, None], pair.shape[-2:])[0, 0]
            mask = remove_small_objects((logits > 0).numpy().astype(np.uint8), min_area) != 0
            result["grounding"] = {
                "pixels": int(mask.sum()),
                "percent": round(100.0 * float(mask.mean()), 4),
                "boxes": [[round(v, 6) for v in box] for box in boxes_from_mask(mask)],
                "empty": not bool(mask.any()),
                "min_area": min_area,
            }
    return Answer(mask, result)


def write_answer(answer: Answer, after_image: np.ndarray, out: str | Path, overwrite: bool = False) -> Path:
    """Write ``mask.png`` (0 / 255), ``overlay.png`` and ``answer.json`` as the folder ``out``
    (``fileio.output_dir``: built beside it and moved in whole; a non-empty ``out`` needs ``overwrite``)."""
    from changescope.fileio import write_outputs
    from changescope.overlay import overlay

    images = {}
    if answer.mask is not None:
        mask = answer.mask.astype(np.uint8)
        images["mask.png"] = Image.fromarray(mask * np.uint8(255), mode="L")
        images["overlay.png"] = overlay(after_image, mask, ["background", "answer"])
    return write_outputs(out, images, "answer.json", answer.result, overwrite)


# -- a whole split ------------------------------------------------------------------------------------


def score_queries(model, processor, dataset, records, batch_size: int = 16) -> dict[str, Any]:
    """Answer every question and ground every query of a split's records; scores as ``evaluate`` reports
    them: ``vqa`` (OA, AA, per_type; closed answers, as CDVQA scores) and ``grounding`` (mIoU, cIoU, at
    each target's own size)."""
    from changescope.metrics.grounding import grounding_scores
    from changescope.metrics.vqa import vqa_scores
    from changescope.tasks.queries import PairQueries, WithQueries

    tasks = [t for t in ("vqa", "grounding") if t in model.tasks and any(r.task == t for r in records)]
    queries = attach(dataset.entries, [r for r in records if r.task in tasks], "records")
    # grounding targets are read below at their own size, not resized by WithQueries
    items = WithQueries(dataset, [PairQueries(q.vqa, []) for q in queries], processor, train=False)
    predicted, truth, qtypes, pred_masks, target_masks = {}, {}, {}, [], []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = [items[i] for i in range(start, min(start + batch_size, len(items)))]
            images = torch.stack([processor.resize(item["image"]) for item in batch])
            out = model(images, masks=False, pixels="grounding" in tasks)
            if "vqa" in tasks:
                rows = [(i, q) for i, item in enumerate(batch) for q in item["vqa"]]
                if rows:
                    index = torch.tensor([i for i, _ in rows])
                    query = model.read_queries(out.memory, [q[0] for _, q in rows], index)
                    for k, ((i, (_, qtype, answer)), (_, closed, _)) in enumerate(
                        zip(rows, _closed(model, query), strict=True)
                    ):
                        key = f"{batch[i]['id']}#{k}"
                        predicted[key], truth[key], qtypes[key] = closed or "", answer, qtype
            if "grounding" in tasks:
                rows = [(i, q) for i, item in enumerate(batch) for q in queries[start + i].grounding]
                if rows:
                    index = torch.tensor([i for i, _ in rows])
                    query = model.read_queries(out.memory, [q for _, (q, _) in rows], index)
                    logits = model.ground(out, query, (processor.image_size,) * 2)
                    for (_, (_, path)), row in zip(rows, logits, strict=True):
                        target = _read_target(path)
                        pred = processor.resize_logits(row[None, None], target.shape)[0, 0] > 0
                        pred_masks.append(pred.numpy())
                        target_masks.append(target)
    result: dict[str, Any] = {}
    if predicted:
        result["vqa"] = vqa_scores(predicted, truth, qtypes)
    if target_masks:
        result["grounding"] = grounding_scores(pred_masks, target_masks)
    return result


def _read_target(path: Path) -> np.ndarray:
    from changescope.data.imageio import read_array

    values = read_array(path)
    return (values[..., 0] if values.ndim == 3 else values) != 0
