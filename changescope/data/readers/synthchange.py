"""SynthChange, the built-in procedural benchmark (docs/SYNTHCHANGE.md), read as LEVIR-MCI plus colours.

The generator writes the LEVIR-MCI layout, so :class:`~changescope.data.readers.levir.LevirMCI` reads
it unchanged (roads and buildings; trees and water read as background). This reader differs only in
its class list and in decoding the full RGB colour map of the labels.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from changescope.data.imageio import read_array
from changescope.data.readers.base import decode_colors
from changescope.data.readers.levir import LevirMCI
from changescope.data.synth.classes import LABEL_COLORS, MASK_CLASSES
from changescope.errors import DataError

#: label colour -> class id (``classes.MASK_CLASSES``)
LABEL_CLASSES: dict[tuple[int, int, int], int] = {rgb: i for i, rgb in LABEL_COLORS.items()}


def decode_label(
    path: Path, shape: tuple[int, int], colors: dict[tuple[int, int, int], int] = LABEL_CLASSES
) -> np.ndarray:
    """A SynthChange colour label (a pair's, or a sequence's interval) as class ids, checked against the
    images' ``(height, width)``."""
    rgb = read_array(path)
    if rgb.shape[:2] != shape:
        raise DataError(path, f"label is {rgb.shape[1]}x{rgb.shape[0]}, images are {shape[1]}x{shape[0]}")
    return decode_colors(path, rgb, colors)


class SynthChange(LevirMCI):
    name = "synthchange"
    classes = MASK_CLASSES
    #: label colour -> class id
    label_colors: ClassVar[dict[tuple[int, int, int], int]] = LABEL_CLASSES

    def _decode_label(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        return decode_label(path, shape, self.label_colors)
