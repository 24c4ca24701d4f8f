"""When each date of a scene stack was taken: from the caller, the file's metadata or the file's name.

A stack's dates order its intervals and label every output, so each comes from a place a user can check
(``summary.json`` records it per file). For each file the first of these that holds a date wins:

1. ``--dates`` (``given``: one per file): ``YYYY-MM-DD``, ``YYYYMMDD`` or a year ``YYYY``;
2. the file's metadata: ``ACQUISITIONDATETIME`` (GDAL's ``IMAGERY`` domain, or the default one),
   ``DATE_ACQUIRED`` (Landsat), then ``TIFFTAG_DATETIME`` (``YYYY:MM:DD HH:MM:SS``). The acquisition tags
   come first because many tools set ``TIFFTAG_DATETIME`` to the time they wrote the file;
3. the first date in the file's name: ``YYYY-MM-DD``, ``YYYYMMDD`` or a year ``YYYY`` (1900-2099) not
   inside a longer run of digits. Landsat and Sentinel-2 names put the acquisition date first.

A file with none is refused, naming the file and ``--dates``. Dates are kept to the day (a time of day is
dropped) and a year alone sorts before every day of that year. The files must be given oldest first, each
date after the one before: they are not reordered, because the first file's grid becomes every output's
grid and which file that is stays the caller's choice; a date that is not later is a one-line error that
names both files.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from changescope.errors import ChangescopeError, DataError

#: (metadata domain, tag) in the order they are looked at; None is the default domain
DATE_TAGS = (
    ("IMAGERY", "ACQUISITIONDATETIME"),
    (None, "ACQUISITIONDATETIME"),
    (None, "DATE_ACQUIRED"),
    (None, "TIFFTAG_DATETIME"),
)
YEARS = range(1900, 2100)
#: a date: ISO or TIFF separators, eight digits, or a year (the longest form first at each position)
_CORE = r"(\d{4})[-:](\d{2})[-:](\d{2})|(\d{4})(\d{2})(\d{2})|(\d{4})"
_GIVEN = re.compile(_CORE)  # fullmatch: a --dates item is a date and nothing else
_VALUE = re.compile(rf"\s*(?:{_CORE})(?:$|[T\s_.:+Z-])")  # a tag's value: a time after the date is dropped
_IN_NAME = re.compile(rf"(?<!\d)(?:{_CORE})(?!\d)")  # in a file name: not part of a longer number
SOURCE_GIVEN, SOURCE_NAME = "--dates", "file name"


@dataclass(frozen=True)
class StackDate:
    """One file's date: ``text`` as the outputs show it (``2016-05-01`` or ``2016``), where it came from."""

    text: str
    source: str
    key: tuple[int, int, int]  # (year, month, day); 0 for the parts a year alone lacks


def _date(groups: tuple[str | None, ...], source: str) -> StackDate | None:
    """The date the regex groups hold, or None when it is not a real day (month 13, year 0512)."""
    numbers = [int(g) for g in groups if g is not None]
    if not numbers or numbers[0] not in YEARS:
        return None
    if len(numbers) == 1:
        return StackDate(f"{numbers[0]:04d}", source, (numbers[0], 0, 0))
    try:
        day = dt.date(*numbers)
    except ValueError:
        return None
    return StackDate(day.isoformat(), source, (day.year, day.month, day.day))


def parse_date(text: str, source: str = SOURCE_GIVEN, whole: bool = False) -> StackDate | None:
    """The date at the start of ``text`` (a tag's value), or ``text`` as a whole (``whole``: a ``--dates``
    item); None when there is none."""
    match = _GIVEN.fullmatch(text.strip()) if whole else _VALUE.match(text)
    return None if match is None else _date(match.groups(), source)


def name_date(path: str | Path) -> StackDate | None:
    """The first real date in a file's name (module docstring), None when it has none."""
    for match in _IN_NAME.finditer(Path(path).name):
        found = _date(match.groups(), SOURCE_NAME)
        if found is not None:
            return found
    return None


