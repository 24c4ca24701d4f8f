"""Check a dataset folder before training on it (``changescope data check PATH``).

``check_dataset`` opens every split the format has, reads every image and label, and sorts what it
finds into three lists:

errors
    what makes a reader fail: a missing, unreadable or malformed file, images of different sizes in a
    pair, label values outside the class map. One line each, naming the file.
inconsistencies
    the dataset disagreeing with itself, as LEVIR-MCI issue #18 counts them (about 5 % of its train
    split): a change flag that contradicts the captions or the mask, captions that mix change and
    no-change sentences, a pair id listed twice; for CDVQA, answers or question types outside the
    closed sets. Real datasets have these, so they do not fail the check.
warnings
    gaps that are allowed, such as a split without an index file (CDVQA without Test2).

Change-detection formats (``changedetection.py``: binary masks, no captions) are read with their own
image rule (grey and multispectral images allowed), a pair's ``changed`` is its mask's verdict (a pair
whose mask cannot be read counts as neither changed nor unchanged), and the report adds the changed and
labelled pixels per split (pixels other than the ignore value 255). They have no captions, so no caption
check applies to them.

Time-series formats (``timeseries.py``) are checked per sequence: every date's image is read and must
have the first date's size, the dates must be ISO and increasing (a reader refuses the split otherwise,
naming the index line or folder), there must be T-1 interval masks, each with values among the classes
or 255. The report counts sequences instead of pairs, and adds the intervals and the intervals with
change per split, and the changed and labelled interval pixels.

Instruction formats (``instructions.py``: images plus a human / gpt conversation) are checked per
sample: every image is read and must have the first image's size, an answer mask (QAG-360K) must be
readable and of the images' size; the record itself (fields, turn order, the ``<image>`` placeholder) is
checked by the reader, which refuses the split naming the index line or record. The report counts
samples, and adds their turns and images per split; records a reader leaves out (TEOChatlas single
images) are warnings, an id listed twice within a split an inconsistency.

Decoding is the cost (about 2 ms per 256 x 256 PNG), so images are decoded in a thread pool: Pillow
releases the GIL while it inflates, and every check on pixels is a numpy call.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from changescope.data.imageio import read_rgb
from changescope.data.readers import detect_format, reader_class
from changescope.data.readers.base import CaptionPairDataset, PairEntry, one_size
from changescope.data.readers.cdvqa import CDVQA, VQAItem
from changescope.data.readers.changedetection import CHANGE, IGNORE_INDEX, ChangeDetectionDataset
from changescope.data.readers.instructions import InstructionDataset, InstructionEntry
from changescope.data.readers.timeseries import SequenceDataset, SequenceEntry
from changescope.errors import DataError

MAX_LISTED = 20  # lines listed per kind of problem; the rest are counted


@dataclass
class SplitStats:
    pairs: int = 0
    changed: int = 0
    unchanged: int = 0
    with_mask: int = 0
    #: question-answer pairs (CDVQA); 0 for caption datasets
    questions: int = 0
    #: change-detection and time-series formats: mask pixels that are change / that are labelled (not 255)
    changed_pixels: int = 0
    labelled_pixels: int = 0
    #: time-series formats: intervals (T-1 per sequence) and those with change
    intervals: int = 0
    changed_intervals: int = 0
    #: instruction formats: conversation turns, and images over all samples
    turns: int = 0
    images: int = 0

    @property
    def change_percent(self) -> float | None:
        known = self.changed + self.unchanged
        return 100.0 * self.changed / known if known else None

    def add(self, other: SplitStats) -> None:
        for name in (f.name for f in fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))


class _Findings:
    """Messages grouped by kind, without repeats (a broken index file fails every split the same way)."""

    def __init__(self) -> None:
        self.by_kind: dict[str, list[str]] = defaultdict(list)
        self._seen: set[str] = set()

    def add(self, kind: str, message: str | DataError) -> None:
        line = " ".join(str(message).split())  # one line, whatever the underlying library wrote
        if line not in self._seen:
            self._seen.add(line)
            self.by_kind[kind].append(line)

    def lines(self, max_listed: int, noun: str) -> list[str]:
        out = []
        for kind, lines in self.by_kind.items():
            out.extend(lines[:max_listed])
            if len(lines) > max_listed:
                out.append(f"... and {len(lines) - max_listed} more {kind} {noun}")
        return out

    def counts(self) -> dict[str, int]:
        return {kind: len(lines) for kind, lines in self.by_kind.items()}


@dataclass
class CheckReport:
    root: str
    format: str
    splits: dict[str, SplitStats] = field(default_factory=dict)
    #: what ``SplitStats.pairs`` counts: "pairs", "sequences" (time series) or "samples" (instructions)
    unit: str = "pairs"
    #: one line each, naming the file and the problem (at most ``MAX_LISTED`` per kind, then a count)
    errors: list[str] = field(default_factory=list)
    inconsistencies: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error_counts: dict[str, int] = field(default_factory=dict)
    inconsistency_counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def total(self) -> SplitStats:
        total = SplitStats()
        for stats in self.splits.values():
            total.add(stats)
        return total

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        for name, stats in self.splits.items():
            data["splits"][name]["change_percent"] = stats.change_percent
        return data

    def format_text(self) -> str:
        """A report for people: counts per split, change / no-change balance, then the findings."""
        lines = [f"Dataset check: {self.root} (format: {self.format})", ""]
        if self.splits:
            lines += self._table()
            lines.append("")
        sections = (
            ("Errors", self.errors, sum(self.error_counts.values())),
            ("Inconsistencies", self.inconsistencies, sum(self.inconsistency_counts.values())),
            ("Warnings", self.warnings, len(self.warnings)),
        )
        for title, items, count in sections:
            lines.append(f"{title} ({count}):" if items else f"{title}: none")
            lines += [f"  {item}" for item in items]
        total = self.total()
        checked = f"{total.pairs} {self.unit}" + (f", {total.questions} questions" if total.questions else "")
        verdict = "OK" if self.ok else f"FAILED: {sum(self.error_counts.values())} errors"
        lines += ["", f"{verdict} ({checked} checked)"]
        return "\n".join(lines)

    def _table(self) -> list[str]:
        total = self.total()
        vqa, masks, pixels = total.questions > 0, total.with_mask > 0, total.labelled_pixels > 0
        series = self.unit == "sequences"
        if self.unit == "samples":
            return self._instruction_table(total, masks)
        header = ["split", self.unit] + (["questions"] if vqa else ["changed", "unchanged", "change %"])
        header += ["with mask"] if masks else []
        header += ["intervals", "changed intervals"] if series else []
        header += ["changed px", "labelled px"] if pixels else []
        rows = []
        for name, stats in [*self.splits.items(), ("total", total)]:
            share = stats.change_percent
            row = [name, str(stats.pairs)]
            if vqa:
                row.append(str(stats.questions))
            else:
                row += [str(stats.changed), str(stats.unchanged), "-" if share is None else f"{share:.1f}%"]
            row += [str(stats.with_mask)] if masks else []
            row += [str(stats.intervals), str(stats.changed_intervals)] if series else []
            rows.append(row + ([str(stats.changed_pixels), str(stats.labelled_pixels)] if pixels else []))
        return _aligned(header, rows)

    def _instruction_table(self, total: SplitStats, masks: bool) -> list[str]:
        header = ["split", "samples", "turns", "images / sample"] + (["with mask"] if masks else [])
        rows = []
        for name, stats in [*self.splits.items(), ("total", total)]:
            per_sample = f"{stats.images / stats.pairs:.2f}" if stats.pairs else "-"
            row = [name, str(stats.pairs), str(stats.turns), per_sample]
            rows.append(row + ([str(stats.with_mask)] if masks else []))
        return _aligned(header, rows)


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    """A text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header)] + [line(row) for row in rows]


