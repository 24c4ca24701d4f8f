"""Change detection on an image pair: where things changed, how much, how many objects, and a caption.

``detect_pair`` runs a model with a change-mask head at the model's size, upsamples the class logits to
the input's size, removes objects smaller than ``min_area`` pixels (set to no change) and measures what is
left. An *object* is an 8-connected component of one class's pixels, so a new building touching a new road
counts once for each class. Because small components are removed from the mask itself, the counts are
exactly the connected components of the written ``mask.png``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from changescope.metrics.grounding import label_components

#: default smallest object kept, in input pixels (about a 3 x 3 blob: speckle, not a building)
MIN_AREA = 10


@dataclass
class Detection:
    #: class ids ``[H, W]`` uint8 at the input size, small objects removed
    mask: np.ndarray
    #: the JSON result: per class area / percent / objects / boxes, and the caption
    result: dict[str, Any]


def _components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the 8-connected components and each component's pixel count (index 0 unused)."""
    labels, n = label_components(binary)
    return labels, np.bincount(labels.ravel(), minlength=n + 1)


def remove_small_objects(mask: np.ndarray, min_area: int) -> np.ndarray:
    """A copy of ``mask`` with every per-class component below ``min_area`` pixels set to 0."""
    out = mask.copy()
    if min_area <= 1:
        return out
    for cls in np.unique(mask):
        if cls == 0:
            continue
        labels, sizes = _components(mask == cls)
        small = np.flatnonzero(sizes < min_area)
        small = small[small > 0]
        if small.size:
            out[np.isin(labels, small)] = 0
    return out


