"""Change-detection datasets: image pairs with a binary change mask and no captions, read as released.

Every reader here gives the same sample::

    id        str
    image     float tensor [2, 3, H, W] in [0, 1], at the native size (nothing is resized)
    mask      long tensor [H, W]: 0 no change, 1 change, 255 (IGNORE_INDEX) unlabelled
    captions  [] (these datasets have none; ``no_change_sentences`` is empty, so no caption check applies)
    changed   bool: True if any mask pixel is 1
    gsd       float, metres per pixel (the class's ``gsd``, or the pair's ``extra["gsd"]``), None if unknown
    times     (OSCD only) the two dates as ISO strings, [] when ``dates.txt`` is absent

Image rule (unlike :func:`changescope.data.imageio.read_rgb`, which refuses grey images): 8-bit only,
used as stored; 1- and 2-band images (SAR, a NIR band, grey with alpha) repeat band 0 in all 3
channels; 3-band images are used as they are; images with more than 3 bands take ``rgb_bands``
(0-based; RGBA gives RGB). Label images with 3 or 4 channels (RGBA ``cm.png``, R=G=B BMPs) are read
from channel 0; palette labels through their palette.

Formats, each a class below with its layout, label rule and split in its docstring:

``folder`` (:class:`ChangeFolder`)
    the generic ``A`` / ``B`` / ``label`` layout of LEVIR-CD, WHU-CD, DSIFN, CDD, SYSU-CD, S2Looking,
    EGY-BCD, with or without split folders and ``list/*.txt``.
``sztaki`` (:class:`SztakiAirChange`), ``oscd`` (:class:`OSCD`), ``xbd`` (:class:`XBD`),
``landsat`` (:class:`LandsatSparse`)
    one release each, in the layout of its repository.
``triplets`` (:class:`SceneTriplets`)
    single-scene benchmarks stored as ``<name>_1``, ``<name>_2``, ``<name>_gt`` (SAR, heterogeneous).

The datasets without an official split get a fixed one, named in the class, so that a held-out real
validation set exists; an empty split is allowed, an unknown split name is an error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from changescope.data.imageio import IMAGE_SUFFIXES, image_size, read_array, to_tensor_pair
from changescope.data.readers.base import CaptionPairDataset, PairEntry, decode_values, one_size, read_json
from changescope.data.sample import BINARY_CLASSES, IGNORE_INDEX
from changescope.errors import DataError

NO_CHANGE, CHANGE = 0, 1
SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------------------
# pixels
# --------------------------------------------------------------------------------------------------
def to_rgb(path: Path, array: np.ndarray, rgb_bands: tuple[int, int, int] = (0, 1, 2)) -> np.ndarray:
    """``[H, W, 3]`` uint8 from a decoded image, by the image rule of this module."""
    if array.dtype != np.uint8:
        raise DataError(path, f"{array.dtype} image; expected 8-bit values")
    if array.ndim == 2:
        array = array[:, :, None]
    bands = array.shape[2]
    if bands < 3:
        return np.ascontiguousarray(np.repeat(array[:, :, :1], 3, axis=2))
    if bands == 3:
        return np.ascontiguousarray(array)
    if max(rgb_bands) >= bands:
        wanted = ", ".join(str(b + 1) for b in rgb_bands)
        raise DataError(path, f"{bands}-band image has no band {max(rgb_bands) + 1} (RGB bands {wanted})")
    return np.ascontiguousarray(array[:, :, list(rgb_bands)])


def read_label(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The stored 8-bit values of a label image as ``[H, W]``, checked against the images' size."""
    values = read_array(path)
    if values.dtype == bool:  # 1-bit images
        values = values.astype(np.uint8) * 255
    if values.ndim == 3:
        values = values[:, :, 0]
    if values.dtype != np.uint8:
        raise DataError(path, f"label is {values.dtype}; expected 8-bit values")
    if values.shape != tuple(shape):
        raise DataError(
            path, f"label is {values.shape[1]}x{values.shape[0]}, images are {shape[1]}x{shape[0]}"
        )
    return values


def binarize(values: np.ndarray, threshold: int = 127) -> np.ndarray:
    """1 where the stored value is above ``threshold``, else 0 (stray and lossy values included)."""
    return (values > threshold).astype(np.int64)


def _present(values: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.bincount(values.ravel(), minlength=256))


