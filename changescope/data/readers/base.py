"""Shared machinery for change-captioning datasets stored as Karpathy-style caption JSON.

A reader is a class with declarative attributes (``splits``, ``classes``, ``no_change_sentences``) and two
small hooks: ``_entries`` (which pairs exist, from the JSON) and ``_decode_label`` (label file -> class
ids). Construction checks the JSON and that every listed file exists, so a broken dataset fails at once
with the file named; images are read lazily in ``__getitem__``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from changescope.data.imageio import read_rgb, to_tensor_series
from changescope.data.text import normalize
from changescope.errors import DataError


@dataclass
class PairEntry:
    """One pair as listed by a dataset's index files, before any image is read."""

    id: str
    split: str
    images: tuple[Path, ...]
    captions: list[str]
    flag: bool | None = None
    label: Path | None = None
    source: Path | None = None
    #: further files the pair needs (e.g. SECOND-CC's before-date map), checked like the images
    aux: tuple[Path, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """Every file this pair needs, in a stable order."""
        return [*self.images, *([self.label] if self.label else []), *self.aux]


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, f"invalid JSON at line {err.lineno} ({err.msg})") from None
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None


def karpathy_images(path: Path) -> list[dict[str, Any]]:
    """The ``images`` list of a Karpathy-style caption file, with each entry's required fields checked."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(path, "missing field 'images' (a list of image records)")
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict):
            raise DataError(path, f"images[{index}] is not an object")
        if not isinstance(image.get("filename"), str):
            raise DataError(path, f"images[{index}] is missing field 'filename'")
        name = image["filename"]
        sentences = image.get("sentences")
        if not isinstance(sentences, list):
            raise DataError(path, f"images[{index}] ({name}) is missing field 'sentences'")
        if not sentences:
            raise DataError(path, f"images[{index}] ({name}) has an empty caption list")
        for j, sentence in enumerate(sentences):
            if not isinstance(sentence, dict) or not (
                isinstance(sentence.get("raw"), str) or isinstance(sentence.get("tokens"), list)
            ):
                raise DataError(
                    path, f"images[{index}] ({name}) sentences[{j}] has neither 'raw' nor 'tokens'"
                )
    return data["images"]


def checked_root_and_split(
    root: str | Path, split: str, name: str, splits: tuple[str, ...]
) -> tuple[Path, str]:
    """The dataset directory and split a reader was asked for, or a one-line error naming the directory."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset directory not found")
    if split not in splits:
        raise DataError(root, f"unknown split '{split}' for {name} (known: {', '.join(splits)})")
    return root, split


def parse_changeflag(path: Path, image: dict[str, Any]) -> bool | None:
    """The optional Karpathy-record ``changeflag`` (0 / 1) as a bool; None when absent."""
    if "changeflag" not in image:
        return None
    value = image["changeflag"]
    if value in (0, 1, "0", "1", True, False):
        return bool(int(value))
    raise DataError(path, f"{image['filename']}: changeflag must be 0 or 1, got {value!r}")


def sentence_text(sentence: dict[str, Any]) -> str:
    """The caption as written: ``raw`` when present (stripped), else the ``tokens`` joined."""
    raw = sentence.get("raw")
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    return " ".join(str(t) for t in sentence.get("tokens", []))