def summarize_mask(mask: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Per change class: changed pixels, percent of the image, and its objects with boxes.

    Boxes are ``[x0, y0, x1, y1]`` pixel edges divided by width / height (so in [0, 1]), in raster order of
    each object's first pixel; ``area`` is in pixels.
    """
    h, w = mask.shape
    total = h * w
    per_class: dict[str, Any] = {}
    for cls, name in enumerate(classes):
        if cls == 0:
            continue
        binary = mask == cls
        labels, sizes = _components(binary)
        objects = _objects(labels, sizes.size - 1, w, h)
        pixels = int(binary.sum())
        per_class[name] = {
            "pixels": pixels,
            "percent": round(100.0 * pixels / total, 4),
            "objects": len(objects),
            "boxes": [o["box"] for o in objects],
            "object_areas": [o["area"] for o in objects],
        }
    changed = int((mask > 0).sum())
    return {
        "size": [w, h],
        "classes": per_class,
        "changed_pixels": changed,
        "changed_percent": round(100.0 * changed / total, 4),
        "objects": sum(c["objects"] for c in per_class.values()),
    }


def _objects(labels: np.ndarray, n: int, w: int, h: int) -> list[dict[str, Any]]:
    if n == 0:
        return []
    ys, xs = np.nonzero(labels)
    comp = labels[ys, xs] - 1
    x0, y0 = np.full(n, w), np.full(n, h)
    x1, y1 = np.full(n, -1), np.full(n, -1)
    np.minimum.at(x0, comp, xs)
    np.minimum.at(y0, comp, ys)
    np.maximum.at(x1, comp, xs)
    np.maximum.at(y1, comp, ys)
    area = np.bincount(comp, minlength=n)
    return [
        {
            "box": [round(float(v), 6) for v in (x0[i] / w, y0[i] / h, (x1[i] + 1) / w, (y1[i] + 1) / h)],
            "area": int(area[i]),
        }
        for i in range(n)
    ]


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


@torch.no_grad()
def mask_probabilities(
    model, processor, pair: torch.Tensor, gsd: float | None = None, overlap: int = 32, batch_size: int = 8
) -> torch.Tensor:
    """Per-class probabilities ``[K, H, W]`` at the pair's own size (``pair`` ``[2, 3, H, W]`` in [0, 1]).

    The pair is first resampled to the model's GSD when ``gsd`` is given. A pair no larger than the model's
    size is resized to it (as in training on chips); a larger one is cut into overlapping tiles of the
    model's size, so its pixels keep their ground resolution instead of being shrunk, and the tiles'
    probabilities are blended with edge ramps (``geo.tiling.blend_weights``).
    """
    from changescope.data.mix import rescale, tile_starts
    from changescope.geo.tiling import blend_weights

    size = tuple(pair.shape[-2:])
    scale = working_scale(model, gsd)
    work = rescale({"image": pair}, scale)["image"] if scale != 1 else pair
    h, w = work.shape[-2:]
    t = processor.image_size
    if h <= t and w <= t:
        logits = processor.resize_logits(model(processor.resize(work)[None]).mask_logits, size)
        return logits.softmax(1)[0]
    if h < t or w < t:  # one side shorter than a tile: pad it (the padding is cropped off below)
        work = F.pad(work, (0, max(0, t - w), 0, max(0, t - h)))
    windows = [(y, x) for y in tile_starts(h, t, t - overlap) for x in tile_starts(w, t, t - overlap)]
    weight = torch.from_numpy(blend_weights(t, overlap))
    total, norm = None, torch.zeros(work.shape[-2:])
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        tiles = torch.stack([work[..., y : y + t, x : x + t] for y, x in chunk])
        probs = model(tiles).mask_logits.float().softmax(1)
        if total is None:
            total = torch.zeros(probs.shape[1], *work.shape[-2:])
        for (y, x), p in zip(chunk, probs, strict=True):
            total[:, y : y + t, x : x + t] += p * weight
            norm[y : y + t, x : x + t] += weight
    probs = (total / norm)[:, :h, :w]
    return processor.resize_logits(probs[None], size)[0] if (h, w) != size else probs


def predict_mask(model, processor, pair: torch.Tensor, gsd: float | None = None) -> np.ndarray:
    """Class ids at the pair's own size: ``pair`` ``[2, 3, H, W]`` in [0, 1] -> ``[H, W]`` uint8."""
    return mask_probabilities(model, processor, pair, gsd).argmax(0).to(torch.uint8).numpy()


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
    or arrays: ``imageio.as_rgb``).

    The caption is the decoder's, unless it says "no change" while the mask holds objects; then it is
    written from the mask (``caption_source`` says which, see ``tasks/consistency.py``)."""
    from changescope.data.imageio import image_name
    from changescope.tasks.consistency import reconcile
    from changescope.tasks.inference import Decoding, caption_pairs

    model.require("mask")
    pair = processor.read_pair(before, after)
    decoding = decoding or Decoding()
    fits = max(pair.shape[-2:]) <= processor.image_size and working_scale(model, gsd) == 1
    with torch.inference_mode():
        if fits:  # the common case: one forward pass gives the mask and the caption's change tokens
            out = model(processor.resize(pair)[None])
            logits = processor.resize_logits(out.mask_logits, tuple(pair.shape[-2:]))
            mask = remove_small_objects(logits.argmax(1)[0].to(torch.uint8).numpy(), min_area)
            caption = (
                processor.decode(model.generate_from(out.memory, **decoding.kwargs()))[0]
                if model.decoder is not None
                else None
            )
        else:  # tiles at the pair's own resolution for the mask; the whole pair, resized, for the caption
            mask = remove_small_objects(predict_mask(model, processor, pair, gsd), min_area)
            caption = None
            if model.decoder is not None:
                caption = caption_pairs(model, processor, pair[None], decoding)[0]
    summary = summarize_mask(mask, list(model.config.classes))
    text = reconcile(caption, summary)
    result = {
        "before": image_name(before),
        "after": image_name(after),
        "caption": text.caption,
        "caption_source": text.source,
        "model_caption": caption,
        "min_area": min_area,
        "connectivity": 8,
        "gsd": gsd,
        "model_gsd": model.config.gsd,
        "class_ids": dict(enumerate(model.config.classes)),
        **summary,
    }
    return Detection(mask, result)


def write_detection(
    detection: Detection,
    classes: list[str],
    after_image: np.ndarray,
    out: str | Path,
    overwrite: bool = False,
) -> Path:
    """Write ``mask.png``, ``overlay.png`` and ``result.json`` as the folder ``out`` (``fileio.output_dir``:
    built beside it and moved in whole; a non-empty ``out`` needs ``overwrite``)."""
    from changescope.fileio import write_outputs
    from changescope.overlay import overlay

    images = {
        "mask.png": Image.fromarray(detection.mask, mode="L"),
        "overlay.png": overlay(after_image, detection.mask, classes),
    }
    return write_outputs(out, images, "result.json", detection.result, overwrite)