# --------------------------------------------------------------------------------------------------
def check_dataset(
    root: str | Path,
    format: str | None = None,
    *,
    workers: int | None = None,
    max_listed: int = MAX_LISTED,
) -> CheckReport:
    """Check every split of the dataset at ``root``; the format is detected when not given.

    A missing directory or an unknown ``format`` name raises ``DataError``; everything wrong with the data
    goes into the report.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset directory not found")
    errors, inconsistencies = _Findings(), _Findings()
    warnings: list[str] = []
    try:
        fmt = format or detect_format(root)
    except DataError as err:
        errors.add("index", err)
        return _report(root, "unknown", {}, errors, inconsistencies, warnings, max_listed)
    cls = reader_class(fmt)
    unit = "pairs"
    if issubclass(cls, SequenceDataset):
        check_split, unit = _check_sequence_split, "sequences"
    elif issubclass(cls, CaptionPairDataset):
        check_split = _check_caption_split
    elif issubclass(cls, CDVQA):
        check_split = _check_vqa_split
    elif issubclass(cls, InstructionDataset):
        check_split, unit = _check_instruction_split, "samples"
    else:
        raise DataError(None, f"no checker for format '{fmt}'")

    splits: dict[str, SplitStats] = {}
    missing: list[DataError] = []
    ids: dict[str, list[str]] = defaultdict(list)
    with ThreadPoolExecutor(workers or min(8, 2 * (os.cpu_count() or 1))) as pool:
        for split in cls.splits:
            try:
                dataset = cls(root, split=split, check_files=False)
            except DataError as err:
                # An index file that is not there leaves the split out; a broken one is an error (also
                # when the error names "file:line", which is no path that exists).
                if (
                    err.path is not None
                    and not err.path.exists()
                    and err.problem.startswith("file not found")
                ):
                    missing.append(err)
                else:
                    errors.add("index", err)
                continue
            splits[split] = check_split(dataset, pool, errors, inconsistencies, ids)
            warnings += [" ".join(str(note).split()) for note in getattr(dataset, "notes", ())]
            if not splits[split].pairs:
                warnings.append(f"split '{split}' has no {unit}")

    if missing and not splits and not errors.by_kind:
        for err in missing:
            errors.add("index", err)
    else:
        warnings += [f"split left out: {' '.join(str(err).split())}" for err in missing]
    for pair_id, where in ids.items():
        if len(where) > 1:
            inconsistencies.add(
                "duplicate id", f"pair id '{pair_id}' is listed {len(where)} times ({', '.join(where)})"
            )
    return _report(root, fmt, splits, errors, inconsistencies, warnings, max_listed, unit)


def _report(
    root: Path,
    fmt: str,
    splits: dict[str, SplitStats],
    errors: _Findings,
    inconsistencies: _Findings,
    warnings: list[str],
    max_listed: int,
    unit: str = "pairs",
) -> CheckReport:
    return CheckReport(
        root=str(root),
        format=fmt,
        splits=splits,
        unit=unit,
        errors=errors.lines(max_listed, "errors"),
        inconsistencies=inconsistencies.lines(max_listed, "cases"),
        warnings=warnings,
        error_counts=errors.counts(),
        inconsistency_counts=inconsistencies.counts(),
    )


# caption datasets ---------------------------------------------------------------------------------
@dataclass
class _PairResult:
    errors: list[tuple[str, str]]
    #: changed pixels in the mask; None when there is no mask or it could not be read
    mask_pixels: int | None = None
    #: pixels with a label (not IGNORE_INDEX); change-detection formats only
    labelled_pixels: int | None = None


def _read_images(
    paths: Sequence[Path], read=read_rgb, noun: str = "pair"
) -> tuple[list[np.ndarray], list[tuple[str, str]]]:
    """Decode every image of a pair or sequence (all of them, so each broken one is reported), then
    compare sizes."""
    arrays, errors = [], []
    for path in paths:
        try:
            arrays.append(read(path))
        except DataError as err:
            errors.append(("image", str(err)))
    if not errors:
        try:
            one_size(paths, arrays, noun)
        except DataError as err:
            errors.append(("image", str(err)))
    return arrays, errors


def _read_pair(dataset: CaptionPairDataset, entry: PairEntry) -> _PairResult:
    source = entry.source.name if entry.source else "the index"
    missing = [path for path in entry.files() if not path.is_file()]
    if missing:
        return _PairResult(
            [
                ("missing file", f"{path}: file not found (listed for pair '{entry.id}' in {source})")
                for path in missing
            ]
        )
    detection = isinstance(dataset, ChangeDetectionDataset)
    arrays, errors = _read_images(entry.images, dataset.read_image if detection else read_rgb)
    result = _PairResult(errors)
    if dataset.has_masks and entry.label is not None and not errors:
        try:
            mask = dataset.read_mask(entry, arrays[0].shape[:2])
        except DataError as err:
            result.errors.append(("label", str(err)))
        else:
            if mask is not None and detection:
                result.mask_pixels = int(np.count_nonzero(mask == CHANGE))
                result.labelled_pixels = int(np.count_nonzero(mask != IGNORE_INDEX))
            elif mask is not None:
                result.mask_pixels = int(np.count_nonzero(mask))
    return result


def _check_caption_split(dataset: CaptionPairDataset, pool, errors, inconsistencies, ids) -> SplitStats:
    stats = SplitStats()
    results = pool.map(partial(_read_pair, dataset), dataset.entries)
    detection = isinstance(dataset, ChangeDetectionDataset)
    for entry, result in zip(dataset.entries, results, strict=True):
        stats.pairs += 1
        stats.with_mask += result.mask_pixels is not None
        ids[entry.id].append(entry.split)
        for kind, message in result.errors:
            errors.add(kind, message)
        if detection:
            # the mask is the only evidence: no flag, no captions to compare it with
            if result.mask_pixels is not None:
                stats.changed += result.mask_pixels > 0
                stats.unchanged += result.mask_pixels == 0
                stats.changed_pixels += result.mask_pixels
                stats.labelled_pixels += result.labelled_pixels or 0
            continue
        changed = dataset.changed(entry)
        stats.changed += changed
        stats.unchanged += not changed
        for kind, message in _consistency(dataset, entry, changed, result.mask_pixels):
            inconsistencies.add(kind, message)
    return stats


def _consistency(
    dataset: CaptionPairDataset, entry: PairEntry, changed: bool, mask_pixels: int | None
) -> list[tuple[str, str]]:
    """Flag vs captions and flag vs mask, in the words of LEVIR-MCI issue #18."""
    found = []
    where = f"{entry.source or dataset.root}: pair '{entry.id}' ({entry.split})"
    flag = None if entry.flag is None else int(entry.flag)
    if dataset.no_change_sentences:
        derived = dataset.changed_from_captions(entry.captions)
        if derived is None:
            found.append(("mixed captions", f"{where} mixes change and no-change captions"))
        elif flag is not None and derived != entry.flag:
            described = "change" if derived else "no change"
            found.append(
                ("flag vs captions", f"{where} has changeflag {flag} but its captions describe {described}")
            )
    if mask_pixels is not None and changed != bool(mask_pixels):
        # `changed` is the flag, or the captions' verdict when the dataset has no flag
        says = (
            f"changeflag {flag}" if flag is not None else f"{'change' if changed else 'no-change'} captions"
        )
        label = entry.label.name if entry.label else "the mask"
        shows = f"{label} has {mask_pixels} changed pixels" if mask_pixels else f"{label} is all background"
        found.append(("flag vs mask", f"{where} has {says} but {shows}"))
    return found


