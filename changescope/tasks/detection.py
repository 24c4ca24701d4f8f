"""Change detection on an image pair: where things changed, how much, how many objects, and a caption.

``detect_pair`` runs a model with a change-mask head at the model's size, upsamples the class logits to
the input's size, removes objects smaller than ``min_area`` pixels (set to no change) and measures what is
left. An *object* is an 8-connected component of one class's pixels, so a new building touching a new road
counts once for each class. Because small components are removed from the mask itself, the counts are
exactly the connected components of the written ``mask.png``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from changescope.postprocess import CONNECTIVITY, MIN_AREA, remove_small_objects, summarize_mask


@dataclass
class Detection:
    #: class ids ``[H, W]`` uint8 at the input size, small objects removed
    mask: np.ndarray
    #: the JSON result: per class area / percent / objects / boxes, and the caption
    result: dict[str, Any]
    #: the decoded after image ``[H, W, 3]`` uint8, kept for the overlay (None: not kept)
    image: np.ndarray | None = None
    #: the pair's change tokens ``[1, N, D]`` and last backbone level ``[1, 2, C, h, w]`` at the model's size
    #: (what a ChangeLLM reads), when ``iter_detections`` was asked for them
    tokens: tuple[torch.Tensor, torch.Tensor] | None = None


#: an input whose GSD is within this factor of one the model was trained at is used as it is
GSD_TOLERANCE = 1.5


def working_scale(model, gsd: float | None) -> float:
    """The factor to resample an input of ground sampling distance ``gsd`` (m / px) by: 1 when either GSD
    is unknown or the input's is within ``GSD_TOLERANCE`` of one the model was trained at, else the factor
    that brings it to the nearest of them (``gsd / trained``, > 1 enlarges)."""
    trained = model.config.gsd
    if gsd is None or not trained:
        return 1.0
    if gsd <= 0:
        raise ValueError(f"gsd must be positive, got {gsd}")
    nearest = min(trained, key=lambda t: abs(math.log(gsd / t)))
    ratio = gsd / nearest
    return 1.0 if 1 / GSD_TOLERANCE <= ratio <= GSD_TOLERANCE else ratio


#: tiles of a large pair of unknown GSD that the GSD probe reads to pick one change head for all of them
PROBE_TILES = 4


@torch.no_grad()
def head_for_pair(model, processor, pair: torch.Tensor, gsd: float | None = None) -> bool | None:
    """Whether the coarse change head decides a large pair (``[2, 3, H, W]``, cut into tiles at its own
    resolution) of unknown GSD: the GSD probe's mean logit over up to ``PROBE_TILES`` of its tiles,
    spread over it, so that every tile reads one head. None where the GSD is known or the model has no
    probe (``ChangeModel.change_head_for`` decides)."""
    from changescope.data.mix import tile_starts

    if gsd is not None or getattr(model, "gsd_probe", None) is None:
        return None
    t = processor.image_size
    h, w = pair.shape[-2:]
    windows = [(y, x) for y in tile_starts(h, t, t) for x in tile_starts(w, t, t)]
    return probe_says_coarse(model, processor, [pair[..., y : y + t, x : x + t] for y, x in spread(windows)])


def spread(items: list, count: int = PROBE_TILES) -> list:
    """Up to ``count`` of ``items``, evenly spread from the first to the last."""
    picks = np.linspace(0, len(items) - 1, min(count, len(items))).round().astype(int)
    return [items[i] for i in picks]


@torch.no_grad()
def probe_says_coarse(model, processor, tiles: list[torch.Tensor]) -> bool:
    """The GSD probe's verdict on one pair or scene from some of its tiles (``[T, 3, h, w]`` each, its
    first and last date read): the mean of its logits over them, > 0 for coarse imagery."""
    images = torch.stack([processor.resize(tile[[0, -1]]) for tile in tiles])
    with model.autocast():
        levels = model.levels(images.to(next(model.parameters()).device))
    return bool(model.gsd_probe(levels).float().mean() > 0)


@torch.no_grad()
def mask_probabilities(
    model,
    processor,
    pair: torch.Tensor,
    gsd: float | None = None,
    overlap: int = 32,
    batch_size: int = 8,
    coarse: bool | None = None,
) -> torch.Tensor:
    """Per-class probabilities ``[K, H, W]`` at the pair's own size (``pair`` ``[2, 3, H, W]`` in [0, 1]).

    The pair is first resampled to the model's GSD when ``gsd`` is given (which also picks the change
    head of a model with one for coarse imagery, ``ChangeModel.change_head_for``; of unknown GSD, the
    model's GSD probe picks it, once for all the tiles of a large pair: ``head_for_pair``, or ``coarse``
    when the caller already knows). A pair no larger than
    the model's size is resized to it (as in training on chips); a larger one is cut into overlapping
    tiles of the model's size, so its pixels keep their ground resolution instead of being shrunk, and the
    tiles' probabilities are blended with edge ramps (``geo.tiling.blend_weights``).
    """
    from changescope.data.mix import rescale, tile_starts
    from changescope.geo.tiling import blend_weights

    size = tuple(pair.shape[-2:])
    scale = working_scale(model, gsd)
    work = rescale({"image": pair}, scale)["image"] if scale != 1 else pair
    h, w = work.shape[-2:]
    t = processor.image_size
    if h <= t and w <= t:
        out = model(processor.resize(work)[None], gsd=gsd, coarse=coarse)
        logits = processor.resize_logits(out.mask_logits, size)
        return logits.softmax(1)[0]
    if h < t or w < t:  # one side shorter than a tile: pad it (the padding is cropped off below)
        work = F.pad(work, (0, max(0, t - w), 0, max(0, t - h)))
    if coarse is None:
        coarse = head_for_pair(model, processor, work, gsd)
    windows = [(y, x) for y in tile_starts(h, t, t - overlap) for x in tile_starts(w, t, t - overlap)]
    weight = torch.from_numpy(blend_weights(t, overlap))
    total, norm = None, torch.zeros(work.shape[-2:])
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        tiles = torch.stack([work[..., y : y + t, x : x + t] for y, x in chunk])
        probs = model(tiles, gsd=gsd, coarse=coarse).mask_logits.float().softmax(1)
        if total is None:
            total = torch.zeros(probs.shape[1], *work.shape[-2:])
        for (y, x), p in zip(chunk, probs, strict=True):
            total[:, y : y + t, x : x + t] += p * weight
            norm[y : y + t, x : x + t] += weight
    probs = (total / norm)[:, :h, :w]
    return processor.resize_logits(probs[None], size)[0] if (h, w) != size else probs


def predict_mask(
    model, processor, pair: torch.Tensor, gsd: float | None = None, coarse: bool | None = None
) -> np.ndarray:
    """Class ids at the pair's own size: ``pair`` ``[2, 3, H, W]`` in [0, 1] -> ``[H, W]`` uint8."""
    probs = mask_probabilities(model, processor, pair, gsd, coarse=coarse)
    return probs.argmax(0).to(torch.uint8).numpy()


