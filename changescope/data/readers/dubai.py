"""Dubai-CC (DUBAI CCD, Hoxha et al.), read exactly as released.

Layout, as Chg2Cap reads it (``preprocess_data.py``, ``data/Dubai_CC/DubaiCC.py``)::

    datasetDubaiCCPublic/description_jsontr_te_val/{Train,Validation,Test}_Dubai_CC.json
    datasetDubaiCCPublic/imgs_tiles/RGB/500_2000/<filename>     before (year 2000), e.g. 6x35.tif
    datasetDubaiCCPublic/imgs_tiles/RGB/500_2010/<filename>     after (year 2010)

ROOT may be ``datasetDubaiCCPublic`` itself or the folder that holds it; ``RGB/`` directly under it is
accepted as well as ``imgs_tiles/RGB/``. Each JSON file is one split, named by its prefix; its records
use ``image_id`` / ``sentence_id`` rather than Karpathy's ``imgid`` / ``sentid``, which this reader never
needs. Chips are 50 x 50 Landsat RGB; captions are capitalised and end with a full stop (``raw`` is kept
as written; ``normalize`` lower-cases it). There is no change flag and there are no masks: ``changed``
comes from the captions, and a pair whose captions mix change and no-change sentences (about 20 of the
500 do) counts as changed.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from changescope.data.readers.base import CaptionPairDataset, PairEntry, karpathy_images, sentence_text
from changescope.errors import DataError

#: No-change sentences of Dubai-CC, compared after ``normalize``. The first 15 are Chg2Cap's list
#: (``test.py``), whose missing commas glue pairs such as "All remained the same " "Everything remains
#: the same " into one string, so those sentences never matched there; here they are separate entries.
#: The rest are the other no-change wordings that occur in the released caption files.
DUBAI_NO_CHANGE = (
    # Chg2Cap's list, commas restored
    "Nothing has changed",
    "There is no difference",
    "All remained the same",
    "Everything remains the same",
    "Nothing has changed in this area",
    "Nothing changed in this area",
    "No changes in this area",
    "No change was made",
    "There is no change to mention",
    "No changes to mention",
    "No changed to mention",
    "No difference in this area",
    "No change to mention",
    "No change occurred in this area",
    "The area appears the same",
    # further wordings found in Train/Validation/Test_Dubai_CC.json
    "No change occurred",
    "No change occurred in the area",
    "No change in this area",
    "No change was made in this area",
    "No change was made in the area",
    "No changes in the area",
    "No changes to mention in the area",
    "No difference in the area",
    "There is no change",
    "There is no change to mention in this area",
    "There is no change to mention in the area",
    "There is no difference in this area",
    "There is no difference in the area",
    "Nothing has changed in the area",
    "All remained the same in this area",
    "All is the same",
    "All is the same in this area",
)


class DubaiCC(CaptionPairDataset):
    name = "dubai-cc"
    no_change_sentences = DUBAI_NO_CHANGE
    caption_dir: ClassVar[str] = "description_jsontr_te_val"
    #: file-name prefix of each caption file -> split
    split_prefixes: ClassVar[dict[str, str]] = {"Train": "train", "Validation": "val", "Test": "test"}
    #: folders of the RGB chips, tried in this order (the release uses the first)
    rgb_dirs: ClassVar[tuple[str, ...]] = ("imgs_tiles/RGB", "RGB")
    before_dir: ClassVar[str] = "500_2000"
    after_dir: ClassVar[str] = "500_2010"

    # layout ---------------------------------------------------------------------------------------
    def dataset_dir(self) -> Path:
        """The folder that holds ``description_jsontr_te_val``: ROOT or its only child that does."""
        if (self.root / self.caption_dir).is_dir():
            return self.root
        found = sorted(p.parent for p in self.root.glob(f"*/{self.caption_dir}") if p.is_dir())
        if len(found) == 1:
            return found[0]
        if not found:
            raise DataError(self.root, f"no '{self.caption_dir}' folder here or one level below")
        names = ", ".join(p.name for p in found)
        raise DataError(self.root, f"several Dubai-CC copies below this folder ({names}); pass one of them")

    def rgb_dir(self, base: Path) -> Path:
        for name in self.rgb_dirs:
            if (base / name).is_dir():
                return base / name
        return base / self.rgb_dirs[0]  # absent: the missing-file errors then name the expected path

    def caption_files(self) -> dict[str, list[Path]]:
        """Caption files by split; a file whose prefix names no split is an error."""
        folder = self.dataset_dir() / self.caption_dir
        by_split: dict[str, list[Path]] = {split: [] for split in self.splits}
        known = ", ".join(f"{prefix}_" for prefix in self.split_prefixes)
        for path in sorted(folder.glob("*.json")):
            prefix = path.name.split("_", 1)[0]
            if prefix not in self.split_prefixes:
                raise DataError(path, f"unknown split: the file name must start with one of {known}")
            by_split[self.split_prefixes[prefix]].append(path)
        return by_split

    # hooks ----------------------------------------------------------------------------------------
    def _entries(self) -> list[PairEntry]:
        # Only the requested split's files are parsed, so one broken file does not hide the others.
        files = self.caption_files()[self.split]
        if not files:
            prefix = next(p for p, s in self.split_prefixes.items() if s == self.split)
            raise DataError(self.dataset_dir() / self.caption_dir / f"{prefix}_*.json", "file not found")
        rgb = self.rgb_dir(self.dataset_dir())
        return [entry for path in files for entry in self._file_entries(path, rgb)]

    def _file_entries(self, path: Path, rgb: Path) -> list[PairEntry]:
        entries = []
        for index, image in enumerate(karpathy_images(path)):
            name = image["filename"]
            # The released files repeat the split in every record; a disagreement means a misplaced file.
            if "split" in image and image["split"] != self.split:
                problem = f"has split '{image['split']}' but the file name says '{self.split}'"
                raise DataError(path, f"images[{index}] ({name}) {problem}")
            entries.append(
                PairEntry(
                    id=Path(name).stem,
                    split=self.split,
                    images=(rgb / self.before_dir / name, rgb / self.after_dir / name),
                    captions=[sentence_text(s) for s in image["sentences"]],
                    source=path,
                )
            )
        return entries
