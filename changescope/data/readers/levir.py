"""LEVIR-CC and LEVIR-MCI (Liu et al.), read exactly as released.

Layout::

    ROOT/LevirCCcaptions.json                    Karpathy style; ``changeflag`` only in the v1 / MCI copy
    ROOT/images/{train,val,test}/{A,B}/<split>_NNNNNN.png
    ROOT/images/{train,val,test}/label/<same name>.png   (LEVIR-MCI only)

The JSON drives which pairs exist: file numbers have gaps, and images on disk without captions are
ignored. LEVIR-MCI labels are read from channel 0: 128 = road, 255 = building, 0 = background.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from changescope.data.imageio import read_array
from changescope.data.readers.base import (
    CaptionPairDataset,
    PairEntry,
    decode_values,
    karpathy_images,
    parse_changeflag,
    sentence_text,
)
from changescope.errors import DataError

LEVIR_NO_CHANGE = (
    "there is no difference",
    "the two scenes seem identical",
    "the scene is the same as before",
    "no change has occurred",
    "almost nothing has changed",
)


class LevirCC(CaptionPairDataset):
    name = "levir-cc"
    caption_file: ClassVar[str] = "LevirCCcaptions.json"
    no_change_sentences = LEVIR_NO_CHANGE
    label_dir: ClassVar[str | None] = None

    def _entries(self) -> list[PairEntry]:
        path = self.root / self.caption_file
        entries = []
        for index, image in enumerate(karpathy_images(path)):
            split = image.get("split")
            if split is None:
                raise DataError(path, f"images[{index}] ({image['filename']}) is missing field 'split'")
            if split not in self.splits:
                raise DataError(path, f"images[{index}] ({image['filename']}) has unknown split '{split}'")
            name = image["filename"]
            folder = self.root / "images" / split
            entries.append(
                PairEntry(
                    id=Path(name).stem,
                    split=split,
                    images=(folder / "A" / name, folder / "B" / name),
                    captions=[sentence_text(s) for s in image["sentences"]],
                    flag=parse_changeflag(path, image),
                    label=folder / self.label_dir / name if self.label_dir else None,
                    source=path,
                )
            )
        return entries


class LevirMCI(LevirCC):
    name = "levir-mci"
    classes = ("background", "road", "building")
    label_dir = "label"
    #: stored value in channel 0 -> class id
    label_values: ClassVar[dict[int, int]] = {0: 0, 128: 1, 255: 2}

    def _decode_label(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        values = read_array(path)
        if values.ndim == 3:
            values = values[:, :, 0]
        if values.shape != shape:
            raise DataError(
                path, f"label is {values.shape[1]}x{values.shape[0]}, images are {shape[1]}x{shape[0]}"
            )
        return decode_values(path, values, self.label_values)
