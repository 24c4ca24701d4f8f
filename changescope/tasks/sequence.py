"""Change over a stack of T dates: a change map and a caption per interval, and the date of change.

Two ways to read a stack, chosen by the model:

* **Temporal** (a model with a temporal head, ``--tasks sequence``): the backbone sees every date once, the
  temporal head decides per interval and pixel whether it changed, looking at all T dates (a cloud or a
  misregistered date that comes and goes is not a change), and the pair heads of each consecutive pair
  name the class and caption the interval (``ChangeModel.sequence``).
* **Consecutive pairs** (any pair model, or ``baseline=True``): the pair model maps and captions every
  interval (t, t + 1) on its own (``tasks.detection.iter_detections``). It knows nothing of the other
  dates, so anything that differs between two dates reads as change. This is the baseline of issue 17.

Either way the date of change of a pixel is the first interval whose mask marks it
(``metrics.temporal.first_change_map``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from changescope.errors import ChangescopeError
from changescope.metrics.temporal import first_change_map
from changescope.postprocess import MIN_AREA, remove_small_objects, summarize_mask


@dataclass
class SequenceChange:
    #: class ids per interval ``[T-1, H, W]`` uint8 at the input size (interval i: date i -> date i + 1)
    interval_masks: np.ndarray
    #: the first interval each pixel changed in ``[H, W]`` int16, -1 where it never did
    first_change: np.ndarray
    #: per interval: dates, classes (area, objects, boxes), caption
    results: list[dict[str, Any]]
    #: one sentence: "between DATE and DATE <caption>" for each interval with change, joined by "; "
    caption: str
    #: "temporal" (the temporal head) or "pairs" (the pair model on each interval)
    method: str = "pairs"
    #: the last date decoded as RGB uint8 ``[H, W, 3]`` (what ``write_sequence`` draws the overlay on)
    image: np.ndarray | None = None


def uses_temporal_head(model, baseline: bool = False, dates: int = 3) -> bool:
    """Whether a stack of ``dates`` is read by the temporal head: where the model has one and there are 3
    or more dates. Two dates are a pair: the pair heads read them as every pair command does, so a pair
    gives the same map through ``scene``, ``detect`` and a 2-date stack."""
    return not baseline and dates >= 3 and "sequence" in model.tasks


def _forward(
    model,
    processor,
    images: torch.Tensor,
    captions: bool,
    gsd: float | None = None,
    coarse: bool | None = None,
):
    """``images`` ``[N, T, 3, H, W]`` -> (class probabilities ``[N, T-1, K, H, W]``, caption token ids per
    interval or None), one batched pass; ``gsd`` (m / px, when known) picks the pair heads' change head."""
    n, t = images.shape[:2]
    if t < 2:
        raise ChangescopeError(f"a sequence needs at least 2 dates, got {t}")
    device = next(model.parameters()).device
    small = processor.resize(images).to(device)
    tokens = None
    with torch.inference_mode():
        if uses_temporal_head(model, dates=t):
            out = model.sequence(small)
            logits, memory = out.mask_logits.flatten(0, 1), out.memory
        else:
            pairs = torch.stack([small[:, :-1], small[:, 1:]], dim=2).flatten(0, 1)
            result = model(pairs, gsd=gsd, coarse=coarse)
            logits, memory = result.mask_logits, result.memory
        if captions and model.decoder is not None and memory is not None:
            tokens = model.generate_from(memory)
        probs = processor.resize_logits(logits, tuple(images.shape[-2:])).softmax(dim=1).float().cpu()
    return probs.reshape(n, t - 1, *probs.shape[1:]), tokens


def interval_probabilities(
    model, processor, images: torch.Tensor, gsd: float | None = None, coarse: bool | None = None
) -> torch.Tensor:
    """Class probabilities of every interval of a batch of sequences: ``images`` ``[N, T, 3, H, W]`` in
    [0, 1] (any size; resized to and from the model) -> ``[N, T - 1, K, H, W]`` float32 on the CPU, where
    interval ``i`` is the change from date ``i`` to date ``i + 1`` and ``K`` the model's classes (0 = no
    change). The temporal head decides change where the model has one and T >= 3, else each consecutive pair
    alone.
    Tiled callers (``scene`` on a stack of GeoTIFFs) blend these per tile."""
    return _forward(model, processor, images, captions=False, gsd=gsd, coarse=coarse)[0]


def sequence_caption(captions: Sequence[str | None], changed: Sequence[bool], dates: Sequence[str]) -> str:
    """The captions of the intervals that changed, each after "between A and B"; a no-change sentence
    naming the whole span when none did."""
    parts = [
        f"between {dates[i]} and {dates[i + 1]} {text}"
        for i, (text, flag) in enumerate(zip(captions, changed, strict=True))
        if flag and text
    ]
    return "; ".join(parts) or f"there is no change between {dates[0]} and {dates[-1]}"