def after_rgb(pair: torch.Tensor) -> np.ndarray:
    """The after image of a decoded pair (``[T, 3, H, W]`` in [0, 1], as ``read_pair`` makes it from uint8)
    back as ``[H, W, 3]`` uint8: exactly the decoded pixels, without reading the file again."""
    return pair[-1].mul(255).round_().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def iter_detections(
    model,
    processor,
    pairs: Iterable[tuple[Any, Any, Any]],
    min_area: int = MIN_AREA,
    decoding=None,
    gsd: float | None = None,
    batch_size: int | None = None,
    captions: bool = True,
    tokens: bool = False,
) -> Iterator[Detection]:
    """A :class:`Detection` per ``(id, before, after)`` of ``pairs``, in order (images: file paths, PIL
    images or arrays, ``imageio.as_rgb``; the id is not used here, callers zip it back).

    ``batch_size`` pairs (default ``decoding.batch_size``) are decoded at a time, so memory stays flat in the
    number of pairs. The pairs of a batch that fit the model's size (at its GSD) go through ONE forward
    pass, which gives both their masks and the change tokens their captions are decoded from; a pair
    larger than the model's size, or one to resample to its GSD, is mapped tile by tile at its own
    resolution (``mask_probabilities``) and captioned whole, resized. Each detection keeps the decoded
    after image (``image``) for its overlay.

    The caption is the decoder's, unless it says "no change" while the mask holds objects; then it is
    written from the mask (``caption_source`` says which, see ``tasks/consistency.py``). ``captions=False``
    skips the decoder (the result's caption is then written from the mask); ``tokens=True`` keeps each pair's
    change tokens and last level (``Detection.tokens``) from the same forward pass, so a ChangeLLM reads
    the pass its citations come from."""
    from changescope.data.imageio import image_name
    from changescope.tasks.consistency import reconcile
    from changescope.tasks.inference import Decoding, caption_pairs

    model.require("mask")
    decoding = decoding or Decoding()
    size = batch_size or decoding.batch_size
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    scale = working_scale(model, gsd)
    classes = list(model.config.classes)
    captions = captions and model.decoder is not None
    remaining = iter(pairs)
    while chunk := list(itertools.islice(remaining, size)):
        decoded = [processor.read_pair(before, after) for _, before, after in chunk]
        fits = [scale == 1 and max(p.shape[-2:]) <= processor.image_size for p in decoded]
        masks: list[np.ndarray | None] = [None] * len(chunk)
        texts: list[str | None] = [None] * len(chunk)
        kept: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(chunk)
        coarse: list[bool | None] = [None] * len(chunk)  # the GSD probe's choice, for a pair of unknown GSD
        with torch.inference_mode():
            batch = [i for i, fit in enumerate(fits) if fit]
            if batch:  # the common case: one forward pass gives the masks and the captions' change tokens
                images = torch.stack([processor.resize(decoded[i]) for i in batch])
                out = model(images, gsd=gsd, last=tokens)
                if tokens:  # with test-time views, the pair as given (the first view)
                    for k, i in enumerate(batch):
                        kept[i] = (out.memory[k : k + 1].float(), out.last[k : k + 1].float())
                if out.coarse is not None:
                    for k, i in enumerate(batch):
                        coarse[i] = bool(out.coarse[k])
                if captions:
                    words = processor.decode(model.generate_from(out.memory, **decoding.kwargs()))
                for k, i in enumerate(batch):
                    logits = processor.resize_logits(out.mask_logits[k : k + 1], tuple(decoded[i].shape[-2:]))
                    masks[i] = logits.argmax(1)[0].to(torch.uint8).numpy()
                    texts[i] = words[k] if captions else None
            for i, fit in enumerate(fits):
                if fit:
                    continue
                # tiles at the pair's own resolution for the mask; the whole pair, resized, for the caption
                coarse[i] = head_for_pair(model, processor, decoded[i], gsd)
                masks[i] = predict_mask(model, processor, decoded[i], gsd, coarse[i])
                if captions:
                    texts[i] = caption_pairs(model, processor, decoded[i][None], decoding)[0]
                if tokens:
                    with model.autocast():
                        levels = model.levels(processor.resize(decoded[i])[None])
                    kept[i] = (model(features=levels, masks=False).memory.float(), levels[-1].float())
        for i, (_, before, after) in enumerate(chunk):
            mask = remove_small_objects(masks[i], min_area)
            summary = summarize_mask(mask, classes)
            text = reconcile(texts[i], summary)
            result = {
                "before": image_name(before),
                "after": image_name(after),
                "caption": text.caption,
                "caption_source": text.source,
                "model_caption": texts[i],
                "min_area": min_area,
                "connectivity": CONNECTIVITY,
                "gsd": gsd,
                "model_gsd": model.config.gsd,
                "change_head": model.change_head_name(gsd, coarse[i]),
                "class_ids": dict(enumerate(model.config.classes)),
                **summary,
            }
            yield Detection(mask, result, after_rgb(decoded[i]), kept[i])
        del decoded, masks