def _find(folder: Path, name: str) -> Path:
    """``folder/name`` matched without regard to case (``im2.BMP``); ``folder/name`` itself if none."""
    exact = folder / name
    if exact.is_file() or not folder.is_dir():
        return exact
    lower = name.lower()
    for path in sorted(folder.iterdir()):
        if path.name.lower() == lower and path.is_file():
            return path
    return exact


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _by_stem(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem (the first in name order when two share one)."""
    index: dict[str, Path] = {}
    if folder.is_dir():
        for path in _image_files(folder):
            index.setdefault(path.stem, path)
    return index


def read_list(path: Path) -> list[str]:
    """Names in a split list: one per line, blank lines skipped, CRLF and a missing final newline fine.

    Only the last path component of a line counts (``train/A/x.png`` names ``x.png``); the extension
    is optional.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    return [Path(line.strip().replace("\\", "/")).name for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------------------
class ChangeDetectionDataset(CaptionPairDataset):
    """Base for binary change-detection readers: the sample contract of this module.

    Hooks: ``_entries`` (which pairs exist), ``_decode_label`` (label file -> 0 / 1 / 255) or, when a
    mask needs more than one file, ``_decode_mask``. ``changed`` derives from the mask and is cached
    in ``entry.extra["changed"]`` once a mask has been decoded.
    """

    splits = SPLITS
    classes = BINARY_CLASSES
    no_change_sentences = ()
    #: metres per pixel; None when the release does not state it (``entry.extra["gsd"]`` overrides)
    gsd: ClassVar[float | None] = None
    #: 0-based bands used as R, G, B for images with more than 3 bands
    rgb_bands: ClassVar[tuple[int, int, int]] = (0, 1, 2)
    #: stored label values above this are change (``_decode_label``'s default rule)
    label_threshold: ClassVar[int] = 127

    # hooks ----------------------------------------------------------------------------------------
    def _decode_label(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        return binarize(read_label(path, shape), self.label_threshold)

    def _decode_mask(self, entry: PairEntry, shape: tuple[int, int]) -> np.ndarray:
        return self._decode_label(entry.label, shape)

    def _sample_extra(self, entry: PairEntry) -> dict[str, Any]:
        return {}

    # -----------------------------------------------------------------------------------------------
    def pair_gsd(self, entry: PairEntry) -> float | None:
        return entry.extra.get("gsd", self.gsd)

    def read_image(self, path: Path) -> np.ndarray:
        """One image as ``[H, W, 3]`` uint8 (the image rule of this module)."""
        return to_rgb(path, read_array(path), self.rgb_bands)

    def image_shape(self, entry: PairEntry) -> tuple[int, int]:
        """``(height, width)`` of the pair's first image, from its header."""
        return image_size(entry.images[0])

    def read_images(self, entry: PairEntry) -> list[np.ndarray]:
        return one_size(entry.images, [self.read_image(p) for p in entry.images])

    def read_mask(self, entry: PairEntry, shape: tuple[int, int]) -> np.ndarray:
        mask = self._decode_mask(entry, shape)
        entry.extra["changed"] = bool((mask == CHANGE).any())
        return mask

    def changed(self, entry: PairEntry) -> bool:
        """True if any mask pixel is change (decodes the label the first time)."""
        if "changed" not in entry.extra:
            self.read_mask(entry, self.image_shape(entry))
        return entry.extra["changed"]

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        arrays = self.read_images(entry)
        mask = self.read_mask(entry, arrays[0].shape[:2])
        return {
            "id": entry.id,
            "image": to_tensor_pair(*arrays),
            "mask": torch.from_numpy(mask.astype(np.int64)),
            "captions": [],
            "changed": entry.extra["changed"],
            "gsd": self.pair_gsd(entry),
            **self._sample_extra(entry),
        }

    @classmethod
    def matches(cls, root: Path) -> bool:
        """Whether ``root`` holds this format's layout (for ``detect_format``)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# folder: A / B / label
# --------------------------------------------------------------------------------------------------
class ChangeFolder(ChangeDetectionDataset):
    """The generic folder layout of LEVIR-CD, WHU-CD, DSIFN, CDD, SYSU-CD, S2Looking and EGY-BCD.

    Layout, either::

        ROOT/{train,val,test}/{A,B,label}/NAME        split folders (a missing one is an empty split)
        ROOT/{A,B,label}/NAME                         one folder of pairs
        ROOT/list/{train,val,test}.txt                optional, one NAME per line
        ROOT/changescope.json                         optional: {"gsd": 0.5, "labels": "0-255"}

    ROOT may also be a folder whose only dataset-like subfolder holds the layout (EGY-BCD's
    ``NCC samples``). The before / after / label folders may be named as in ``before_dirs``,
    ``after_dirs`` and ``label_dirs`` (CDD: ``OUT``, SYSU-CD: ``time1`` / ``time2``); the first that
    exists is used. The after image and the label are matched to the before image by name, or else by
    stem (a ``.jpg`` pair with ``.png`` labels).

    Splits: with split folders, a split is the images of its ``A`` folder, or the names of
    ``list/<split>.txt`` when that exists; with one folder of pairs, the lists say which pair is in which
    split (unlisted pairs are left out) and without lists every pair is ``train``. Lines keep only their
    last path component, with or without extension. Ids: the stem, prefixed ``<split>/`` with split
    folders (CDD repeats names across splits).

    Label rule (``labels`` in ``changescope.json``, default ``auto``): ``0-1`` maps 0 / 1 as they are
    and any other value is an error; ``0-255`` makes values above 127 change; ``auto`` decides per file:
    a label with values only in {0, 1} is read as is, a label with a value above 127 is read as
    ``0-255`` (JPEG labels and stray values are binarised), and a label with values in 2..127 but none
    above is an error (it is neither binary coding). GSD: ``gsd`` in ``changescope.json``, else unknown.
    """

    name = "folder"
    before_dirs: ClassVar[tuple[str, ...]] = ("A", "time1", "Image1", "im1", "T1")
    after_dirs: ClassVar[tuple[str, ...]] = ("B", "time2", "Image2", "im2", "T2")
    label_dirs: ClassVar[tuple[str, ...]] = ("label", "gt", "OUT", "mask", "labels")
    list_dir: ClassVar[str] = "list"
    config_file: ClassVar[str] = "changescope.json"
    label_codings: ClassVar[tuple[str, ...]] = ("auto", "0-1", "0-255")
    label_coding: str = "auto"

    @classmethod
    def pair_dirs(cls, folder: Path) -> tuple[Path, Path, Path] | None:
        found = []
        for names in (cls.before_dirs, cls.after_dirs, cls.label_dirs):
            path = next((folder / n for n in names if (folder / n).is_dir()), None)
            if path is None:
                return None
            found.append(path)
        return found[0], found[1], found[2]

    @classmethod
    def _has_layout(cls, folder: Path) -> bool:
        return cls.pair_dirs(folder) is not None or any(cls.pair_dirs(folder / s) for s in SPLITS)

    @classmethod
    def matches(cls, root: Path) -> bool:
        return cls._has_layout(root) or any(
            cls._has_layout(d) for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")
        )

    def _base(self) -> Path:
        if self._has_layout(self.root):
            return self.root
        found = [d for d in sorted(self.root.iterdir()) if d.is_dir() and self._has_layout(d)]
        if not found:
            raise DataError(
                self.root, "no A/B/label folders (nor train|val|test/A/B/label) here or one level down"
            )
        if len(found) > 1:
            names = ", ".join(d.name for d in found)
            raise DataError(self.root, f"several change-detection folders ({names}); open one of them")
        return found[0]

    def _config(self, base: Path) -> dict[str, Any]:
        path = next(
            (d / self.config_file for d in (base, self.root) if (d / self.config_file).is_file()), None
        )
        if path is None:
            return {}
        config = read_json(path)
        if not isinstance(config, dict):
            raise DataError(path, 'expected a JSON object such as {"gsd": 0.5}')
        unknown = sorted(set(config) - {"gsd", "labels"})
        if unknown:
            raise DataError(path, f"unknown keys {unknown} (known: gsd, labels)")
        gsd = config.get("gsd")
        if gsd is not None and (isinstance(gsd, bool) or not isinstance(gsd, int | float) or gsd <= 0):
            raise DataError(path, f"gsd must be a positive number of metres per pixel, got {gsd!r}")
        if config.get("labels", "auto") not in self.label_codings:
            raise DataError(
                path, f"labels must be one of {', '.join(self.label_codings)}, got {config['labels']!r}"
            )
        return config

    def _entries(self) -> list[PairEntry]:
        base = self._base()
        config = self._config(base)
        self.label_coding = config.get("labels", "auto")
        extra = {} if config.get("gsd") is None else {"gsd": float(config["gsd"])}
        lists = {s: base / self.list_dir / f"{s}.txt" for s in SPLITS}
        lists = {s: p for s, p in lists.items() if p.is_file()}
        entries: list[PairEntry] = []
        split_dirs = {s: self.pair_dirs(base / s) for s in SPLITS}
        if any(split_dirs.values()):
            for split, dirs in split_dirs.items():
                if dirs is not None:
                    entries += self._pairs(dirs, split, lists.get(split), f"{split}/", extra)
        else:
            dirs = self.pair_dirs(base)
            assert dirs is not None  # _base found the layout
            if lists:
                for split, path in lists.items():
                    entries += self._pairs(dirs, split, path, "", extra)
            else:
                entries += self._pairs(dirs, "train", None, "", extra)
        return entries

    def _pairs(
        self,
        dirs: tuple[Path, Path, Path],
        split: str,
        listing: Path | None,
        prefix: str,
        extra: dict[str, Any],
    ) -> list[PairEntry]:
        before_dir, after_dir, label_dir = dirs
        if listing is None:
            befores = _image_files(before_dir)
        else:
            stems = _by_stem(before_dir)
            befores = []
            for name in read_list(listing):
                exact = before_dir / name
                found = stems.get(name) or stems.get(Path(name).stem)
                befores.append(exact if exact.is_file() or found is None else found)
        afters, labels = _by_stem(after_dir), _by_stem(label_dir)
        entries = []
        for before in befores:
            after, label = after_dir / before.name, label_dir / before.name
            entries.append(
                PairEntry(
                    id=f"{prefix}{before.stem}",
                    split=split,
                    images=(before, after if after.is_file() else afters.get(before.stem, after)),
                    captions=[],
                    label=label if label.is_file() else labels.get(before.stem, label),
                    source=listing or before_dir,
                    extra=dict(extra),
                )
            )
        return entries

    def _decode_label(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        values = read_label(path, shape)
        if self.label_coding == "0-1":
            return decode_values(path, values, {0: 0, 1: 1})
        if self.label_coding == "0-255":
            return binarize(values, self.label_threshold)
        present = _present(values)
        if present.max() <= 1:
            return values.astype(np.int64)
        if present.max() <= self.label_threshold:
            bad = [int(v) for v in present if v > 1][:10]
            raise DataError(
                path,
                f"label values {bad} are outside the class map [0, 1] (and none is above "
                f"{self.label_threshold}, as a 0/255 label's change would be)",
            )
        return binarize(values, self.label_threshold)


# --------------------------------------------------------------------------------------------------
# SZTAKI AirChange
# --------------------------------------------------------------------------------------------------
class SztakiAirChange(ChangeDetectionDataset):
    """SZTAKI AirChange Benchmark (Benedek & Sziranyi), as in ChangeDetectionRepository@635c576.

    Layout (ROOT is the folder above ``Dataset/`` or the benchmark folder itself)::

        ROOT/Dataset/SZTAKI_AirChange_Benchmark/{Szada/1..7, Tiszadob/1..5, Archieve}/{im1,im2,gt}.bmp

    Extensions are matched without regard to case (``Szada/5/im2.BMP``, ``Szada/6/gt.BMP``,
    ``Szada/7/im1.BMP``). gt: 255 change, 0 no change, binarised above 127, which makes the few stray
    values (``Szada/6``: 213; ``Tiszadob/4``: 21 ... 252) follow the nearer class. 1.5 m per pixel.

    Split (``pairs``): test = Szada/1 and Tiszadob/3, the test pairs of FC-Siam (Caye Daudt et al.
    2018) and later papers; val = Szada/7 and Tiszadob/5; train = the other 9, Archieve included.
    """

    name = "sztaki"
    gsd = 1.5
    benchmark_dir: ClassVar[str] = "Dataset/SZTAKI_AirChange_Benchmark"
    #: pair id (folder under the benchmark folder) -> split
    pairs: ClassVar[dict[str, str]] = {
        **{f"Szada/{i}": "train" for i in range(1, 8)},
        **{f"Tiszadob/{i}": "train" for i in range(1, 6)},
        "Archieve": "train",
        "Szada/1": "test",
        "Tiszadob/3": "test",
        "Szada/7": "val",
        "Tiszadob/5": "val",
    }
    file_names: ClassVar[tuple[str, str, str]] = ("im1.bmp", "im2.bmp", "gt.bmp")

    @classmethod
    def _benchmark(cls, root: Path) -> Path | None:
        if (root / cls.benchmark_dir).is_dir():
            return root / cls.benchmark_dir
        if (root / "Szada").is_dir() or (root / "Tiszadob").is_dir():
            return root
        return None

    @classmethod
    def matches(cls, root: Path) -> bool:
        return cls._benchmark(root) is not None

    def _entries(self) -> list[PairEntry]:
        base = self._benchmark(self.root)
        if base is None:
            raise DataError(self.root, f"no {self.benchmark_dir}, Szada or Tiszadob folder")
        entries = []
        for pair_id, split in self.pairs.items():
            im1, im2, gt = (_find(base / pair_id, name) for name in self.file_names)
            entries.append(
                PairEntry(id=pair_id, split=split, images=(im1, im2), captions=[], label=gt, source=base)
            )
        return entries


# --------------------------------------------------------------------------------------------------
# OSCD
# --------------------------------------------------------------------------------------------------
class OSCD(ChangeDetectionDataset):
    """Onera Satellite Change Detection (Caye Daudt et al. 2018): the RGB renderings and change maps.

    Two layouts, read together when a ROOT holds both::

        train cities (ChangeDetectionRepository@020f770; ROOT may also be Dataset/OSCD):
        ROOT/Dataset/OSCD/Onera Satellite Change Detection dataset - Images/<city>/pair/img{1,2}.png
        ROOT/Dataset/OSCD/Onera Satellite Change Detection dataset - Images/<city>/dates.txt
        ROOT/Dataset/OSCD/Onera Satellite Change Detection dataset - Train Labels/<city>/cm/cm.png

        test cities (SiamCRNN PR #18):
        ROOT/FCN_version/dataset/OSCD/original_data/testing/<city>/{pair/img1.png, pair/img2.png,
                                                                    cm/cm.png, dates.txt}

    The cities are the folders of ``Train Labels`` (the Images folder of the full release also holds
    the test cities, whose labels ship apart) and of ``testing``. Labels: ``cm.png`` (RGBA in the train
    labels, L in the test ones) is change above 127 in channel 0; without it the train label
    ``<city>-cm.tif`` is read, whose values are 1 = no change, 2 = change (the README's 0 / 1 is
    wrong), anything else an error. 10 m per pixel. ``dates.txt`` (``date_1: YYYYMMDD``) gives
    ``times``.

    Split: train cities are ``train`` except ``val_cities`` (pisa, beirut: two of the 14 official
    train cities, 43 k of their 133 k changed pixels in the 8-city copy); every test city is ``test``.
    """

    name = "oscd"
    gsd = 10.0
    images_dir: ClassVar[str] = "Onera Satellite Change Detection dataset - Images"
    labels_dir: ClassVar[str] = "Onera Satellite Change Detection dataset - Train Labels"
    #: folders under ROOT that may hold the two train-city folders
    train_homes: ClassVar[tuple[str, ...]] = ("Dataset/OSCD", "OSCD", ".")
    #: folders under ROOT that may be the test-city folder
    test_homes: ClassVar[tuple[str, ...]] = (
        "FCN_version/dataset/OSCD/original_data/testing",
        "dataset/OSCD/original_data/testing",
        "OSCD/original_data/testing",
        "original_data/testing",
    )
    val_cities: ClassVar[tuple[str, ...]] = ("beirut", "pisa")
    #: stored value of ``<city>-cm.tif`` -> class id
    tif_values: ClassVar[dict[int, int]] = {1: NO_CHANGE, 2: CHANGE}

    @classmethod
    def _homes(cls, root: Path) -> tuple[Path | None, Path | None]:
        train = next((root / h for h in cls.train_homes if (root / h / cls.labels_dir).is_dir()), None)
        test = next((root / h for h in cls.test_homes if (root / h).is_dir()), None)
        return train, test

    @classmethod
    def matches(cls, root: Path) -> bool:
        return any(home is not None for home in cls._homes(root))

    def _entries(self) -> list[PairEntry]:
        train, test = self._homes(self.root)
        if train is None and test is None:
            raise DataError(self.root, f"no '{self.labels_dir}' folder and no original_data/testing folder")
        entries = []
        if train is not None:
            labels = train / self.labels_dir
            for city in sorted(d for d in labels.iterdir() if d.is_dir()):
                cm = city / "cm" / "cm.png"
                tif = city / "cm" / f"{city.name}-cm.tif"
                label = cm if cm.is_file() or not tif.is_file() else tif
                split = "val" if city.name in self.val_cities else "train"
                entries.append(
                    self._entry(city.name, split, train / self.images_dir / city.name, label, labels)
                )
        if test is not None:
            for city in sorted(d for d in test.iterdir() if d.is_dir()):
                entries.append(self._entry(city.name, "test", city, city / "cm" / "cm.png", test))
        return entries

    def _entry(self, city: str, split: str, folder: Path, label: Path, source: Path) -> PairEntry:
        return PairEntry(
            id=city,
            split=split,
            images=(folder / "pair" / "img1.png", folder / "pair" / "img2.png"),
            captions=[],
            label=label,
            source=source,
            extra={"times": read_dates(folder / "dates.txt")},
        )

    def _decode_label(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        values = read_label(path, shape)
        if path.suffix.lower() in (".tif", ".tiff"):
            return decode_values(path, values, self.tif_values)
        return binarize(values, self.label_threshold)

    def _sample_extra(self, entry: PairEntry) -> dict[str, Any]:
        return {"times": list(entry.extra["times"])}


_DATE_LINE = re.compile(r"^\s*date_([12])\s*:\s*(\d{4})(\d{2})(\d{2})\s*$")


def read_dates(path: Path) -> list[str]:
    """OSCD's ``dates.txt`` (``date_1: 20150704`` / ``date_2: 20180211``) as ISO dates; [] if absent."""
    if not path.is_file():
        return []
    dates: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        match = _DATE_LINE.match(line)
        if match is None:
            raise DataError(path, f"line {number} is not 'date_1: YYYYMMDD' or 'date_2: YYYYMMDD'")
        dates[match.group(1)] = f"{match.group(2)}-{match.group(3)}-{match.group(4)}"
    if set(dates) != {"1", "2"}:
        raise DataError(path, "needs a date_1 and a date_2 line")
    return [dates["1"], dates["2"]]


# --------------------------------------------------------------------------------------------------
# xBD / Ida-BD (DAHiTra layout)
# --------------------------------------------------------------------------------------------------
class XBD(ChangeDetectionDataset):
    """xBD and Ida-BD pre / post-disaster pairs as DAHiTra (Kaur et al. 2023) ships them.

    Layout::

        ROOT/data/xbd/train/{images,masks}/<name>_{pre,post}_disaster.png
        ROOT/data/IdaBD/{images,masks}/<name>_{pre,post}_disaster.png
        (or ROOT/{images,masks}/... for one such folder)

    A pair is a ``*_pre_disaster`` image with its ``*_post_disaster`` image; its mask is the post
    mask, whose damage values are 0 background, 1 no damage, 2 minor, 3 major, 4 destroyed (xView2).
    Change = damage 2 or more (a damaged building); values above 4 are an error. The pre mask (building
    footprints) is not used. 0.5 m per pixel (WorldView / Maxar). Ids: ``<name>``.

    Split (``pair_splits``): test = hurricane-harvey_00000007 (the last xBD pair) and AOI1-tile_2-4;
    val = hurricane-harvey_00000006 and AOI1-tile_2-3; train = every other pair.
    """

    name = "xbd"
    gsd = 0.5
    #: folders under ROOT holding images/ and masks/ (ROOT itself when none does)
    subsets: ClassVar[tuple[str, ...]] = ("data/xbd/train", "data/IdaBD", "xbd/train", "IdaBD")
    pre_suffix: ClassVar[str] = "_pre_disaster"
    post_suffix: ClassVar[str] = "_post_disaster"
    #: post-mask damage value -> class id
    damage_values: ClassVar[dict[int, int]] = {0: NO_CHANGE, 1: NO_CHANGE, 2: CHANGE, 3: CHANGE, 4: CHANGE}
    pair_splits: ClassVar[dict[str, str]] = {
        "hurricane-harvey_00000007": "test",
        "AOI1-tile_2-4": "test",
        "hurricane-harvey_00000006": "val",
        "AOI1-tile_2-3": "val",
    }

    @classmethod
    def _holds_pairs(cls, folder: Path) -> bool:
        images = folder / "images"
        return (
            (folder / "masks").is_dir()
            and images.is_dir()
            and any(p.stem.endswith(cls.pre_suffix) for p in _image_files(images))
        )

    @classmethod
    def _subsets(cls, root: Path) -> list[Path]:
        found = [root / name for name in cls.subsets if cls._holds_pairs(root / name)]
        return found or ([root] if cls._holds_pairs(root) else [])

    @classmethod
    def matches(cls, root: Path) -> bool:
        return bool(cls._subsets(root))

    def _entries(self) -> list[PairEntry]:
        subsets = self._subsets(self.root)
        if not subsets:
            raise DataError(
                self.root, "no images/ + masks/ folder with *_pre_disaster images (data/xbd/train)"
            )
        entries = []
        for folder in subsets:
            for pre in _image_files(folder / "images"):
                if not pre.stem.endswith(self.pre_suffix):
                    continue
                name = pre.stem[: -len(self.pre_suffix)]
                post = f"{name}{self.post_suffix}{pre.suffix}"
                entries.append(
                    PairEntry(
                        id=name,
                        split=self.pair_splits.get(name, "train"),
                        images=(pre, folder / "images" / post),
                        captions=[],
                        label=folder / "masks" / post,
                        source=folder / "images",
                    )
                )
        return entries

    def _decode_label(self, path: Path, shape: tuple[int, int]) -> np.ndarray:
        return decode_values(path, read_label(path, shape), self.damage_values)


# --------------------------------------------------------------------------------------------------
# Landsat Taizhou / Nanjing (ENVI rasters, sparse labels)
# --------------------------------------------------------------------------------------------------
_ENVI_DTYPES = {1: "uint8"}  # data type codes this reader takes; 2, 4, 12 ... are refused


def envi_header(raster: Path) -> Path:
    """The ENVI header of a raster: ``<name>.hdr`` (any case), else ``<stem>.hdr``."""
    for name in (f"{raster.name}.hdr", f"{raster.stem}.hdr"):
        path = _find(raster.parent, name)
        if path.is_file():
            return path
    return raster.with_name(f"{raster.name}.hdr")


def read_envi_header(path: Path) -> dict[str, str]:
    """``key -> value`` of an ENVI header (keys lower-case; ``{...}`` values may span lines)."""
    if not path.is_file():
        raise DataError(path, "file not found")
    text = path.read_text(encoding="latin-1")
    if not text.lstrip().startswith("ENVI"):
        raise DataError(path, "not an ENVI header (the first line must be 'ENVI')")
    fields: dict[str, str] = {}
    pos = text.index("ENVI") + 4
    pattern = re.compile(r"\s*([^=\n]+?)\s*=\s*(\{[^}]*\}|[^\n]*)")
    while pos < len(text):
        match = pattern.match(text, pos)
        if match is None:
            line = text[pos:].strip().splitlines()
            if not line:
                break
            raise DataError(path, f"cannot read header line '{line[0][:60]}'")
        fields[match.group(1).strip().lower()] = match.group(2).strip()
        pos = match.end()
    return fields


def read_envi(raster: Path) -> np.ndarray:
    """An ENVI standard raster as ``[bands, lines, samples]`` uint8, strictly by its header."""
    header = envi_header(raster)
    fields = read_envi_header(header)

    def integer(key: str, default: int | None = None, minimum: int = 1) -> int:
        if key not in fields:
            if default is None:
                raise DataError(header, f"missing '{key}'")
            return default
        try:
            value = int(fields[key])
        except ValueError:
            raise DataError(header, f"'{key}' must be an integer, got {fields[key]!r}") from None
        if value < minimum:
            raise DataError(header, f"'{key}' must be at least {minimum}, got {value}")
        return value

    samples, lines, bands = integer("samples"), integer("lines"), integer("bands")
    offset = integer("header offset", default=0, minimum=0)
    data_type = integer("data type")
    if data_type not in _ENVI_DTYPES:
        raise DataError(header, f"data type {data_type} is not supported (only 1, 8-bit unsigned)")
    interleave = fields.get("interleave", "").lower()
    if interleave not in ("bsq", "bil", "bip"):
        raise DataError(header, f"interleave {fields.get('interleave')!r} is not supported (bsq, bil, bip)")
    if fields.get("byte order", "0") not in ("0", "1"):
        raise DataError(header, f"byte order must be 0 or 1, got {fields['byte order']!r}")
    file_type = fields.get("file type", "ENVI Standard")
    if file_type.lower() != "envi standard":
        raise DataError(header, f"file type {file_type!r} is not supported (ENVI Standard)")
    if not raster.is_file():
        raise DataError(raster, "file not found")
    count = samples * lines * bands
    size = raster.stat().st_size
    if size != offset + count:
        raise DataError(
            raster,
            f"file is {size} bytes; its header ({samples} samples x {lines} lines x {bands} bands, "
            f"offset {offset}) needs {offset + count}",
        )
    data = np.fromfile(raster, dtype=_ENVI_DTYPES[data_type], count=count, offset=offset)
    if interleave == "bsq":
        return data.reshape(bands, lines, samples)
    if interleave == "bil":
        return data.reshape(lines, bands, samples).transpose(1, 0, 2)
    return data.reshape(lines, samples, bands).transpose(2, 0, 1)


class LandsatSparse(ChangeDetectionDataset):
    """Landsat Taizhou (ETM+) and Nanjing (TM), 6-band ENVI rasters with sparse reference samples.

    Layout (ChangeDetectionRepository ``Dataset/Landsat``; ROOT may be any folder above the scenes)::

        ROOT/Dataset/Landsat/<scene>/<raster> + <raster>.hdr   two dates, read in name order
        ROOT/Dataset/Landsat/<scene>/{change,unchanged}.bmp    255 marks a reference pixel

    Rasters: ENVI standard, read with numpy from the header's samples, lines, bands, interleave, data
    type (only 1, uint8) and header offset; other values are an error. RGB = TM / ETM+ bands 3, 2, 1
    (``rgb_bands``, 0-based). The data is 8-bit DN in a narrow dark range (Taizhou band 3: 96 % of pixels
    in 59..102), so each pair gets one linear stretch per band from the 2nd to the 98th percentile of
    both dates pooled: pooling keeps the two dates comparable (a stretch per date would turn an overall
    brightness difference into apparent change), percentiles ignore the few saturated pixels.

    Mask: change.bmp 255 -> 1, unchanged.bmp 255 -> 0, every other pixel 255 (unlabelled; most of the
    scene). Label values other than 0 / 255, and pixels marked in both files, are errors. 30 m.

    Split (``scene_splits``): Taizhou = val (the classic SFA / DSFA benchmark scene), Nanjing = train;
    other scenes train.
    """

    name = "landsat"
    gsd = 30.0
    rgb_bands = (2, 1, 0)
    scene_homes: ClassVar[tuple[str, ...]] = ("Dataset/Landsat", "Landsat", ".")
    change_file: ClassVar[str] = "change.bmp"
    unchanged_file: ClassVar[str] = "unchanged.bmp"
    scene_splits: ClassVar[dict[str, str]] = {"Taizhou": "val", "Nanjing": "train"}
    stretch_percentiles: ClassVar[tuple[float, float]] = (2.0, 98.0)
    label_values: ClassVar[dict[int, int]] = {0: 0, 255: 1}

    @classmethod
    def _scenes(cls, root: Path) -> list[Path]:
        if _find(root, cls.change_file).is_file():
            return [root]
        for home in cls.scene_homes:
            folder = root / home
            if folder.is_dir():
                scenes = [
                    d for d in sorted(folder.iterdir()) if d.is_dir() and _find(d, cls.change_file).is_file()
                ]
                if scenes:
                    return scenes
        return []

    @classmethod
    def matches(cls, root: Path) -> bool:
        return any(any(p.suffix.lower() == ".hdr" for p in scene.iterdir()) for scene in cls._scenes(root))

    def _entries(self) -> list[PairEntry]:
        scenes = self._scenes(self.root)
        if not scenes:
            raise DataError(self.root, f"no scene folder with {self.change_file} (Dataset/Landsat/<scene>)")
        entries = []
        for scene in scenes:
            headers = sorted(p for p in scene.iterdir() if p.suffix.lower() == ".hdr" and p.is_file())
            if len(headers) != 2:
                raise DataError(scene, f"expected 2 ENVI rasters with .hdr headers, found {len(headers)}")
            rasters = tuple(_find(scene, h.stem) for h in headers)
            entries.append(
                PairEntry(
                    id=scene.name,
                    split=self.scene_splits.get(scene.name, "train"),
                    images=rasters,
                    captions=[],
                    label=_find(scene, self.change_file),
                    source=scene,
                    aux=(_find(scene, self.unchanged_file), *headers),
                )
            )
        return entries

    def read_image(self, path: Path) -> np.ndarray:
        return to_rgb(path, read_envi(path).transpose(1, 2, 0), self.rgb_bands)

    def image_shape(self, entry: PairEntry) -> tuple[int, int]:
        fields = read_envi_header(envi_header(entry.images[0]))
        try:
            return int(fields["lines"]), int(fields["samples"])
        except (KeyError, ValueError):
            raise DataError(envi_header(entry.images[0]), "needs integer 'lines' and 'samples'") from None

    def read_images(self, entry: PairEntry) -> list[np.ndarray]:
        return stretch_pair(super().read_images(entry), self.stretch_percentiles)

    def _decode_mask(self, entry: PairEntry, shape: tuple[int, int]) -> np.ndarray:
        unchanged_path = entry.aux[0]
        change = decode_values(entry.label, read_label(entry.label, shape), self.label_values)
        unchanged = decode_values(unchanged_path, read_label(unchanged_path, shape), self.label_values)
        both = int(np.count_nonzero(change & unchanged))
        if both:
            raise DataError(
                entry.label, f"{both} pixels are marked in both {entry.label.name} and {unchanged_path.name}"
            )
        mask = np.full(shape, IGNORE_INDEX, dtype=np.int64)
        mask[unchanged == 1] = NO_CHANGE
        mask[change == 1] = CHANGE
        return mask


def stretch_pair(
    arrays: list[np.ndarray], percentiles: tuple[float, float] = (2.0, 98.0)
) -> list[np.ndarray]:
    """One linear stretch per band for all dates: the low / high percentile of the pooled dates -> 0 / 255.

    A band with no spread (low == high) is left as it is.
    """
    pooled = np.stack(arrays).reshape(-1, arrays[0].shape[-1])
    low, high = np.percentile(pooled, percentiles, axis=0)
    spread = high - low
    out = []
    for array in arrays:
        scaled = (array.astype(np.float64) - low) / np.where(spread > 0, spread, 1.0) * 255.0
        scaled = np.where(spread > 0, scaled, array)
        out.append(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return out


# --------------------------------------------------------------------------------------------------
# single-scene triplets: <name>_1, <name>_2, <name>_gt
# --------------------------------------------------------------------------------------------------
class SceneTriplets(ChangeDetectionDataset):
    """Single-scene benchmarks stored as ``<name>_1.<ext>``, ``<name>_2.<ext>``, ``<name>_gt.<ext>``.

    Covers the SAR scenes of Feng Gao's repositories (Ottawa, Bern, San Francisco, Sulzberger) and the
    homogeneous / heterogeneous scenes of yulisun/INLPG (Yellow River A-D, Beijing A/B, Shuguang,
    Italy). ROOT is searched ``max_depth`` folders deep, in name order; only image files count, so the
    ``.zip`` archives kept next to their ``_unzipped`` folders are skipped. Before / after are matched
    to the gt by stem in its folder. Ids: ``<name>``; one name in two folders is an error.

    Grey images (SAR, NIR; stored as L or as R=G=B) become 3 equal channels. gt: change above 127,
    which also settles INLPG's lossy JPEG Beijing gts (the repository's own threshold is > 128; no
    Beijing gt pixel is 128) and the 582 pixels of value 34 in yellow_C_gt (no change). GSD unknown.

    Split: every pair is ``test`` (out-of-domain evaluation scenes; each is one scene with no split of
    its own), unless ``ROOT/list/<split>.txt`` files exist: then they name the pairs of each split
    and unlisted pairs are left out.
    """

    name = "triplets"
    before_suffix: ClassVar[str] = "_1"
    after_suffix: ClassVar[str] = "_2"
    label_suffix: ClassVar[str] = "_gt"
    list_dir: ClassVar[str] = "list"
    default_split: ClassVar[str] = "test"
    max_depth: ClassVar[int] = 4

    @classmethod
    def _labels(cls, root: Path, first: bool = False) -> list[Path]:
        found = []
        for folder, dirs, files in os.walk(root):
            depth = len(Path(folder).relative_to(root).parts)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < cls.max_depth else []
            for name in sorted(files):
                path = Path(folder) / name
                if path.suffix.lower() in IMAGE_SUFFIXES and path.stem.endswith(cls.label_suffix):
                    found.append(path)
                    if first:
                        return found
        return found

    @classmethod
    def matches(cls, root: Path) -> bool:
        return bool(cls._labels(root, first=True))

    def _entries(self) -> list[PairEntry]:
        labels = self._labels(self.root)
        if not labels:
            raise DataError(
                self.root, f"no <name>{self.label_suffix} image here or {self.max_depth} folders down"
            )
        pairs: dict[str, PairEntry] = {}
        for gt in labels:
            name = gt.stem[: -len(self.label_suffix)]
            if name in pairs:
                other = pairs[name].label
                raise DataError(gt, f"pair '{name}' is also at {other}; ids must be unique")
            stems = _by_stem(gt.parent)
            images = []
            for suffix in (self.before_suffix, self.after_suffix):
                same = gt.with_name(f"{name}{suffix}{gt.suffix}")
                images.append(same if same.is_file() else stems.get(f"{name}{suffix}", same))
            pairs[name] = PairEntry(
                id=name,
                split=self.default_split,
                images=tuple(images),
                captions=[],
                label=gt,
                source=gt.parent,
            )
        lists = {s: self.root / self.list_dir / f"{s}.txt" for s in SPLITS}
        lists = {s: p for s, p in lists.items() if p.is_file()}
        if not lists:
            return list(pairs.values())
        entries = []
        for split, path in lists.items():
            for listed in read_list(path):
                name = listed[: -len(self.label_suffix)] if listed.endswith(self.label_suffix) else listed
                if name not in pairs:
                    raise DataError(
                        path, f"lists '{listed}', but there is no {name}{self.label_suffix} image"
                    )
                entry = pairs[name]
                entries.append(
                    PairEntry(
                        id=name, split=split, images=entry.images, captions=[], label=entry.label, source=path
                    )
                )
        return entries


# --------------------------------------------------------------------------------------------------
#: format name -> class, in the order ``detect_format`` tries them (the specific layouts before the
#: generic folder and the recursive triplet search)
DETECTION_ORDER: tuple[type[ChangeDetectionDataset], ...] = (
    SztakiAirChange,
    OSCD,
    XBD,
    LandsatSparse,
    ChangeFolder,
    SceneTriplets,
)


def detect(root: Path) -> str | None:
    """The change-detection format whose layout ``root`` holds, or None."""
    for cls in DETECTION_ORDER:
        if cls.matches(root):
            return cls.name
    return None
