"""Change over a stack of T dates with a pair model: each interval (t, t + 1) as a pair.

This is the consecutive-pairs baseline of issue 17 (and what a user gets today from three or more dates):
the pair model maps and captions every interval on its own, one forward pass per batch of intervals
(``tasks.detection.iter_detections``); the date of change of a pixel is the first interval whose mask
marks it (``metrics.temporal.first_change_map``). It knows nothing of the other dates, so a change seen
in two intervals (e.g. a building under construction, then finished) counts in both, and illumination
shifts between any two dates can read as change: a model that fuses all T dates has to beat it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from changescope.errors import ChangescopeError
from changescope.metrics.temporal import first_change_map
from changescope.postprocess import MIN_AREA


@dataclass
class SequenceChange:
    #: class ids per interval ``[T-1, H, W]`` uint8 at the input size (interval i: date i -> date i + 1)
    interval_masks: np.ndarray
    #: the first interval each pixel changed in ``[H, W]`` int16, -1 where it never did
    first_change: np.ndarray
    #: the pair model's result per interval (classes, objects, caption)
    results: list[dict[str, Any]]
    #: one sentence: "between DATE and DATE <caption>" for each interval with change, joined by "; "
    caption: str


def sequence_caption(captions: Sequence[str | None], changed: Sequence[bool], dates: Sequence[str]) -> str:
    """The captions of the intervals that changed, each after "between A and B"; a no-change sentence
    naming the whole span when none did."""
    parts = [
        f"between {dates[i]} and {dates[i + 1]} {text}"
        for i, (text, flag) in enumerate(zip(captions, changed, strict=True))
        if flag and text
    ]
    return "; ".join(parts) or f"there is no change between {dates[0]} and {dates[-1]}"


def detect_sequence(
    model,
    processor,
    images: Sequence[Any],
    dates: Sequence[str] | None = None,
    min_area: int = MIN_AREA,
    batch_size: int = 16,
) -> SequenceChange:
    """Per-interval change masks, the first-change map and a dated caption for ``images`` (T >= 2 paths,
    PIL images or arrays of one size, oldest first); ``dates`` label the captions (default: "date 1" ...)."""
    from changescope.tasks.detection import iter_detections
    from changescope.tasks.inference import Decoding

    if len(images) < 2:
        raise ChangescopeError(f"a sequence needs at least 2 images, got {len(images)}")
    dates = list(dates) if dates is not None else [f"date {t + 1}" for t in range(len(images))]
    if len(dates) != len(images):
        raise ChangescopeError(f"{len(dates)} dates for {len(images)} images")
    pairs = [(str(t), images[t], images[t + 1]) for t in range(len(images) - 1)]
    found = list(
        iter_detections(model, processor, pairs, min_area, Decoding(batch_size=batch_size), None, batch_size)
    )
    masks = np.stack([d.mask for d in found])
    results = [d.result for d in found]
    changed = [bool(m.any()) for m in masks]
    caption = sequence_caption([r.get("caption") for r in results], changed, dates)
    return SequenceChange(masks, first_change_map(masks), results, caption)