# CDVQA --------------------------------------------------------------------------------------------
def _read_vqa_pair(item: VQAItem) -> list[tuple[str, str]]:
    missing = [path for path in item.images if not path.is_file()]
    if missing:
        return [
            ("missing file", f"{path}: file not found (pair {item.file_name} of the {item.split} split)")
            for path in missing
        ]
    return _read_images(item.images)[1]


def _check_vqa_split(dataset: CDVQA, pool, errors, inconsistencies, ids) -> SplitStats:
    pairs = {item.file_name: item for item in dataset.items}  # one check per pair, not per question
    for found in pool.map(_read_vqa_pair, pairs.values()):
        for kind, message in found:
            errors.add(kind, message)
    answers, qtypes = set(dataset.ANSWERS), set(dataset.QTYPES)
    for item in dataset.items:
        if item.answer not in answers:
            inconsistencies.add(
                "unknown answer",
                f"{dataset.index_file('answers')}: question {item.id} has answer '{item.answer}', "
                f"not one of the {len(answers)} closed answers",
            )
        if item.qtype not in qtypes:
            inconsistencies.add(
                "unknown question type",
                f"{dataset.index_file('questions')}: question {item.id} has type '{item.qtype}'",
            )
    return SplitStats(pairs=len(pairs), questions=len(dataset.items))


