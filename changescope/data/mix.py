"""Training on several datasets at once, and on large change-detection pairs cut into tiles.

Real change-detection data comes as a few large pairs (SZTAKI 952 x 640, xBD 1024 x 1024, OSCD cities of
about 800 x 800) with binary labels, while captioned data comes as 256 x 256 chips with class masks. A
*mix file* (YAML or JSON) puts them into one training set::

    sources:
      - path: /data/synth4500                  # format detected; chips used as they are
      - path: ../shared/realdata/sztaki-airchange
        repeat: 2                              # each tile listed twice per epoch
        scales: [1.0, 0.5]                     # tiled at the native size and at half size
        val: true                              # false: train split only (not in model selection)
        describe: true                         # captions written from each tile's label mask
    tile: 256                                  # default: the model's image size

``MixedPairs`` reads it as one dataset. Sources without captions whose pairs are larger than ``tile`` are
cut into ``tile`` x ``tile`` tiles (``TiledPairs``: stride ``tile - overlap``, the last row and column
snapped to the edge; pairs smaller than a tile are padded, the padding unlabelled) rather than resized,
so a 0.5 m pair stays at 0.5 m. The class list is the first source's that names classes beyond
background / change; the binary "change" of other sources becomes ``UNKNOWN_CHANGE`` (changed, class not
known), which trains the change / no-change logit and no class.

``paste: {objects: XBD_RELEASE, per_tile: 4, reverse: 0.3, copies: 2}`` pastes roofs cut from the
training pre-disaster footprint masks of an xBD-layout release into the source's tiles
(:mod:`changescope.data.paste`: more building-change examples at the tiles' own GSD; ``gsd`` gives a
source's metres per pixel when its reader does not know them). A pasting source is read in the training
split only, so list the same data once more without ``paste`` for its plain tiles and its validation.

``describe: true`` marks a caption-less source's samples (``sample["describe"]``) so that the training
loader writes each tile a sentence from its own label mask (``tasks.data.describe_mask``: the sentence
writer inference uses); this is how real change-detection pairs train the retrieval head.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from changescope.data.imageio import image_size
from changescope.data.readers.base import PairEntry
from changescope.data.sample import BINARY_CLASSES, UNKNOWN_CHANGE
from changescope.data.sample import IGNORE_INDEX as IGNORE
from changescope.errors import DataError

MIX_SUFFIXES = (".yaml", ".yml", ".json")


def is_mix_file(path: str | Path) -> bool:
    path = Path(path)
    return path.is_file() and path.suffix.lower() in MIX_SUFFIXES


@dataclass
class Source:
    path: str
    format: str | None = None
    repeat: int = 1
    scales: tuple[float, ...] = (1.0,)
    #: read in every split; False: training split only (e.g. keep synthetic data out of model selection)
    val: bool = True
    #: caption-less data: describe each tile from its label mask (see the module docstring)
    describe: bool = False
    #: paste roofs into this source's training tiles (``changescope.data.paste``); such a source is
    #: read in the training split only. Keys: objects (an xbd release), min_pixels, per_tile, reverse,
    #: copies, seed, gsd
    paste: dict[str, Any] | None = None


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Window starts covering ``length``: every ``stride``, the last one snapped so it ends at the edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


class TiledPairs(torch.utils.data.Dataset):
    """A pair dataset's pairs cut into square tiles (optionally after resampling by ``scale``).

    Items are the source's sample dicts cropped to one tile; ``entries`` lists one entry per tile (the
    source entry with ``extra["window"] = (scale, top, left)``). The last decoded pair is kept, so reading
    the tiles of a pair in order decodes it once.
    """

    def __init__(self, dataset, tile: int = 256, overlap: int = 0, scale: float = 1.0):
        if tile < 16 or not 0 <= overlap < tile:
            raise ValueError(f"tile must be >= 16 and 0 <= overlap < tile, got {tile}, {overlap}")
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.dataset, self.tile, self.scale = dataset, tile, scale
        self.classes, self.no_change_sentences = dataset.classes, dataset.no_change_sentences
        self.entries: list[PairEntry] = []
        self._index: list[tuple[int, int, int]] = []
        stride = tile - overlap
        for i, entry in enumerate(dataset.entries):
            h, w = self._pair_size(i, entry)
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
            for top in tile_starts(h, tile, stride):
                for left in tile_starts(w, tile, stride):
                    self._index.append((i, top, left))
                    extra = {**entry.extra, "window": (scale, top, left)}
                    suffix = f"@{scale:g}x:{top},{left}" if scale != 1 else f"@{top},{left}"
                    self.entries.append(replace(entry, id=f"{entry.id}{suffix}", extra=extra))
        self._cache: OrderedDict[int, dict[str, Any]] = OrderedDict()

    @property
    def has_masks(self) -> bool:
        return self.dataset.has_masks

    def _pair_size(self, index: int, entry: PairEntry) -> tuple[int, int]:
        try:
            return image_size(entry.images[0])
        except DataError:  # a format Pillow cannot open (e.g. ENVI rasters): the reader decodes it
            return tuple(self.dataset[index]["image"].shape[-2:])

    def _source(self, index: int) -> dict[str, Any]:
        if index not in self._cache:
            sample = dict(self.dataset[index])
            if self.scale != 1:
                sample = rescale(sample, self.scale)
            self._cache[index] = sample
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        return self._cache[index]

    def __len__(self) -> int:
        return len(self.entries)  # trimming ``entries`` (``--limit-pairs``) trims the dataset

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, top, left = self._index[index]
        sample = self._source(source)
        t = self.tile
        out = {k: v for k, v in sample.items() if k not in ("image", "mask")}
        out["id"] = self.entries[index].id
        out["image"] = _crop(sample["image"], top, left, t, 0.0)
        if "mask" in sample:
            out["mask"] = _crop(sample["mask"], top, left, t, IGNORE)
            out["changed"] = bool(((out["mask"] > 0) & (out["mask"] != IGNORE)).any())
        return out


def tiled_if_uncaptioned(dataset, tile: int):
    """A change-detection dataset (masks, no captions) as tiles of the model's size at its own resolution;
    any other dataset as it is (captions describe a whole pair, so captioned pairs are resized instead)."""
    if isinstance(dataset, (MixedPairs, TiledPairs)) or not dataset.has_masks:
        return dataset
    if any(e.captions for e in dataset.entries) or not len(dataset):
        return dataset
    return TiledPairs(dataset, tile)


def _crop(tensor: torch.Tensor, top: int, left: int, size: int, fill: float) -> torch.Tensor:
    """``tensor[..., top:top+size, left:left+size]``, padded with ``fill`` where the source is smaller."""
    crop = tensor[..., top : top + size, left : left + size]
    h, w = crop.shape[-2:]
    if (h, w) == (size, size):
        return crop.clone()
    return F.pad(crop, (0, size - w, 0, size - h), value=fill)


def rescale(sample: dict[str, Any], scale: float) -> dict[str, Any]:
    """A sample resampled by ``scale`` (images bilinear with antialiasing, masks nearest)."""
    image = sample["image"]
    h, w = image.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = dict(sample)
    out["image"] = F.interpolate(image, size=size, mode="bilinear", antialias=True, align_corners=False)
    out["image"] = out["image"].clamp_(0, 1)
    if "mask" in sample:
        mask = sample["mask"][None, None].float()
        out["mask"] = F.interpolate(mask, size=size, mode="nearest-exact")[0, 0].to(sample["mask"].dtype)
    if sample.get("gsd"):
        out["gsd"] = sample["gsd"] / scale
    return out


class MixedPairs(torch.utils.data.Dataset):
    """The split of every source in a mix file, as one pair dataset (see the module docstring)."""

    name = "mix"

    def __init__(
        self, root: str | Path, split: str = "train", check_files: bool = True, tile: int | None = None
    ):
        from changescope.data.readers import open_dataset

        self.root, self.split = Path(root), split
        spec = read_mix(self.root)
        self.tile = int(spec.get("tile") or tile or 256)
        self.parts: list[Any] = []
        self.repeats: list[int] = []
        self.remaps: list[bool] = []
        self.describes: list[bool] = []
        part_sources: list[str] = []
        datasets, every = [], []
        banks: dict[tuple[str, int], Any] = {}  # one footprint bank per (objects, min_pixels)
        for source in spec["sources"]:
            used = split == "train" or (source.val and not source.paste)
            # a source kept out of this split still counts for the class list (one list in every split)
            ds = open_dataset(source.path, split if used else "train", source.format, check_files=check_files)
            every.append(ds)
            if used:
                datasets.append((source, ds))
        named = [ds.classes for ds in every if ds.classes and tuple(ds.classes) != BINARY_CLASSES]
        binary = [ds.classes for ds in every if tuple(ds.classes) == BINARY_CLASSES]
        self.classes = tuple(named[0]) if named else (BINARY_CLASSES if binary else ())
        for source, ds in datasets:
            if ds.classes and tuple(ds.classes) not in (tuple(self.classes), BINARY_CLASSES):
                raise DataError(
                    self.root,
                    f"source {source.path} has classes {list(ds.classes)}, the mix has {list(self.classes)}; "
                    "mix sources must share one class list (or be binary change data)",
                )
            captioned = any(e.captions for e in ds.entries)
            if source.describe and (captioned or not ds.has_masks):
                raise DataError(
                    self.root, f"source {source.path}: describe is for caption-less data with label masks"
                )
            for scale in source.scales:
                part = ds
                if not captioned and len(ds):
                    part = TiledPairs(ds, self.tile, scale=scale)
                if source.paste and len(ds):
                    part = _pasted(part, source.paste, banks)
                self.parts.append(part)
                self.repeats.append(source.repeat)
                self.remaps.append(tuple(ds.classes) == BINARY_CLASSES and self.classes != BINARY_CLASSES)
                self.describes.append(source.describe)
                part_sources.append(str(source.path))
        self.no_change_sentences = tuple(
            dict.fromkeys(s for _, ds in datasets for s in getattr(ds, "no_change_sentences", ()))
        )
        self._index = [
            (p, i)
            for p, (part, rep) in enumerate(zip(self.parts, self.repeats, strict=True))
            for _ in range(rep)
            for i in range(len(part))
        ]
        self.entries = [self.parts[p].entries[i] for p, i in self._index]
        #: the source (its path) of each entry: training calibrates the change threshold per source
        self.entry_sources = [part_sources[p] for p, _ in self._index]

    @property
    def has_masks(self) -> bool:
        return bool(self.classes)

    def __len__(self) -> int:
        return len(self.entries)  # trimming ``entries`` (``--limit-pairs``) trims the dataset

    def __getitem__(self, index: int) -> dict[str, Any]:
        part, i = self._index[index]
        sample = self.parts[part][i]
        if self.remaps[part] and "mask" in sample:
            mask = sample["mask"]
            sample = {**sample, "mask": torch.where(mask == 1, UNKNOWN_CHANGE, mask)}
        if self.describes[part]:
            sample = {**sample, "describe": True}
        return sample


def _pasted(part, paste: dict[str, Any], banks: dict[tuple[str, int], Any]):
    from changescope.data.paste import MIN_PIXELS, FootprintBank, PastedChange

    key = (paste["objects"], paste.get("min_pixels", MIN_PIXELS))
    if key not in banks:
        banks[key] = FootprintBank.from_dataset(key[0], "train", min_pixels=key[1])
    options = {k: paste[k] for k in PASTE_KEYS if k in paste}
    return PastedChange(part, banks[key], **options)


#: options of a source's ``paste`` besides ``objects`` and ``min_pixels`` (``PastedChange`` arguments)
PASTE_KEYS = ("per_tile", "reverse", "copies", "seed", "gsd")


def _read_paste(path: Path, index: int, paste: Any) -> dict[str, Any] | None:
    if paste is None:
        return None
    where = f"sources[{index}].paste"
    if not isinstance(paste, dict) or not isinstance(paste.get("objects"), str):
        raise DataError(path, f"{where} needs 'objects': the path of an xbd release (footprint masks)")
    bad = sorted(set(paste) - {"objects", "min_pixels", *PASTE_KEYS})
    if bad:
        known = ", ".join(("objects", "min_pixels", *PASTE_KEYS))
        raise DataError(path, f"{where} has unknown keys {bad} (known: {known})")
    for key in ("per_tile", "copies", "seed", "min_pixels"):
        value = paste.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < (0 if key == "seed" else 1):
            raise DataError(path, f"{where}.{key} must be an integer >= {0 if key == 'seed' else 1}")
    gsd = paste.get("gsd")
    if gsd is not None and (isinstance(gsd, bool) or not isinstance(gsd, (int, float)) or gsd <= 0):
        raise DataError(path, f"{where}.gsd must be a positive number of metres per pixel")
    reverse = paste.get("reverse", 0.0)
    if not isinstance(reverse, (int, float)) or not 0 <= reverse <= 1:
        raise DataError(path, f"{where}.reverse must be a number in [0, 1]")
    objects = Path(paste["objects"]).expanduser()
    objects = objects if objects.is_absolute() else path.parent / objects
    return {**paste, "objects": str(objects)}


def read_mix(path: Path) -> dict[str, Any]:
    """The mix file's sources (paths relative to the file) and options, checked."""
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            spec = json.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except Exception as err:  # json.JSONDecodeError / yaml.YAMLError: both mean the same to the user
        raise DataError(path, f"not a readable mix file ({err.__class__.__name__})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("sources"), list) or not spec["sources"]:
        raise DataError(
            path, "a mix file needs 'sources': a non-empty list of {path, format, repeat, scales}"
        )
    unknown = sorted(set(spec) - {"sources", "tile"})
    if unknown:
        raise DataError(path, f"unknown mix keys {unknown} (known: sources, tile)")
    sources = []
    for index, item in enumerate(spec["sources"]):
        item = {"path": item} if isinstance(item, str) else item
        if not isinstance(item, dict) or not isinstance(item.get("path"), str):
            raise DataError(path, f"sources[{index}] needs a 'path'")
        bad = sorted(set(item) - {"path", "format", "repeat", "scales", "val", "describe", "paste"})
        if bad:
            raise DataError(path, f"sources[{index}] has unknown keys {bad}")
        repeat = item.get("repeat", 1)
        scales = item.get("scales", [1.0])
        if not isinstance(repeat, int) or repeat < 1:
            raise DataError(path, f"sources[{index}].repeat must be an integer >= 1")
        if (
            not isinstance(scales, list)
            or not scales
            or not all(isinstance(s, (int, float)) and s > 0 for s in scales)
        ):
            raise DataError(path, f"sources[{index}].scales must be a list of positive numbers")
        where = Path(item["path"]).expanduser()
        where = where if where.is_absolute() else (path.parent / where)
        val, describe = item.get("val", True), item.get("describe", False)
        for key, flag in (("val", val), ("describe", describe)):
            if not isinstance(flag, bool):
                raise DataError(path, f"sources[{index}].{key} must be true or false")
        scales = tuple(float(s) for s in scales)
        paste = _read_paste(path, index, item.get("paste"))
        sources.append(Source(str(where), item.get("format"), repeat, scales, val, describe, paste))
    return {"sources": sources, "tile": spec.get("tile")}