def metadata_date(dataset) -> StackDate | None:
    """The date a rasterio dataset's tags hold (``DATE_TAGS`` in order), None when none does."""
    for domain, tag in DATE_TAGS:
        value = dataset.tags(ns=domain).get(tag) if domain else dataset.tags().get(tag)
        found = parse_date(value, tag) if value else None
        if found is not None:
            return found
    return None


def split_dates(text: str) -> list[str]:
    """``--dates`` '2016-05-01,2018,...' -> its items (checked by :func:`stack_dates`)."""
    return [item.strip() for item in text.split(",")]


def _given(text: str) -> StackDate:
    found = parse_date(text, whole=True)
    if found is None:
        raise ChangescopeError(f"--dates: {text!r} is not a date: give YYYY-MM-DD, YYYYMMDD or YYYY")
    return found


def _found(path: str | Path) -> StackDate:
    from changescope.geo.raster import open_dataset

    with open_dataset(path) as dataset:
        found = metadata_date(dataset)
    found = found or name_date(path)
    if found is None:
        tags = ", ".join(dict.fromkeys(tag for _, tag in DATE_TAGS))
        raise DataError(
            path,
            f"has no date in its metadata ({tags}) or its name (YYYY-MM-DD, YYYYMMDD or YYYY): "
            "pass --dates with one date per file, oldest first",
        )
    return found


def given_dates(given: Sequence[str], files: int, order: str = "") -> list[StackDate]:
    """``--dates``: one date per file, each YYYY-MM-DD, YYYYMMDD or YYYY."""
    if len(given) != files:
        raise ChangescopeError(
            f"--dates has {len(given)} dates for {files} files: give one date per file{order}"
        )
    return [_given(str(text)) for text in given]


def stack_dates(paths: Sequence[str | Path], given: Sequence[str] | None = None) -> list[StackDate]:
    """One date per file (module docstring), checked to increase from file to file."""
    if given is not None:
        dates = given_dates(given, len(paths), ", oldest first")
    else:
        dates = [_found(path) for path in paths]
    for (path0, date0), (path1, date1) in pairwise(zip(paths, dates, strict=True)):
        if date1.key <= date0.key:
            raise DataError(
                path1,
                f"is dated {date1.text} ({date1.source}), not after {Path(path0).name}'s {date0.text} "
                f"({date0.source}): give the files oldest first, each with a later date",
            )
    return dates


def _metadata_or_name(path: str | Path) -> StackDate | None:
    """A file's date from its tags where rasterio is installed and reads it, else from its name."""
    try:
        from changescope.geo.raster import open_dataset

        with open_dataset(path) as dataset:
            found = metadata_date(dataset)
    except Exception:  # noqa: BLE001 - no rasterio, or a format it does not read: the name still may date it
        found = None
    return found or name_date(path)


def image_dates(
    paths: Sequence[str | Path], given: Sequence[str] | None = None
) -> tuple[list[int], list[StackDate] | None]:
    """The order of a stack of images by date, and their dates, for ``describe`` / ``detect`` / ``ask``
    on 3 or more images: ``given`` (``--dates``, one per file), else each file's metadata or name. Unlike a
    scene stack these files are sorted oldest first (no grid hangs on which comes first). Returns
    (``order``: indices into ``paths``, oldest first; the dates in that order), or (the given order, None)
    when no file has a date. Some files dated and some not, or two files of one date, is an error."""
    if given is not None:
        found = given_dates(given, len(paths))
    else:
        found = [_metadata_or_name(path) for path in paths]
    if all(date is None for date in found):
        return list(range(len(paths))), None
    for path, date in zip(paths, found, strict=True):
        if date is None:
            raise DataError(
                path,
                "has no date in its metadata or name while other files have one: pass --dates with one "
                "date per file",
            )
    order = sorted(range(len(paths)), key=lambda i: found[i].key)
    for a, b in pairwise(order):
        if found[a].key == found[b].key:
            raise DataError(
                paths[b],
                f"has the same date as {Path(paths[a]).name} ({found[b].text}): give each date once, "
                "or pass --dates",
            )
    return order, [found[i] for i in order]
