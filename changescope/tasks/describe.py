"""``describe``: a caption per pair, checked against the change mask ``detect`` makes for it.

The predictor layer (``tasks/inference.py``) loads models and captions batches; detection
(``tasks/detection.py``) maps change. A caption with a mask head needs both: this module joins them, so
that neither imports the other both ways.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from changescope.data.imageio import image_name
from changescope.postprocess import MIN_AREA
from changescope.tasks.detection import iter_detections
from changescope.tasks.inference import Decoding, batches


def describe_files(
    model, processor, pairs: list[tuple[str, Any, Any]], decoding: Decoding, gsd: float | None = None
) -> list[dict]:
    """Caption pairs of images (paths, PIL images or arrays); the rows of :func:`iter_descriptions`."""
    return list(iter_descriptions(model, processor, pairs, decoding, gsd))


def iter_descriptions(
    model, processor, pairs: list[tuple[str, Any, Any]], decoding: Decoding, gsd: float | None = None
) -> Iterator[dict]:
    """One row per pair, ``decoding.batch_size`` pairs decoded and captioned at a time, so memory stays
    flat in the number of pairs (callers check the files first: ``tasks.pairs.check_pair_files``).

    With a mask head, a caption that says "no change" while the model's own mask holds changed objects is
    replaced by a sentence written from the mask (``caption_source: "mask"``, see ``tasks/consistency.py``).
    That mask is the one ``detect`` makes (``tasks.detection.iter_detections``, the same forward pass as
    the caption for a pair of the model's size, tiles at the pair's own resolution for a larger one), so
    ``describe`` and ``detect`` never disagree on whether a pair changed; ``gsd`` (metres per pixel, when
    known) picks the change head of that mask (``ChangeModel.change_head_for``)."""
    model.require("caption")
    if "mask" in model.tasks:
        found = iter_detections(model, processor, pairs, MIN_AREA, decoding, gsd)
        for (pair_id, a, b), detection in zip(pairs, found, strict=True):
            result = detection.result
            yield {
                "id": pair_id,
                "before": image_name(a),
                "after": image_name(b),
                "caption": result["caption"],
                "caption_source": result["caption_source"],
                "model_caption": result["model_caption"],
            }
        return
    with torch.inference_mode():
        for chunk in batches(pairs, decoding.batch_size):
            images = torch.stack([processor.load_pair(a, b) for _, a, b in chunk])
            out = model(images, masks=False, gsd=gsd)
            texts = processor.decode(model.generate_from(out.memory, **decoding.kwargs()))
            for (pair_id, a, b), text in zip(chunk, texts, strict=True):
                yield {"id": pair_id, "before": image_name(a), "after": image_name(b), "caption": text}