def _check_dates(images: Sequence[Any], dates: Sequence[str] | None) -> list[str]:
    if len(images) < 2:
        raise ChangescopeError(f"a sequence needs at least 2 images, got {len(images)}")
    dates = list(dates) if dates is not None else [f"date {t + 1}" for t in range(len(images))]
    if len(dates) != len(images):
        raise ChangescopeError(f"{len(dates)} dates for {len(images)} images")
    return dates


def detect_sequence(
    model,
    processor,
    images: Sequence[Any],
    dates: Sequence[str] | None = None,
    min_area: int = MIN_AREA,
    batch_size: int = 16,
    baseline: bool = False,
) -> SequenceChange:
    """Per-interval change masks, the first-change map and a dated caption for ``images`` (T >= 2 paths,
    PIL images or arrays of one size, oldest first); ``dates`` label the captions (default: "date 1" ...).
    ``baseline`` reads each interval with the pair heads alone even where the model has a temporal head."""
    dates = _check_dates(images, dates)
    if not uses_temporal_head(model, baseline, len(images)):
        model.require("mask")
        return _consecutive_pairs(model, processor, images, dates, min_area, batch_size)
    from changescope.tasks.consistency import reconcile

    stack = processor.read_stack(images)
    probs, tokens = _forward(model, processor, stack[None], captions=True)
    texts = processor.decode(tokens) if tokens is not None else [None] * (len(images) - 1)
    classes = model.sequence_classes
    masks, results = [], []
    for i, (p, text) in enumerate(zip(probs[0], texts, strict=True)):
        mask = remove_small_objects(p.argmax(0).to(torch.uint8).numpy(), min_area)
        summary = summarize_mask(mask, classes)
        said = reconcile(text, summary)
        results.append(
            {
                "interval": i,
                "from": dates[i],
                "to": dates[i + 1],
                "caption": said.caption,
                "caption_source": said.source,
                "model_caption": text,
                **summary,
            }
        )
        masks.append(mask)
    masks = np.stack(masks)
    changed = [bool(m.any()) for m in masks]
    caption = sequence_caption([r["caption"] for r in results], changed, dates)
    last = stack[-1].mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return SequenceChange(masks, first_change_map(masks), results, caption, "temporal", last)


def _consecutive_pairs(model, processor, images, dates, min_area: int, batch_size: int) -> SequenceChange:
    from changescope.tasks.detection import iter_detections
    from changescope.tasks.inference import Decoding

    pairs = [(str(t), images[t], images[t + 1]) for t in range(len(images) - 1)]
    found = list(
        iter_detections(model, processor, pairs, min_area, Decoding(batch_size=batch_size), None, batch_size)
    )
    masks = np.stack([d.mask for d in found])
    results = [{"interval": i, "from": dates[i], "to": dates[i + 1], **d.result} for i, d in enumerate(found)]
    changed = [bool(m.any()) for m in masks]
    caption = sequence_caption([r.get("caption") for r in results], changed, dates)
    return SequenceChange(masks, first_change_map(masks), results, caption, "pairs", found[-1].image)


def sequence_result(change: SequenceChange, dates: Sequence[str]) -> dict[str, Any]:
    """What ``detect`` / ``describe --json`` report for a stack: the dated caption, each interval's row and
    how many pixels first changed in each interval (the values of ``date_of_change.png``)."""
    first = change.first_change
    values = {"0": "no change"}
    values.update({str(r["interval"] + 1): f"{r['from']} -> {r['to']}" for r in change.results})
    return {
        "dates": list(dates),
        "method": change.method,
        "caption": change.caption,
        "intervals": change.results,
        "date_of_change": {
            "file": "date_of_change.png",
            "values": values,
            "first_changed_pixels": [int((first == i).sum()) for i in range(len(change.results))],
        },
    }


def write_sequence(
    change: SequenceChange,
    result: dict[str, Any],
    out,
    overwrite: bool = False,
    record: str = "result.json",
):
    """Write a stack's detection as the folder ``out`` (built beside it and moved in whole):
    ``interval_<i>.png`` (class ids of interval i, date i -> date i + 1, numbered from 1),
    ``date_of_change.png`` (0: no change, i: first changed in interval i), ``overlay.png`` (the date of
    change over the last date, a colour per interval) and ``result`` as ``record`` (``result.json``)."""
    from PIL import Image

    from changescope.fileio import write_outputs
    from changescope.overlay import overlay

    if change.image is None:
        raise ValueError("write_sequence needs the last date's image (SequenceChange.image)")
    width = len(str(len(change.results)))
    images = {
        f"interval_{i + 1:0{width}d}.png": Image.fromarray(mask, mode="L")
        for i, mask in enumerate(change.interval_masks)
    }
    when = (change.first_change + 1).astype(np.uint8)
    names = ["no change"] + [f"{r['from']} -> {r['to']}" for r in change.results]
    images["date_of_change.png"] = Image.fromarray(when, mode="L")
    images["overlay.png"] = overlay(change.image, when, names)
    return write_outputs(out, images, record, result, overwrite)