class CaptionPairDataset(torch.utils.data.Dataset):
    """Base for pair datasets with captions (and optionally change masks)."""

    name: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: mask class names, index = class id; empty when the dataset has no masks
    classes: ClassVar[tuple[str, ...]] = ()
    #: the dataset's fixed no-change sentences, compared after ``normalize``
    no_change_sentences: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, split: str = "train", check_files: bool = True):
        self.root, self.split = checked_root_and_split(root, split, self.name, self.splits)
        self.entries: list[PairEntry] = [e for e in self._entries() if e.split == split]
        if check_files:
            for entry in self.entries:
                for path in entry.files():
                    if not path.is_file():
                        raise DataError(
                            path, f"file not found (listed for pair '{entry.id}' in {entry.source})"
                        )

    # hooks ----------------------------------------------------------------------------------------
    def _entries(self) -> list[PairEntry]:
        raise NotImplementedError

    def _decode_label(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------------
    @property
    def has_masks(self) -> bool:
        return bool(self.classes)

    @classmethod
    def changed_from_captions(cls, captions: list[str]) -> bool | None:
        """False if every caption is a no-change sentence, True if none is, None if they are mixed."""
        fixed = {normalize(s) for s in cls.no_change_sentences}
        hits = [normalize(c) in fixed for c in captions]
        if all(hits):
            return False
        if not any(hits):
            return True
        return None

    def changed(self, entry: PairEntry) -> bool:
        if entry.flag is not None:
            return entry.flag
        derived = self.changed_from_captions(entry.captions)
        return True if derived is None else derived

    def read_images(self, entry: PairEntry) -> list[np.ndarray]:
        return one_size(entry.images, [read_rgb(p) for p in entry.images])

    def read_mask(self, entry: PairEntry, shape: tuple[int, int]) -> np.ndarray | None:
        if entry.label is None:
            return None
        return self._decode_label(entry.label, shape)

    def _targets(self, entry: PairEntry, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        """Per-pixel targets of a pair as sample keys; richer datasets add keys (e.g. ``semantic``)."""
        mask = self.read_mask(entry, shape)
        return {} if mask is None else {"mask": mask}

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        arrays = self.read_images(entry)
        sample: dict[str, Any] = {
            "id": entry.id,
            "image": to_tensor_series(arrays),
            "captions": list(entry.captions),
            "changed": self.changed(entry),
        }
        for key, value in self._targets(entry, arrays[0].shape[:2]).items():
            sample[key] = torch.from_numpy(value.astype(np.int64))
        return sample


def one_size(paths: Sequence[Path], arrays: list[np.ndarray], noun: str = "pair") -> list[np.ndarray]:
    """``arrays`` (decoded from ``paths``, in order) when they share one size, else an error naming the
    first file whose size differs from the first file's."""
    first = paths[0]
    for path, array in zip(paths[1:], arrays[1:], strict=True):
        if array.shape != arrays[0].shape:
            raise DataError(
                path,
                f"image is {array.shape[1]}x{array.shape[0]} but {first.parent.name}/{first.name} is "
                f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; the images of a {noun} must have one size",
            )
    return arrays


def decode_values(path: Path, values: np.ndarray, value_map: dict[int, int]) -> np.ndarray:
    """Map stored label values to class ids; unknown values are an error that names them."""
    lut = np.full(256, -1, dtype=np.int64)
    for stored, class_id in value_map.items():
        lut[stored] = class_id
    if values.dtype != np.uint8:
        raise DataError(path, f"label is {values.dtype}; expected 8-bit values {sorted(value_map)}")
    out = lut[values]
    if (out < 0).any():
        bad = sorted(int(v) for v in np.unique(values[out < 0]))[:10]
        raise DataError(path, f"label values {bad} are outside the class map {sorted(value_map)}")
    return out


def decode_colors(path: Path, rgb: np.ndarray, color_map: dict[tuple[int, int, int], int]) -> np.ndarray:
    """Map RGB label colours to class ids; unknown colours are an error that names them."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise DataError(path, "label must be an RGB colour image")
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    out = np.full(packed.shape, -1, dtype=np.int64)
    for (r, g, b), class_id in color_map.items():
        out[packed == ((r << 16) | (g << 8) | b)] = class_id
    if (out < 0).any():
        bad = np.unique(packed[out < 0])[:5]
        names = [f"({v >> 16},{(v >> 8) & 255},{v & 255})" for v in bad]
        raise DataError(path, f"label colours {', '.join(names)} are outside the class map")
    return out
