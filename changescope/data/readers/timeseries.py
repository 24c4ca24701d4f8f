"""Time-series datasets: T >= 2 dates of one place, with a change mask for every interval.

Every reader here gives the same sample::

    id              str
    image           float tensor [T, 3, H, W] in [0, 1], oldest date first, at the native size
    times           list of T ISO dates (YYYY-MM-DD), increasing
    interval_masks  long tensor [T-1, H, W]: interval i is the change from date i to date i + 1;
                    0 no change, else the class id of the change in the reader's ``classes``,
                    255 (``IGNORE_INDEX``) unlabelled
    mask            long tensor [H, W]: the class of each pixel's first change over the sequence, 0 if it
                    never changes, 255 where every interval is unlabelled (so pair code can use
                    first-vs-last)
    captions        list[str], may be empty
    changed         bool: some interval has change

``collate`` stacks ``image``, ``interval_masks`` and ``mask``, so a batch holds sequences of one T.

A reader declares its layout (``name``, ``classes``, ``splits``, ``no_change_sentences``) and fills two
hooks of :class:`SequenceDataset`: ``_entries`` (which sequences exist, from the index files or the
folders; no pixel is read) and ``_interval_masks`` (the labels of one sequence as ``[T-1, H, W]``).
Construction checks every entry's dates and that its files exist, so a broken dataset fails at once with
the file named; pixels are read in ``__getitem__``.

Formats: ``synthchange-sequences`` (:class:`SynthChangeSequences`, written by ``changescope synth
--dates T``) and ``spacenet7`` (:class:`SpaceNet7`, SpaceNet 7 MUDS as released).
"""

from __future__ import annotations

import datetime
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from changescope.data.imageio import read_rgb, to_tensor_series
from changescope.data.readers.base import checked_root_and_split, one_size, read_json
from changescope.data.readers.changedetection import read_list
from changescope.data.readers.synthchange import decode_label
from changescope.data.records import read_jsonl
from changescope.data.sample import IGNORE_INDEX
from changescope.data.synth.classes import MASK_CLASSES
from changescope.errors import DataError, require

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass
class SequenceEntry:
    """One sequence as the dataset's index files or folders list it, before any pixel is read."""

    id: str
    split: str
    #: one image per date, oldest first
    images: list[Path]
    #: ISO dates (YYYY-MM-DD), one per image
    times: list[str]
    captions: list[str] = field(default_factory=list)
    #: the files the labels are made from (per-interval masks, per-date polygons); checked like images
    labels: list[Path] = field(default_factory=list)
    #: where the sequence is listed (``file:line`` or a folder), for error messages
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """Every file this sequence needs, in a stable order."""
        return [*self.images, *self.labels]


def check_times(entry: SequenceEntry) -> None:
    """The dates of a sequence: one per image, at least two, valid ISO dates, strictly increasing."""
    where = entry.source or entry.id
    if len(entry.images) < 2:
        raise DataError(where, f"sequence '{entry.id}' has {len(entry.images)} images; a change needs 2")
    if len(entry.times) != len(entry.images):
        raise DataError(
            where, f"sequence '{entry.id}' has {len(entry.times)} dates for {len(entry.images)} images"
        )
    for text in entry.times:
        if not isinstance(text, str) or not _ISO_DATE.fullmatch(text) or not _valid_date(text):
            raise DataError(where, f"sequence '{entry.id}': {text!r} is not an ISO date (YYYY-MM-DD)")
    for earlier, later in zip(entry.times, entry.times[1:], strict=False):
        if later <= earlier:  # ISO dates sort as text
            raise DataError(
                where, f"sequence '{entry.id}': dates must increase, but {later} follows {earlier}"
            )


def _valid_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def first_change(interval_masks: np.ndarray) -> np.ndarray:
    """``[H, W]``: the class of each pixel's first labelled change, 0 if none, ``IGNORE_INDEX`` where
    every interval is unlabelled."""
    changed = (interval_masks != 0) & (interval_masks != IGNORE_INDEX)
    first = np.take_along_axis(interval_masks, changed.argmax(axis=0)[None], axis=0)[0]
    out = np.where(changed.any(axis=0), first, 0)
    out[(interval_masks == IGNORE_INDEX).all(axis=0)] = IGNORE_INDEX
    return out