# time series --------------------------------------------------------------------------------------
@dataclass
class _SequenceResult:
    errors: list[tuple[str, str]]
    #: the interval masks ``[T-1, H, W]``; None when they could not be read
    masks: np.ndarray | None = None


def _read_sequence(dataset: SequenceDataset, entry: SequenceEntry) -> _SequenceResult:
    missing = dataset.missing_files(entry)
    if missing:
        return _SequenceResult([("missing file", str(err)) for err in missing])
    arrays, errors = _read_images(entry.images, dataset.read_image, noun="sequence")
    if errors:
        return _SequenceResult(errors)
    try:
        return _SequenceResult([], dataset.read_interval_masks(entry, arrays[0].shape[:2]))
    except DataError as err:
        return _SequenceResult([("label", str(err))])


def _check_sequence_split(dataset: SequenceDataset, pool, errors, inconsistencies, ids) -> SplitStats:
    stats = SplitStats()
    results = pool.map(partial(_read_sequence, dataset), dataset.entries)
    for entry, result in zip(dataset.entries, results, strict=True):
        stats.pairs += 1
        stats.intervals += len(entry.images) - 1
        ids[entry.id].append(entry.split)
        for kind, message in result.errors:
            errors.add(kind, message)
        labelled = 0 if result.masks is None else int((result.masks != IGNORE_INDEX).sum())
        if not labelled:
            continue  # unreadable or unlabelled (SpaceNet 7 test_public): neither changed nor unchanged
        change = (result.masks != 0) & (result.masks != IGNORE_INDEX)
        changed_intervals = int(change.any(axis=(1, 2)).sum())
        stats.with_mask += 1
        stats.changed += changed_intervals > 0
        stats.unchanged += changed_intervals == 0
        stats.changed_intervals += changed_intervals
        stats.changed_pixels += int(change.sum())
        stats.labelled_pixels += labelled
    return stats


