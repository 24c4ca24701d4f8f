"""SECOND-CC (Karaca et al., JSTARS 2025), read exactly as released.

Layout (SecondCC ``README.md``; the Zenodo archive 10.5281/zenodo.16937571 unpacks to ``SECOND-CC-AUG/``)::

    ROOT/SECOND-CC-AUG.json                        Karpathy style: images[].filename, split, sentences
    ROOT/{train,val,test}/rgb/{A,B}/<filename>     256 x 256 RGB, A = before, B = after
    ROOT/{train,val,test}/sem/{A,B}/<filename>     land-cover maps of each date, colour-coded

The maps use the palette of SECOND (Yang et al.), white wherever nothing changed. A sample's ``mask``
is the after-date class at changed pixels (0 elsewhere) and ``semantic`` holds both dates' class maps.
Maps whose size differs from the images are resized with nearest neighbour: SecondCC's own
``createHD5files.py`` uses ``cv2.resize`` at its bilinear default, which blends class colours into
colours of no class.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from changescope.data.imageio import read_array
from changescope.data.readers.base import (
    CaptionPairDataset,
    PairEntry,
    decode_colors,
    karpathy_images,
    parse_changeflag,
    sentence_text,
)
from changescope.errors import DataError

#: No-change sentences of SECOND-CC (SecondCC ``eval_MModalCC.py``), compared after ``normalize``.
SECOND_NO_CHANGE = (
    "the scene is the same as before",
    "there is no difference",
    "the two scenes seem identical",
    "no change is occurred",
    "almost nothing is changed",
)

#: SECOND's colour for each class id, in class order. Source: ``ST_COLORMAP`` / ``ST_CLASSES`` in
#: ``datasets/RS_ST.py`` of Bi-SRNet and SCanNet (Ding et al.), also Open-CD's ``SECOND_Dataset``.
SECOND_PALETTE: dict[tuple[int, int, int], int] = {
    (255, 255, 255): 0,  # no change
    (0, 0, 255): 1,  # water
    (128, 128, 128): 2,  # non-vegetated ground surface
    (0, 128, 0): 3,  # low vegetation
    (0, 255, 0): 4,  # tree
    (128, 0, 0): 5,  # building
    (255, 0, 0): 6,  # playground
}


def resize_nearest(ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a class-id map with nearest neighbour (pixel centres), so no new values appear."""
    height, width = ids.shape
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * height / shape[0]).astype(np.int64), height - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * width / shape[1]).astype(np.int64), width - 1)
    return ids[rows[:, None], cols[None, :]]


class SecondCC(CaptionPairDataset):
    name = "second-cc"
    caption_file: ClassVar[str] = "SECOND-CC-AUG.json"
    classes = (
        "no change",
        "water",
        "non-vegetated ground surface",
        "low vegetation",
        "tree",
        "building",
        "playground",
    )
    no_change_sentences = SECOND_NO_CHANGE
    palette: ClassVar[dict[tuple[int, int, int], int]] = SECOND_PALETTE

    def _entries(self) -> list[PairEntry]:
        path = self.root / self.caption_file
        entries = []
        for index, image in enumerate(karpathy_images(path)):
            name = image["filename"]
            split = image.get("split")
            if split is None:
                raise DataError(path, f"images[{index}] ({name}) is missing field 'split'")
            if split not in self.splits:
                raise DataError(path, f"images[{index}] ({name}) has unknown split '{split}'")
            folder = self.root / split
            before, after = folder / "sem" / "A" / name, folder / "sem" / "B" / name
            entries.append(
                PairEntry(
                    id=Path(name).stem,
                    split=split,
                    images=(folder / "rgb" / "A" / name, folder / "rgb" / "B" / name),
                    captions=[sentence_text(s) for s in image["sentences"]],
                    flag=parse_changeflag(path, image),
                    label=after,
                    source=path,
                    aux=(before,),
                )
            )
        return entries

    def _decode_label(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        """One colour map -> class ids at the images' size (decoded first, so odd colours are caught)."""
        ids = decode_colors(path, read_array(path), self.palette)
        return ids if ids.shape == shape else resize_nearest(ids, shape)

    def read_semantic(self, entry: PairEntry, shape: tuple[int, int]) -> np.ndarray:
        """Both dates' class maps, ``[2, H, W]`` int64."""
        return np.stack([self._decode_label(path, shape) for path in (*entry.aux, entry.label)])

    @staticmethod
    def change_mask(semantic: np.ndarray) -> np.ndarray:
        """The after-date class where either date is labelled, 0 elsewhere."""
        changed = (semantic[0] != 0) | (semantic[1] != 0)
        return np.where(changed, semantic[1], 0)

    def read_mask(self, entry: PairEntry, shape: tuple[int, int]) -> np.ndarray:
        return self.change_mask(self.read_semantic(entry, shape))

    def _targets(self, entry: PairEntry, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        semantic = self.read_semantic(entry, shape)
        return {"mask": self.change_mask(semantic), "semantic": semantic}