class SequenceDataset(torch.utils.data.Dataset):
    """Base for time-series readers: the sample contract of this module."""

    name: ClassVar[str] = ""
    #: the ``--format`` name (same as ``name``)
    format: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: change classes, index = class id (0 = no change); empty when the dataset has no masks
    classes: ClassVar[tuple[str, ...]] = ()
    #: the dataset's fixed no-change sentences (none for the formats here: their captions name dates)
    no_change_sentences: ClassVar[tuple[str, ...]] = ()

    def __init__(self, root: str | Path, split: str = "train", check_files: bool = True):
        self.root, self.split = checked_root_and_split(root, split, self.name, self.splits)
        self.entries: list[SequenceEntry] = [e for e in self._entries() if e.split == split]
        for entry in self.entries:
            check_times(entry)
        if check_files:
            for entry in self.entries:
                for error in self.missing_files(entry):
                    raise error

    # hooks ----------------------------------------------------------------------------------------
    def _entries(self) -> list[SequenceEntry]:
        raise NotImplementedError

    def _interval_masks(self, entry: SequenceEntry, shape: tuple[int, int]) -> np.ndarray:
        """``[T-1, H, W]`` class ids (0 no change, ``IGNORE_INDEX`` unlabelled) of one sequence."""
        raise NotImplementedError

    def read_image(self, path: Path) -> np.ndarray:
        """One date as ``[H, W, 3]`` uint8."""
        return read_rgb(path)

    @classmethod
    def matches(cls, root: Path) -> bool:
        """Whether ``root`` holds this format's layout (for ``detect_format``)."""
        raise NotImplementedError

    # -----------------------------------------------------------------------------------------------
    @property
    def has_masks(self) -> bool:
        return bool(self.classes)

    @staticmethod
    def missing_files(entry: SequenceEntry) -> list[DataError]:
        """One error for each file of ``entry`` that is not there."""
        where = f"needed by sequence '{entry.id}' of {entry.source}"
        return [DataError(path, f"file not found ({where})") for path in entry.files() if not path.is_file()]

    def read_images(self, entry: SequenceEntry) -> list[np.ndarray]:
        return one_size(entry.images, [self.read_image(p) for p in entry.images], noun="sequence")

    def read_interval_masks(self, entry: SequenceEntry, shape: tuple[int, int]) -> np.ndarray:
        """The hook's masks, checked: ``[T-1, H, W]`` and every value a class id or ``IGNORE_INDEX``."""
        masks = self._interval_masks(entry, shape)
        expected = (len(entry.images) - 1, *shape)
        where = entry.labels[0] if entry.labels else entry.source
        if masks.shape != expected:
            raise DataError(
                where, f"sequence '{entry.id}' has interval masks {masks.shape}, expected {expected}"
            )
        bad = (masks >= len(self.classes)) & (masks != IGNORE_INDEX)
        if bad.any():
            values = sorted(int(v) for v in np.unique(masks[bad]))[:10]
            raise DataError(
                where,
                f"sequence '{entry.id}': mask values {values} are not among {len(self.classes)} classes",
            )
        return masks

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        arrays = self.read_images(entry)
        intervals = self.read_interval_masks(entry, arrays[0].shape[:2])
        return {
            "id": entry.id,
            "image": to_tensor_series(arrays),
            "times": list(entry.times),
            "interval_masks": torch.from_numpy(intervals.astype(np.int64, copy=False)),
            "mask": torch.from_numpy(first_change(intervals).astype(np.int64, copy=False)),
            "captions": list(entry.captions),
            "changed": bool(((intervals != 0) & (intervals != IGNORE_INDEX)).any()),
        }


