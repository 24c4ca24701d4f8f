"""Lists of image pairs, and JSONL output over many of them.

The one place that says which pairs a command runs on: a folder (``A/`` before, ``B/`` after, matching
file names) or a manifest (CSV or JSONL naming ``before`` and ``after`` files, and optionally an ``id``).
Every pair is ``(id, before, after)``. Results over many pairs are streamed row by row into
``PATH.part`` and renamed to ``PATH`` at the end (``write_jsonl_resumable``), so a run that stops is
resumed by the next one with the same ``PATH``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from changescope.data.imageio import IMAGE_SUFFIXES, image_size
from changescope.errors import DataError

Pair = tuple[str, Path, Path]

#: manifest formats, by file suffix
MANIFEST_SUFFIXES = (".csv", ".jsonl")


def folder_pairs(folder: str | Path) -> list[Pair]:
    """``(id, before, after)`` for ``FOLDER/A/<name>`` and ``FOLDER/B/<name>`` with the same file stem."""
    folder = Path(folder)
    before_dir, after_dir = folder / "A", folder / "B"
    for sub in (before_dir, after_dir):
        if not sub.is_dir():
            raise DataError(
                sub, "not found: a folder of pairs holds A/ (before) and B/ (after) with matching names"
            )
    before = {p.stem: p for p in before_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    after = {p.stem: p for p in after_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    unmatched = sorted(set(before) ^ set(after))
    if unmatched:
        side = "B" if unmatched[0] in before else "A"
        raise DataError(folder / side, f"no image named '{unmatched[0]}' to pair with the other folder")
    if not before:
        raise DataError(before_dir, "no images found")
    return [(stem, before[stem], after[stem]) for stem in sorted(before)]


def check_pair_files(pairs: list[Pair]) -> None:
    """Fail fast, before a model is loaded: every file exists, is an image, and each pair has one size."""
    for _, before, after in pairs:
        size_a, size_b = image_size(before), image_size(after)
        if size_a != size_b:
            raise DataError(
                after,
                f"image is {size_b[1]}x{size_b[0]} but {before.name} is {size_a[1]}x{size_a[0]}; "
                "the images of a pair must have one size",
            )


# -- manifests ----------------------------------------------------------------------------------------


def _check_id(value: str) -> str | None:
    """Why ``value`` cannot be a pair id (ids name output folders, e.g. ``detect``'s ``DIR/<id>/``)."""
    if not value.strip():
        return "the id is empty"
    if value in (".", "..") or any(sep in value for sep in ("/", "\\")):
        return f"id '{value}' is not a plain name (no '/', '\\\\', '.' or '..'): ids name output folders"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "the id holds a control character"
    return None


def _pair_from_row(manifest: Path, line: int, row: dict[str, Any], seen: dict[str, int]) -> Pair:
    """One manifest row -> ``(id, before, after)``: paths resolved against the manifest's folder, the id
    defaulting to the after file's stem; a one-line ``DataError`` naming the manifest and ``line``."""

    def fail(problem: str):
        return DataError(manifest, f"line {line}: {problem}")

    paths = []
    for key in ("before", "after"):
        value = row.get(key)
        if value is None:
            raise fail(f"no '{key}' (each pair names a before and an after image)")
        if not isinstance(value, str):
            raise fail(f"'{key}' must be a file path (text), got {type(value).__name__}")
        if not value.strip():
            raise fail(f"'{key}' is empty")
        path = Path(value.strip())
        path = path if path.is_absolute() else manifest.parent / path
        if not path.exists():
            raise fail(f"{key} image not found: {path}")
        if path.is_dir():
            raise fail(f"{key} image is a folder: {path}")
        paths.append(path)
    given = row.get("id")
    if given is None or (isinstance(given, str) and not given.strip()):
        pair_id = paths[1].stem
    elif isinstance(given, (str, int)) and not isinstance(given, bool):
        pair_id = str(given).strip()
    else:
        raise fail(f"'id' must be text or a whole number, got {type(given).__name__}")
    problem = _check_id(pair_id)
    if problem is not None:
        raise fail(problem)
    if pair_id in seen:
        raise fail(f"id '{pair_id}' is already used on line {seen[pair_id]} (ids must be unique)")
    seen[pair_id] = line
    return pair_id, paths[0], paths[1]


def _csv_rows(manifest: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(manifest, "line 1: empty manifest; expected a header row naming before,after")
        names = [h.strip().lower() for h in header]
        for key in ("before", "after"):
            if key not in names:
                raise DataError(
                    manifest,
                    f"line 1: no '{key}' column in the header {header}; "
                    "a CSV manifest names before,after (and optionally id) in its first row",
                )
        duplicated = sorted({n for n in names if names.count(n) > 1 and n in ("id", "before", "after")})
        if duplicated:
            raise DataError(manifest, f"line 1: column '{duplicated[0]}' appears twice in the header")
        wanted = {n: names.index(n) for n in ("id", "before", "after") if n in names}
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue  # a blank line
            row = {n: record[i] if i < len(record) else None for n, i in wanted.items()}
            yield reader.line_num, row
    except csv.Error as err:
        raise DataError(manifest, f"line {reader.line_num}: not valid CSV ({err})") from None


def _jsonl_rows(manifest: Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(manifest, f"line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise DataError(
                manifest, f'line {number}: expected an object such as {{"before": ..., "after": ...}}'
            )
        yield number, row


def read_manifest(path: str | Path) -> list[Pair]:
    """``(id, before, after)`` for every row of a manifest.

    CSV: a header row naming the columns ``before`` and ``after``, optionally ``id`` (other columns are
    ignored). JSONL: one object per line with ``before``, ``after`` and optionally ``id``. Relative paths
    resolve against the manifest's folder; the id defaults to the after file's stem. A missing column or
    file, a duplicate id or an empty manifest is a one-line ``DataError`` naming the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "manifest not found" if not path.exists() else "is a folder, not a manifest")
    suffix = path.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise DataError(path, f"a manifest is a .csv or .jsonl file, not '{suffix or path.name}'")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(path, f"line {line}: not UTF-8 text") from None
    rows = _csv_rows(path, text) if suffix == ".csv" else _jsonl_rows(path, text)
    seen: dict[str, int] = {}
    pairs = [_pair_from_row(path, line, row, seen) for line, row in rows]
    if not pairs:
        where = 2 if suffix == ".csv" else 1
        raise DataError(path, f"line {where}: no pairs listed (the manifest is empty)")
    return pairs


def list_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a folder (``folder_pairs``) or of a ``.csv`` / ``.jsonl`` manifest (``read_manifest``)."""
    path = Path(path)
    if path.is_dir():
        return folder_pairs(path)
    if not path.exists():
        raise DataError(path, "not found: give a folder holding A/ and B/, or a .csv / .jsonl manifest")
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return read_manifest(path)
    raise DataError(
        path, "neither a folder of pairs (A/ and B/) nor a manifest (.csv / .jsonl) of before,after files"
    )


# -- streamed output over many pairs ------------------------------------------------------------------


def complete_rows(partial: Path) -> dict[str, str]:
    """id -> line of the complete rows of an interrupted JSONL, up to the first torn or unreadable line."""
    rows: dict[str, str] = {}
    if not partial.is_file():
        return rows
    for line in partial.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rows[str(json.loads(line)["id"])] = line
        except (json.JSONDecodeError, KeyError, TypeError):
            break
    return rows


def write_jsonl_resumable(
    path: str | Path,
    rows_for: Callable[[list], Iterable[dict]],
    pairs: list[tuple[str, Any, Any]],
    keep: Callable[[str], bool] | None = None,
) -> tuple[int, int]:
    """Stream ``rows_for(pending_pairs)`` into ``PATH.part`` row by row, renamed to ``PATH`` at the end.

    A run that stops (Ctrl-C, a crash) leaves ``PATH.part``; the next run with the same ``PATH`` keeps its
    complete rows (those whose id ``keep`` accepts, when given) and runs only the pairs not in it.
    Returns ``(rows written now, rows kept)``."""
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    # kept: complete rows of pairs still asked for (a torn last line and other pairs' rows are dropped)
    wanted = {p[0] for p in pairs}
    kept = {
        i: line for i, line in complete_rows(partial).items() if i in wanted and (keep is None or keep(i))
    }
    pending = [p for p in pairs if p[0] not in kept]
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with partial.open("w", encoding="utf-8") as fh:
        fh.writelines(kept.values())
        fh.flush()
        for row in rows_for(pending):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            written += 1
    os.replace(partial, path)
    return written, len(kept)
