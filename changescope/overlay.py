"""Colour overlays of change masks with a legend (LEVIR-MCI's colours: road yellow, building red)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: overlay colour per class name; LEVIR-MCI draws roads yellow and buildings red
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    "road": (255, 255, 0),
    "building": (255, 0, 0),
    "tree": (0, 200, 0),
    "water": (0, 128, 255),
    "low vegetation": (128, 255, 128),
    "non-vegetated ground surface": (160, 120, 80),
    "playground": (255, 0, 255),
}
_FALLBACK = [(255, 128, 0), (0, 255, 255), (200, 0, 200), (128, 128, 255), (255, 160, 200), (160, 255, 0)]


def class_colours(classes: Sequence[str]) -> list[tuple[int, int, int]]:
    """One colour per class id (class 0, no change, is never drawn)."""
    spare = iter(_FALLBACK * (1 + len(classes) // len(_FALLBACK)))
    return [(0, 0, 0)] + [CLASS_COLOURS.get(name) or next(spare) for name in classes[1:]]


def colour_mask(mask: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """Class ids ``[H, W]`` -> RGB ``[H, W, 3]`` uint8 (black where nothing changed)."""
    palette = np.array(class_colours(classes), dtype=np.uint8)
    return palette[np.clip(mask, 0, len(classes) - 1)]


def overlay(
    image: np.ndarray, mask: np.ndarray, classes: Sequence[str], alpha: float = 0.55, legend: bool = True
) -> Image.Image:
    """The ``image`` (RGB uint8 ``[H, W, 3]``) with changed pixels tinted by class, and a legend."""
    out = image.astype(np.float32)
    changed = mask > 0
    out[changed] = (1 - alpha) * out[changed] + alpha * colour_mask(mask, classes)[changed]
    picture = Image.fromarray(out.round().astype(np.uint8))
    if legend:
        _draw_legend(picture, list(zip(classes, class_colours(classes), strict=True))[1:])
    return picture


def _draw_legend(picture: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
    draw = ImageDraw.Draw(picture)
    size = max(10, min(picture.size) // 24)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        font = ImageFont.load_default()
    pad, line = max(2, size // 4), size + max(2, size // 4)
    width = max(int(draw.textlength(name, font=font)) for name, _ in entries) + line + 2 * pad
    height = line * len(entries) + pad
    draw.rectangle((0, 0, width, height), fill=(255, 255, 255))
    for row, (name, colour) in enumerate(entries):
        top = pad + row * line
        draw.rectangle((pad, top, pad + size, top + size), fill=colour, outline=(0, 0, 0))
        draw.text((2 * pad + size, top), name, fill=(0, 0, 0), font=font)