# --------------------------------------------------------------------------------------------------
# synthchange-sequences: the project's own layout
# --------------------------------------------------------------------------------------------------
class SynthChangeSequences(SequenceDataset):
    """SynthChange sequences as ``changescope synth --dates T`` writes them (``data/synth/sequence.py``).

    Layout::

        ROOT/synthchange_sequences.json             manifest ("format": "synthchange_sequences"); detection
        ROOT/sequences.jsonl                        one row per sequence: id, split, dates, images,
                                                    interval_masks, captions (paths relative to ROOT)
        ROOT/sequences/<split>/<id>/t00.png ...     RGB dates, oldest first
        ROOT/sequences/<split>/<id>/interval_00.png ...   RGB label colours (``classes.LABEL_COLORS``)

    Classes are ``MASK_CLASSES`` (background, road, building, tree, water), decoded as the pair labels
    are (``readers/synthchange.py``). ``first_change.png`` is not read: ``mask`` is derived from the
    interval masks, which hold the same information. Splits: each row's ``split``.
    """

    name = format = "synthchange-sequences"
    classes = MASK_CLASSES
    manifest_file: ClassVar[str] = "synthchange_sequences.json"
    manifest_format: ClassVar[str] = "synthchange_sequences"
    index_file: ClassVar[str] = "sequences.jsonl"

    @classmethod
    def matches(cls, root: Path) -> bool:
        return (root / cls.manifest_file).is_file()

    def _entries(self) -> list[SequenceEntry]:
        manifest = read_json(self.root / self.manifest_file)
        if not isinstance(manifest, dict) or manifest.get("format") != self.manifest_format:
            raise DataError(self.root / self.manifest_file, f"not a '{self.manifest_format}' manifest")
        return [self._entry(where, row) for where, row in read_jsonl(self.root / self.index_file)]

    def _entry(self, where: str, row: Any) -> SequenceEntry:
        if not isinstance(row, dict):
            raise DataError(where, "a row must be a JSON object")
        fields = {"id": str, "split": str, "dates": list, "images": list, "interval_masks": list}
        for key, kind in fields.items():
            if not isinstance(row.get(key), kind):
                raise DataError(where, f"missing field '{key}' ({kind.__name__})")
        if not all(isinstance(p, str) for p in row["images"] + row["interval_masks"]):
            raise DataError(where, "'images' and 'interval_masks' must be lists of paths (strings)")
        if row["split"] not in self.splits:
            raise DataError(where, f"unknown split '{row['split']}' (known: {', '.join(self.splits)})")
        if len(row["interval_masks"]) != len(row["images"]) - 1:
            raise DataError(
                where,
                f"{len(row['interval_masks'])} interval masks for {len(row['images'])} images (need T-1)",
            )
        captions = row.get("captions", [])
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise DataError(where, "'captions' must be a list of strings")
        return SequenceEntry(
            id=row["id"],
            split=row["split"],
            images=[self.root / p for p in row["images"]],
            times=row["dates"],
            captions=captions,
            labels=[self.root / p for p in row["interval_masks"]],
            source=where,
        )

    def _interval_masks(self, entry: SequenceEntry, shape: tuple[int, int]) -> np.ndarray:
        return np.stack([decode_label(path, shape) for path in entry.labels])


# --------------------------------------------------------------------------------------------------
# spacenet7: SpaceNet 7 Multi-Temporal Urban Development (MUDS)
# --------------------------------------------------------------------------------------------------
def read_geotiff(path: Path, bands: tuple[int, ...]) -> np.ndarray:
    """``[len(bands), H, W]`` uint8 from a GeoTIFF (1-based ``bands``), read with rasterio."""
    rasterio = require("rasterio", "geo", "reading SpaceNet 7 GeoTIFFs")
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        with rasterio.open(path) as src:
            if src.count < max(bands):
                raise DataError(path, f"{src.count}-band raster; expected at least {max(bands)} bands")
            if src.dtypes[0] != "uint8":
                raise DataError(path, f"{src.dtypes[0]} raster; expected 8-bit values")
            return src.read(list(bands))
    except rasterio.errors.RasterioError as err:
        raise DataError(path, f"not a readable GeoTIFF ({' '.join(str(err).split())})") from None