def detect_pair(
    model,
    processor,
    before: str | Path,
    after: str | Path,
    min_area: int = MIN_AREA,
    decoding=None,
    gsd: float | None = None,
) -> Detection:
    """Detect and (if the model captions) describe the changes between two images (file paths, PIL images
    or arrays: ``imageio.as_rgb``): :func:`iter_detections` of one pair."""
    pairs = [("pair", before, after)]
    return next(iter_detections(model, processor, pairs, min_area, decoding, gsd, batch_size=1))


def write_detection(
    detection: Detection, classes: list[str], out: str | Path, overwrite: bool = False
) -> Path:
    """Write ``mask.png``, ``overlay.png`` (over ``detection.image``, the decoded after image) and
    ``result.json`` as the folder ``out`` (``fileio.output_dir``: built beside it and moved in whole; a
    non-empty ``out`` needs ``overwrite``)."""
    from changescope.fileio import write_outputs
    from changescope.overlay import overlay

    if detection.image is None:
        raise ValueError("write_detection needs the detection's after image (Detection.image)")
    images = {
        "mask.png": Image.fromarray(detection.mask, mode="L"),
        "overlay.png": overlay(detection.image, detection.mask, classes),
    }
    return write_outputs(out, images, "result.json", detection.result, overwrite)