# instruction data ---------------------------------------------------------------------------------
@dataclass
class _SampleResult:
    errors: list[tuple[str, str]]
    #: answer-mask pixels that are set; None when there is no mask or it could not be read
    mask_pixels: int | None = None


def _read_instruction_sample(dataset: InstructionDataset, entry: InstructionEntry) -> _SampleResult:
    missing = dataset.missing_files(entry)
    if missing:
        return _SampleResult([("missing file", str(err)) for err in missing])
    arrays, errors = _read_images(entry.images, noun="sample")
    if errors:
        return _SampleResult(errors)
    try:
        mask = dataset.read_mask(entry, arrays[0].shape[:2])
    except DataError as err:
        return _SampleResult([("label", str(err))])
    return _SampleResult([], None if mask is None else int(np.count_nonzero(mask)))


def _check_instruction_split(dataset: InstructionDataset, pool, errors, inconsistencies, ids) -> SplitStats:
    stats = SplitStats()
    results = pool.map(partial(_read_instruction_sample, dataset), dataset.entries)
    seen: dict[str, int] = defaultdict(int)
    for entry, result in zip(dataset.entries, results, strict=True):
        stats.pairs += 1
        stats.turns += len(entry.conversations)
        stats.images += len(entry.images)
        seen[entry.id] += 1
        for kind, message in result.errors:
            errors.add(kind, message)
        if result.mask_pixels is not None:
            # an empty answer mask is the visual answer "no change"
            stats.with_mask += 1
            stats.changed += result.mask_pixels > 0
            stats.unchanged += result.mask_pixels == 0
    # ids are per split here: released sets number each file from 0
    for sample_id, count in seen.items():
        if count > 1:
            inconsistencies.add(
                "duplicate id",
                f"{dataset.index_path}: sample id '{sample_id}' is listed {count} times in split "
                f"'{dataset.split}'",
            )
    return stats
