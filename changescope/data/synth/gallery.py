"""A contact sheet of generated pairs: before | after | change mask over the after image, and a caption."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from changescope.data.synth.captions import captions
from changescope.data.synth.classes import MASK_CLASSES
from changescope.data.synth.scene import SynthPair, make_pair
from changescope.data.synth.writer import text_rng

#: overlay colours for display (the label PNGs use classes.LABEL_COLORS)
OVERLAY = {1: (255, 210, 0), 2: (255, 40, 40), 3: (40, 255, 60), 4: (40, 120, 255)}
_GAP, _CAPTION_H, _HEADER_H = 6, 40, 30


def overlay(pair: SynthPair, alpha: float = 0.55) -> np.ndarray:
    """The after image with the change classes blended in and outlined."""
    out = pair.image_b.astype(np.float32)
    for cls, color in OVERLAY.items():
        sel = pair.mask == cls
        out[sel] = (1 - alpha) * out[sel] + alpha * np.asarray(color, np.float32)
    changed = pair.mask != 0
    edge = changed & ~(
        np.pad(changed, 1, mode="edge")[2:, 1:-1]
        & np.pad(changed, 1, mode="edge")[:-2, 1:-1]
        & np.pad(changed, 1, mode="edge")[1:-1, 2:]
        & np.pad(changed, 1, mode="edge")[1:-1, :-2]
    )
    out[edge] = (255, 255, 255)
    return out.astype(np.uint8)


def pick_pairs(seed: int, n: int, size: int, scan: int = 64) -> list[SynthPair]:
    """The first pairs of the dataset that together show every change type, plus unchanged ones."""
    chosen: list[SynthPair] = []
    seen: set[str] = set()
    unchanged_wanted = max(n // 4, 1) if n > 1 else 0
    rest: list[SynthPair] = []
    for index in range(scan):
        if len(chosen) >= n:
            break
        pair = make_pair(seed, index, size)
        kinds = {e.kind for e in pair.events}
        if (kinds and not kinds <= seen) or (not kinds and unchanged_wanted > 0):
            chosen.append(pair)
            seen |= kinds
            unchanged_wanted -= not kinds
        else:
            rest.append(pair)
    chosen += rest[: n - len(chosen)]
    return sorted(chosen, key=lambda p: p.index)


def make_gallery(out_png: str | Path, seed: int = 0, n: int = 8, size: int = 256) -> Path:
    """Draw ``n`` pairs of the dataset with ``seed`` (two columns) into ``out_png``; return its path.

    The pairs are the first ones of the dataset that together show every change type and a couple of
    unchanged pairs; each is labelled with its pair index and its first caption.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    font = ImageFont.load_default(size=13)
    columns = 2 if n > 1 else 1
    rows = (n + columns - 1) // columns
    cell_w = 3 * size + 2 * _GAP
    cell_h = size + _CAPTION_H
    width = columns * cell_w + (columns + 1) * 3 * _GAP
    sheet = Image.new("RGB", (width, _HEADER_H + rows * (cell_h + _GAP) + _GAP), "white")
    draw = ImageDraw.Draw(sheet)
    legend = ", ".join(f"{MASK_CLASSES[c]} = rgb{OVERLAY[c]}" for c in OVERLAY)
    title = f"SynthChange seed {seed}: before | after | change mask ({legend})"
    draw.text((3 * _GAP, 8), title, "black", font)
    chars = max(cell_w // 7, 20)
    for k, pair in enumerate(pick_pairs(seed, n, size)):
        x = 3 * _GAP + (k % columns) * (cell_w + 3 * _GAP)
        y = _HEADER_H + (k // columns) * (cell_h + _GAP)
        for j, tile in enumerate((pair.image_a, pair.image_b, overlay(pair))):
            sheet.paste(Image.fromarray(tile), (x + j * (size + _GAP), y))
        caption = captions(pair, text_rng(seed, pair.index))[0]
        lines = textwrap.wrap(f"pair {pair.index}: {caption}", chars)[:2]
        draw.multiline_text((x, y + size + 4), "\n".join(lines), "black", font, spacing=2)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out_png, optimize=True)
    return out_png