def read_footprints(path: Path) -> dict[Any, list[dict[str, Any]]]:
    """The polygons of a SpaceNet 7 ``*_Buildings.geojson`` by building ``Id``."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("features"), list):
        raise DataError(path, "not a GeoJSON FeatureCollection (no 'features' list)")
    buildings: dict[Any, list[dict[str, Any]]] = {}
    for index, feature in enumerate(data["features"]):
        properties = feature.get("properties") if isinstance(feature, dict) else None
        building = properties.get("Id") if isinstance(properties, dict) else None
        if not isinstance(building, int | str) or isinstance(building, bool):
            raise DataError(path, f"features[{index}] has no 'Id' property (the building's id across months)")
        geometry = feature.get("geometry")
        if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
            raise DataError(path, f"features[{index}] (Id {building}) is not a Polygon or MultiPolygon")
        buildings.setdefault(building, []).append(geometry)
    return buildings


def rasterize_footprints(path: Path, geometries: list[dict[str, Any]], shape: tuple[int, int]) -> np.ndarray:
    """1 inside the pixel-coordinate ``geometries`` (pixel centre rule, holes kept), 0 elsewhere."""
    features = require("rasterio.features", "geo", "rasterising SpaceNet 7 footprints")
    try:
        # the default transform is the identity: labels_match_pix coordinates are pixel coordinates
        return features.rasterize([(g, 1) for g in geometries], out_shape=shape, fill=0, dtype="uint8")
    except (ValueError, TypeError) as err:
        raise DataError(path, f"cannot rasterise its footprints ({' '.join(str(err).split())})") from None


def select_dates(count: int, step: int, max_dates: int | None) -> list[int]:
    """Indices of the dates kept: every ``step``-th from the first; then, when there are more than
    ``max_dates`` of those, ``max_dates`` of them evenly spread, their first and last included."""
    kept = list(range(0, count, step))
    if max_dates is None or len(kept) <= max_dates:
        return kept
    # round half up: with steps of at least one index, no two picks coincide
    picks = np.floor(np.linspace(0, len(kept) - 1, max_dates) + 0.5).astype(int)
    return [kept[i] for i in picks]


class SpaceNet7(SequenceDataset):
    """SpaceNet 7 Multi-Temporal Urban Development (MUDS; Van Etten et al., CVPR 2021), read as released.

    Layout of ``SN7_buildings_train.tar.gz`` and ``SN7_buildings_test_public.tar.gz``
    (``s3://spacenet-dataset/spacenet/SN7_buildings/tarballs/``) unpacked side by side, as read by the
    CosmiQ baseline (``CosmiQ/CosmiQ_SN7_Baseline``: ``src/sn7_data_prep.py``), torchgeo's ``SpaceNet7``
    (``torchgeo/datasets/spacenet/spacenet7.py``: image folders per release, ``labels``, ``labels_match``,
    ``labels_match_pix``) and kwcoco's SN7 converter (``*_UDM.tif``, 255 = unusable, present for some
    months only; ``Id`` and ``area`` properties)::

        ROOT/train/<AOI>/images/global_monthly_<YYYY>_<MM>_mosaic_<AOI>.tif   RGBA uint8, ~1024 px, ~4 m
        ROOT/train/<AOI>/images_masked/<same name>                            the same, UDM applied
        ROOT/train/<AOI>/labels/<stem>_Buildings.geojson                      footprints, map coordinates
        ROOT/train/<AOI>/labels_match/<stem>_Buildings.geojson                same, ``Id`` kept over months
        ROOT/train/<AOI>/labels_match_pix/<stem>_Buildings.geojson            same Ids, pixel coordinates
        ROOT/train/<AOI>/UDM_masks/<stem>_UDM.tif                             unusable data (clouds)
        ROOT/test_public/<AOI>/images_masked/..., UDM_masks/...               no labels

    ``<AOI>`` looks like ``L15-0331E-1257N_1327_3160_13``; an AOI has 18 to 26 monthly mosaics (months
    without a usable mosaic are missing), 1024 px a side (some 1023). One AOI is one sequence, id = the
    AOI name.

    Dates: year and month from the file name, as ``YYYY-MM-01``, oldest first. ``step`` keeps every
    step-th month, then ``max_dates`` (2..16) keeps that many of those, evenly spread, first and last
    included; by default every month is kept, so T differs between AOIs (batch with ``max_dates``).
    Images: ``images_masked`` (``images`` when it is absent), bands 1-3 (the alpha band is dropped).

    Labels (class 1 ``building``): ``labels_match_pix``, whose coordinates are on the image grid, so
    nothing is reprojected; rasterised by the pixel-centre rule with holes kept. Interval i holds the
    footprints, as drawn at date i + 1, of the buildings whose ``Id`` is at date i + 1 and at no earlier
    kept date: construction. A building already there at the first date is not change, and demolition
    (an ``Id`` that disappears) is not labelled. Pixels the UDM of date i or of date i + 1 marks
    (non-zero) are ``IGNORE_INDEX`` in interval i; a month without a UDM file is usable everywhere.
    ``test_public`` AOIs have no labels: every interval is ``IGNORE_INDEX``.

    Splits: ``test_public`` = the AOIs of ``ROOT/test_public``. The labelled AOIs of ``ROOT/train`` are
    split by name, deterministically: ``crc32(AOI) % 100`` below 70 is ``train``, below 85 ``val``, else
    ``test`` (about 42 / 9 / 9 of the 60), since only they can be scored. ``ROOT/list/{train,val,test}.txt``
    (one AOI name per line), when present, replace that rule (AOIs in no list are left out), e.g. to use a
    published split.
    """

    name = format = "spacenet7"
    classes = ("background", "building")
    splits = ("train", "val", "test", "test_public")
    #: release folder -> whether its AOIs have labels
    releases: ClassVar[dict[str, bool]] = {"train": True, "test_public": False}
    image_dirs: ClassVar[tuple[str, ...]] = ("images_masked", "images")
    label_dir: ClassVar[str] = "labels_match_pix"
    udm_dir: ClassVar[str] = "UDM_masks"
    mosaic_name: ClassVar[re.Pattern] = re.compile(r"global_monthly_(\d{4})_(\d{2})_mosaic_(.+)")
    #: split of a labelled AOI: the first whose bound exceeds crc32(name) % 100
    split_bounds: ClassVar[tuple[tuple[str, int], ...]] = (("train", 70), ("val", 85), ("test", 100))
    list_dir: ClassVar[str] = "list"
    max_dates_limit: ClassVar[int] = 16

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        check_files: bool = True,
        step: int = 1,
        max_dates: int | None = None,
    ):
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise DataError(None, f"step must be a whole number of months >= 1, got {step!r}")
        limit = self.max_dates_limit
        if max_dates is not None and (
            isinstance(max_dates, bool) or not isinstance(max_dates, int) or not 2 <= max_dates <= limit
        ):
            raise DataError(None, f"max_dates must be a whole number from 2 to {limit}, got {max_dates!r}")
        self.step, self.max_dates = step, max_dates
        super().__init__(root, split, check_files)

    @classmethod
    def matches(cls, root: Path) -> bool:
        for release in cls.releases:
            aois = (root / release).iterdir() if (root / release).is_dir() else ()
            for aoi in aois:
                for folder in (aoi / d for d in cls.image_dirs):
                    if folder.is_dir() and next(folder.glob("global_monthly_*.tif"), None) is not None:
                        return True
        return False

    def _entries(self) -> list[SequenceEntry]:
        present = {r: labelled for r, labelled in self.releases.items() if (self.root / r).is_dir()}
        if not present:
            raise DataError(self.root, f"no {' or '.join(self.releases)} folder of AOIs (SpaceNet 7 layout)")
        lists = self._split_lists()
        entries = []
        for release, labelled in present.items():
            for aoi in sorted(d for d in (self.root / release).iterdir() if d.is_dir()):
                if not aoi.name.startswith(".") and self._split_of(aoi.name, labelled, lists) == self.split:
                    entries.append(self._entry(aoi, labelled))
        return entries

    def _split_lists(self) -> dict[str, set[str]]:
        paths = {s: self.root / self.list_dir / f"{s}.txt" for s, _ in self.split_bounds}
        return {s: set(read_list(p)) for s, p in paths.items() if p.is_file()}

    def _split_of(self, aoi: str, labelled: bool, lists: dict[str, set[str]]) -> str | None:
        if not labelled:
            return "test_public"
        if lists:
            return next((s for s, names in lists.items() if aoi in names), None)
        bucket = zlib.crc32(aoi.encode("utf-8")) % 100
        return next(s for s, bound in self.split_bounds if bucket < bound)

    def _entry(self, aoi: Path, labelled: bool) -> SequenceEntry:
        folder = next((aoi / d for d in self.image_dirs if (aoi / d).is_dir()), None)
        if folder is None:
            raise DataError(aoi, f"no {' or '.join(self.image_dirs)} folder")
        months = sorted(self._month(p, aoi.name) for p in folder.iterdir() if p.suffix.lower() == ".tif")
        picked = [months[i] for i in select_dates(len(months), self.step, self.max_dates)]
        images = [path for _, path in picked]
        labels = [aoi / self.label_dir / f"{p.stem}_Buildings.geojson" for p in images] if labelled else []
        return SequenceEntry(
            id=aoi.name,
            split=self.split,
            images=images,
            times=[date for date, _ in picked],
            labels=labels,
            source=str(aoi),
        )

    def _month(self, path: Path, aoi: str) -> tuple[str, Path]:
        match = self.mosaic_name.fullmatch(path.stem)
        if match is None or match.group(3) != aoi or not 1 <= int(match.group(2)) <= 12:
            raise DataError(
                path, f"not a monthly mosaic of this AOI (global_monthly_YYYY_MM_mosaic_{aoi}.tif)"
            )
        return f"{match.group(1)}-{match.group(2)}-01", path

    def read_image(self, path: Path) -> np.ndarray:
        return np.ascontiguousarray(read_geotiff(path, (1, 2, 3)).transpose(1, 2, 0))

    def unusable(self, image: Path, shape: tuple[int, int]) -> np.ndarray:
        """Where the UDM of ``image``'s month marks unusable data; all False without a UDM file."""
        path = image.parent.parent / self.udm_dir / f"{image.stem}_UDM.tif"
        if not path.is_file():
            return np.zeros(shape, bool)
        udm = read_geotiff(path, (1,))[0]
        if udm.shape != shape:
            raise DataError(path, f"UDM is {udm.shape[1]}x{udm.shape[0]}, the image is {shape[1]}x{shape[0]}")
        return udm != 0

    def _interval_masks(self, entry: SequenceEntry, shape: tuple[int, int]) -> np.ndarray:
        count = len(entry.images) - 1
        if not entry.labels:
            return np.full((count, *shape), IGNORE_INDEX, np.uint8)
        # uint8 until the sample is made: 23 intervals of 1024 x 1024 px are 190 MB as int64
        masks = np.zeros((count, *shape), np.uint8)
        seen = set(read_footprints(entry.labels[0]))
        for i, path in enumerate(entry.labels[1:]):
            buildings = read_footprints(path)
            new = [
                g for building, geometries in buildings.items() if building not in seen for g in geometries
            ]
            masks[i] = rasterize_footprints(path, new, shape)
            seen.update(buildings)
        unusable = [self.unusable(image, shape) for image in entry.images]
        for i in range(count):
            masks[i][unusable[i] | unusable[i + 1]] = IGNORE_INDEX
        return masks


#: the time-series formats, in the order ``detect_format`` tries them
DETECTION_ORDER: tuple[type[SequenceDataset], ...] = (SynthChangeSequences, SpaceNet7)


def detect(root: Path) -> str | None:
    """The time-series format whose layout ``root`` holds, or None."""
    for cls in DETECTION_ORDER:
        if cls.matches(root):
            return cls.name
    return None
