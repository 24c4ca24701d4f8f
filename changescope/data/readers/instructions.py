"""Instruction data: two or more dated images of one place and a human / gpt conversation about them.

Every reader here gives the same sample::

    id             str
    image          float tensor [T, 3, H, W] in [0, 1], oldest first, at the native size (T >= 2)
    conversations  [{"from": "human" | "gpt", "value": str}, ...]: human first, then alternating, the last
                   turn from gpt; the placeholder "<image>" (standing for all T images together) appears
                   exactly once, in the first human turn
    times          teochatlas only: T ISO dates, oldest first, or None when the record has none
    task           teochatlas: the record's "task" (str), or None; changeimti: the task file's stem (str)
    captions       changechat-105k caption-test records only: the 5 reference captions
    question, answer, qtype (str), mask (long [H, W], 1 = the visual answer): qag-360k only

A reader declares its layout (``name``, ``splits``, file names as class attributes) and fills two hooks
of :class:`InstructionDataset`: ``_entries`` (the split's records, checked, no pixel read) and, for
datasets with answer masks, ``read_mask``. Construction checks every record (fields, turn order,
placeholder) and that every file exists, so a broken dataset fails at once with one line naming the
index file and the line or record; pixels are read in ``__getitem__``.

The placeholder. The project's own format (``changescope-instructions``) must already be canonical: one
``<image>`` in the first human turn, no ``<video>``. The released sets each do something else, and their
readers normalise to that form: every placeholder must be in the first human turn, as one run (``<image>
<image>`` or ``<video>``; for changeimti also ``<image> and <image>``), which becomes one ``<image>`` in
place (followed by a newline when it starts the turn, as LLaVA writes it); a first turn without a
placeholder gets ``"<image>\\n"`` in front. A placeholder in a later turn, or two runs split by text, is an
error.

Formats, with the layout each follows and where it was read (reference: repository @ file):

``changescope-instructions`` (:class:`ChangescopeInstructions`), the project's own, e.g. for SynthChange::

    ROOT/{train,val,test}.jsonl    one object per line, nothing else in it:
        {"id": str, "images": [path, path, ...],
         "conversations": [{"from": "human", "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...],
         "kinds": [str, ...] (optional: what each human turn asks; ``data.instructions`` writes it)}
    image paths relative to the JSONL's folder (absolute paths are kept), oldest first

``changechat`` (:class:`ChangeChat`), ChangeChat-87k (Deng et al., ICASSP 2025). The official repository
(hanlinwu/ChangeChat) held only a README when stored; its code was read from a copy, sarrafidha/vqa1
(``changechat/train/train.py``: ``LazySupervisedDataset`` joins each ``image`` entry to ``--image_folder``;
``GPT-api/make_instructs.ipynb`` and ``scripts/make_instructs.ipynb``, the generators; ``scripts/*.sh``:
``--image_folder .../LEVIR-MCI-dataset/images``), and the README's link
``GPT-api/LEVIR-MCI-dataset/ChangeChat_instruct_gpt_87k.json``::

    ROOT/ChangeChat_instruct_gpt_87k.json      a JSON list of records (train only):
        {"id": int, "image": ["train/A/train_000001.png", "train/B/train_000001.png"],
         "changeflag": 0 | 1 (not on every record), "type": 1..6, "conversations": [...]}
    ROOT/images/train/{A,B}/train_NNNNNN.png   LEVIR-MCI (ROOT is the LEVIR-MCI-dataset folder)

Placeholder: ``"<image> <image> "`` opens the first human turn (the multi-turn type: only the first).

``changechat-105k`` (:class:`ChangeChat105k`), ChangeChat-105k (DeltaVLM; HF ``hlwu/changechat-105k``),
from hanlinwu/DeltaVLM @ ``README.md`` (layout, file list, record example), ``infer_subtasks.py`` (the
test files and both record schemas), ``dataset.py`` (``CaptionDataset`` reads ``image[0]``, ``image[1]``,
``conversations``, ``id``)::

    ROOT/annotations/changechat_105k_{train,train_loc,test_binary,test_count,test_loc,test_open,
                                      test_dialog}.json
        a JSON list of {"id", "image": [A, B], "changeflag", "conversations": [...]}
    ROOT/annotations/changechat_105k_test.json   captioning test, another schema:
        {"image_A": path, "image_B": path, "captions": [5 references], "changeflag"}
    ROOT/images/{train,val,test}/{A,B}/<split>_NNNNNN.png   LEVIR-CC; paths relative to ROOT/images

Splits are the file suffixes (``train``, ``train_loc``, ``val``, ``test``, ``test_binary``, ...); a
missing file leaves its split out. A caption record becomes the conversation DeltaVLM prompts with
("Please briefly describe the changes in these two images." / the first reference), its id is the stem
of ``image_A`` and all references are in ``captions``. Placeholder: ``"<image> <image> "`` (README) or
``"<image>"`` (docs/DATA.md); DeltaVLM itself strips it. Not confirmed: the exact form of the caption
records' paths (read as relative to ROOT/images like the others) and whether a ``val`` file exists (the
README lists 8 files without one; ``configs/defaults_cap.yaml`` names one).

``teochatlas`` (:class:`TEOChatlas`), TEOChatlas (Irvin et al., ICLR 2025; HF ``jirvin16/TEOChatlas``),
from ermongroup/TEOChat @ ``videollava/train/train.py`` (records: ``video`` = the list of frames,
``timestamp`` = one ``%Y-%m-%d`` date per frame or an empty list, frames sorted by it, ``image`` for
single-image records), ``videollava/eval/inference.py`` (``conversations``, ``video``, ``timestamp``,
``task``, ``polygon``), ``videollava/eval/eval.py`` (the eval split names) and ``TRAIN_AND_VALIDATE.md``::

    ROOT/train/instruct.json          a JSON list of records:
        {"video": [path, ...], "timestamp": ["YYYY-MM-DD", ...] or [], "task": str,
         "conversations": [{"from": "human", "value": "... <video> ..."}, {"from": "gpt", ...}],
         "polygon": WKT (eval files), "id" (if any)}
    ROOT/eval/<Split>.json            the same records, e.g. eval/CDVQA.json

Splits: ``train`` and ``eval_<Split>`` (the Hugging Face split names). Frames are sorted by date (as
TEOChat does); ``times`` holds the sorted dates. Records with one image (the GeoChat single-image
records, the AID / UCMerced / LRBEN / HRBEN splits) are not change data: they are left out and counted
in ``notes``. Placeholder: one ``<video>`` inside the first human turn ("... images in chronological
order: <video> ..."); it becomes ``<image>`` in place. Not confirmed: how the frame paths are written in
the JSON files (the released data is read through a Hugging Face loading script that was not in reach);
they are read as relative to ROOT (or to ``image_root``), absolute paths as they are; and whether records
carry an ``id`` (else ``<split>/<index>``). ``polygon`` is not read.

``qag-360k`` (:class:`QAG360K`), QAG-360K / QVG-360K (VisTA, Li et al. 2024), from like413/VisTA @
``VisTA/dataset/DataNew.py`` (record fields, ``im1``/``im2`` folders, ``mask/<id>.png`` binarised at 0.5)
and ``VisTA/train.py`` / ``VisTA/test.py`` (``./train/json/Train.json``, ``./val/json/Val.json``,
``./test/json/Test.json``, ``image/``, ``mask/``)::

    ROOT/{train,val,test}/json/{Train,Val,Test}.json
        {"question": [{"id": int, "img_id": "00017.png", "type": str, "question": str, "answer": str}]}
    ROOT/<split>/image/im1/<img_id>, ROOT/<split>/image/im2/<img_id>
    ROOT/<split>/mask/<id>.png        one per question; >= 128 is the visual answer (empty: no change)

A question becomes ``[{"human": "<image>\\n" + question}, {"gpt": answer}]``.

``changeimti`` (:class:`ChangeIMTI`), ChangeIMTI (ChangeVG, TGRS; HF ``Quan999/ChangeIMTI``), from
Quan-zzx/ChangeVG @ ``deal_data/deal_data.ipynb`` (commit f60ac418: ``get_single_data`` /
``get_multi_data`` build the records, the last cells ``json.dump(..., indent=4)`` them per task)::

    ROOT/train_task_data/{caption,binary_class,count_road,count_build,loc_road,loc_build,mul}.json
    ROOT/test_task_data/{binary_class,count_road,count_build,loc_road,loc_build,mul}.json  (caption.json
                                                                  may be there too; it is read if so)
        a JSON list of {"conversations": [{"from": "human", "value": "...:<image> and <image>..."},
                                          {"from": "gpt", "value": "..."}, ...],
                        "images": ["/data/coding/datasets/LEVIR-MCI-dataset/images/train/A/train_000001.png",
                                   "/data/coding/datasets/LEVIR-MCI-dataset/images/train/B/train_000001.png"]}
        no "id"; ``mul.json`` holds 4 exchanges (change? / roads / buildings / "Please describe the changes.")
    ROOT/images/{train,val,test}/{A,B}/*.png   LEVIR-MCI's ``images`` folder (or a link to it), put there by
                                               the user: the records hold the authors' absolute paths

Splits: ``train`` and ``test`` (the folder prefixes; a missing folder leaves its split out), each the task
files in the order above (a missing file is skipped; another ``*.json`` in the folder is named in
``notes``). A record's ``task`` is its file's stem and its id ``<split>/<task>/<index in the file>``. An
image path is the path as written (relative: to ROOT) when that exists, else the part after its last
``images`` component (all of a relative path without one) under ROOT/images, else under ``image_root``
when given. Placeholder: ``<image> and <image>`` in the first human turn ("... in these two
images:<image> and <image>. Please answer yes or no."); it becomes one ``<image>`` in place. Not
confirmed: the Hugging Face release was not in reach, so its folder names could differ from the
notebook's ``train_task_data`` / ``test_task_data`` (the notebook writes them under ``muti_task_data/``,
here ROOT), and it may hold relative paths (which the ``images`` rule also resolves); the stored
notebook skips LEVIR's ``test`` pairs in both cells, so which pairs the released test files hold is not
known (the reader does not depend on it).

Not read here: GeoLLaVA (HosamGen/GeoLLaVA: ``annotations/updated_{train,val}_annotations.json`` with
MP4 clips, which need a video decoder).
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from changescope.data.imageio import read_array, read_rgb, to_tensor_series
from changescope.data.readers.base import checked_root_and_split, one_size, read_json
from changescope.data.records import read_jsonl
from changescope.errors import DataError

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
ROLES = ("human", "gpt")
#: one run of placeholders, e.g. "<image> <image>" or "<video>"
_PLACEHOLDER_RUN = re.compile(r"(?:<image>|<video>)(?:\s*(?:<image>|<video>))*")
#: the same, the placeholders also joined by "and" ("<image> and <image>", as ChangeIMTI writes them)
_PLACEHOLDER_AND_RUN = re.compile(r"(?:<image>|<video>)(?:\s*(?:and\s*)?(?:<image>|<video>))*")


@dataclass
class InstructionEntry:
    """One record as the index file lists it, checked, before any pixel is read."""

    id: str
    split: str
    #: one image per date, oldest first
    images: list[Path]
    #: the normalised turns
    conversations: list[dict[str, str]]
    #: where the record is listed (``file:line`` or ``file: record N``), for error messages
    source: str
    #: ISO dates, one per image, when the record has them
    times: list[str] | None = None
    #: a per-record answer mask (qag-360k)
    mask: Path | None = None
    #: further sample keys (captions, question, answer, ...)
    extra: dict[str, Any] = field(default_factory=dict)
    #: image path -> the path as the record wrote it, where the reader looked for it elsewhere (messages)
    written: dict[Path, str] = field(default_factory=dict)

    def files(self) -> list[Path]:
        """Every file this record needs, in a stable order."""
        return [*self.images, *([self.mask] if self.mask else [])]


def check_turns(where: str, turns: Any) -> list[dict[str, str]]:
    """The turns of a record: a non-empty list of ``{"from", "value"}``, human first, alternating, the last
    from gpt."""
    if not isinstance(turns, list) or not turns:
        raise DataError(where, "'conversations' must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataError(where, f"conversations[{i}] needs 'from' and a string 'value'")
        role = turn.get("from")
        if role not in ROLES:
            raise DataError(where, f"conversations[{i}] is from {role!r}; expected 'human' or 'gpt'")
        if role != ROLES[i % 2]:
            raise DataError(
                where,
                f"conversations[{i}] is from '{role}': turns must alternate human, gpt, starting with human",
            )
        out.append({"from": role, "value": turn["value"]})
    if out[-1]["from"] != "gpt":
        last = len(out) - 1
        raise DataError(where, f"the last turn (conversations[{last}]) is a question without an answer")
    return out


def check_placeholder(where: str, turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """``turns`` when ``<image>`` is exactly once in the first human turn and nowhere else (the canonical
    form); an error naming what was found otherwise."""
    if any(VIDEO_TOKEN in t["value"] for t in turns):
        raise DataError(where, f"'{VIDEO_TOKEN}' is not used here; write one '{IMAGE_TOKEN}' for all images")
    first, later = turns[0]["value"].count(IMAGE_TOKEN), sum(t["value"].count(IMAGE_TOKEN) for t in turns[1:])
    if first != 1 or later:
        raise DataError(
            where,
            f"'{IMAGE_TOKEN}' must appear exactly once, in the first human turn "
            f"(found {first} there and {later} in later turns)",
        )
    return turns


def normalise_placeholder(
    where: str, turns: list[dict[str, str]], run: re.Pattern[str] = _PLACEHOLDER_RUN
) -> list[dict[str, str]]:
    """A released set's turns in the canonical form: the one run of placeholders of the first human turn
    (``<image> <image>``, ``<video>``; what ``run`` matches) becomes one ``<image>``; a first turn without
    one gets it in front."""
    for i, turn in enumerate(turns[1:], start=1):
        if IMAGE_TOKEN in turn["value"] or VIDEO_TOKEN in turn["value"]:
            raise DataError(where, f"conversations[{i}] holds an image placeholder; only the first turn may")
    text = turns[0]["value"]
    runs = list(run.finditer(text))
    if len(runs) > 1:
        raise DataError(where, "the first turn has image placeholders in more than one place")
    if not runs:
        value = f"{IMAGE_TOKEN}\n{text.strip()}"
    else:
        before, after = text[: runs[0].start()], text[runs[0].end() :]
        value = before + IMAGE_TOKEN + after if before.strip() else f"{IMAGE_TOKEN}\n{after.strip()}"
    return [{"from": "human", "value": value}, *turns[1:]]


def json_records(path: Path) -> list[tuple[str, Any]]:
    """``(where, record)`` for every record of a JSON list; ``where`` is ``file: record N`` (0-based)."""
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, "expected a JSON list of records")
    return [(f"{path}: record {i}", record) for i, record in enumerate(data)]


def _record_id(record: dict[str, Any], fallback: str) -> str:
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        return fallback
    return str(value)


def _paths(where: str, value: Any, key: str) -> list[str]:
    """The image paths of a record: a list of at least two non-empty strings."""
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        raise DataError(where, f"'{key}' must be a list of image paths (strings)")
    if len(value) < 2:
        raise DataError(where, f"'{key}' lists {len(value)} image(s); a change needs at least 2")
    return value


def _resolve(base: Path, path: str) -> Path:
    p = Path(path.strip())
    return p if p.is_absolute() else base / p


def _images_tail(path: str) -> Path | None:
    """The part of ``path`` after its last ``images`` component (``.../images/train/A/x.png`` ->
    ``train/A/x.png``); all of a relative path without one; None for an absolute path without one."""
    parts = Path(path.strip()).parts
    after = [i + 1 for i, part in enumerate(parts) if part == "images"]
    if after:
        return Path(*parts[after[-1] :]) if parts[after[-1] :] else None
    return None if Path(path.strip()).is_absolute() else Path(*parts)


class InstructionDataset(torch.utils.data.Dataset):
    """Base for instruction readers: the sample contract of this module."""

    name: ClassVar[str] = ""
    #: the ``--format`` name (same as ``name``)
    format: ClassVar[str] = ""
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")
    #: the project's own format must already be canonical; released sets are normalised
    strict_placeholder: ClassVar[bool] = False
    #: whether samples carry ``times`` (None for a record without dates)
    has_times: ClassVar[bool] = False
    #: what one run of placeholders in the first human turn is (released sets; see the module docstring)
    placeholder_run: ClassVar[re.Pattern[str]] = _PLACEHOLDER_RUN

    def __init__(self, root: str | Path, split: str = "train", check_files: bool = True):
        self.root, self.split = checked_root_and_split(root, split, self.name, self.splits)
        #: the split's index file (for messages)
        self.index_path: Path = self.index_file(self.root, split)
        #: records of the split that are left out (e.g. single images), one line per kind
        self.notes: list[str] = []
        self.entries: list[InstructionEntry] = self._entries()
        if check_files:
            for entry in self.entries:
                for error in self.missing_files(entry):
                    raise error

    # hooks ----------------------------------------------------------------------------------------
    @classmethod
    def index_file(cls, root: Path, split: str) -> Path:
        """The file that lists ``split``."""
        raise NotImplementedError

    @classmethod
    def matches(cls, root: Path) -> bool:
        """Whether ``root`` holds this format's layout (for ``detect_format``): some split's index file."""
        return any(cls.index_file(root, split).is_file() for split in cls.splits)

    def _entries(self) -> list[InstructionEntry]:
        raise NotImplementedError

    def read_mask(self, entry: InstructionEntry, shape: tuple[int, int]) -> np.ndarray | None:
        """``[H, W]`` int64 answer mask of a record, or None when the format has none."""
        return None

    # -----------------------------------------------------------------------------------------------
    def conversation(self, where: str, turns: Any) -> list[dict[str, str]]:
        """The record's turns, checked, with the placeholder in the canonical form."""
        turns = check_turns(where, turns)
        if self.strict_placeholder:
            return check_placeholder(where, turns)
        return normalise_placeholder(where, turns, self.placeholder_run)

    @staticmethod
    def missing_files(entry: InstructionEntry) -> list[DataError]:
        """One error for each file of ``entry`` that is not there (with the path as the record wrote it,
        where the reader looked for it elsewhere)."""
        errors = []
        for path in entry.files():
            if not path.is_file():
                written = entry.written.get(path)
                also = f" as '{written}', which is not there either" if written else ""
                errors.append(DataError(path, f"file not found (listed by {entry.source}{also})"))
        return errors

    def read_images(self, entry: InstructionEntry) -> list[np.ndarray]:
        return one_size(entry.images, [read_rgb(p) for p in entry.images], noun="sample")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        arrays = self.read_images(entry)
        sample: dict[str, Any] = {
            "id": entry.id,
            "image": to_tensor_series(arrays),
            "conversations": [dict(turn) for turn in entry.conversations],
        }
        if self.has_times:
            sample["times"] = list(entry.times) if entry.times else None
        for key, value in entry.extra.items():
            sample[key] = list(value) if isinstance(value, list) else value
        mask = self.read_mask(entry, arrays[0].shape[:2])
        if mask is not None:
            sample["mask"] = torch.from_numpy(mask.astype(np.int64, copy=False))
        return sample


class WithImageRoot(InstructionDataset):
    """A reader whose records name images that may live outside ROOT: ``image_root`` is where its relative
    paths are looked for (TEOChatlas: joined to it instead of ROOT; ChangeIMTI: a further place to look)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        check_files: bool = True,
        image_root: str | Path | None = None,
    ):
        self.image_root = None if image_root is None else Path(image_root)
        super().__init__(root, split, check_files)


# --------------------------------------------------------------------------------------------------
# changescope-instructions: the project's own layout
# --------------------------------------------------------------------------------------------------
class ChangescopeInstructions(InstructionDataset):
    """The project's instruction JSONL (module docstring): ``ROOT/<split>.jsonl``, records of ``id``,
    ``images`` (relative to the file's folder, oldest first) and ``conversations``, and optionally
    ``kinds`` (what each human turn asks, e.g. caption / count / grid: ``data.instructions`` writes it, and
    evaluation scores per kind)."""

    name = format = "changescope-instructions"
    strict_placeholder = True
    fields: ClassVar[tuple[str, ...]] = ("id", "images", "conversations")
    optional: ClassVar[tuple[str, ...]] = ("kinds",)

    @classmethod
    def index_file(cls, root: Path, split: str) -> Path:
        return root / f"{split}.jsonl"

    @classmethod
    def matches(cls, root: Path) -> bool:
        # a ``<split>.jsonl`` is a common name: it must hold these records, not some other JSONL
        for split in cls.splits:
            path = cls.index_file(root, split)
            if path.is_file():
                try:
                    first = next(read_jsonl(path), None)
                except DataError:
                    return False
                if first is None or not isinstance(first[1], dict):
                    return False
                return set(first[1]) - set(cls.optional) == set(cls.fields)
        return False

    def _entries(self) -> list[InstructionEntry]:
        return [self._entry(where, row) for where, row in read_jsonl(self.index_path)]

    def _entry(self, where: str, row: Any) -> InstructionEntry:
        if not isinstance(row, dict):
            raise DataError(where, "a record must be a JSON object")
        unknown = sorted(set(row) - set(self.fields) - set(self.optional))
        if unknown:
            known = ", ".join(self.fields) + " and optionally " + ", ".join(self.optional)
            raise DataError(where, f"unknown fields {unknown} (a record holds {known})")
        if not isinstance(row.get("id"), str) or not row["id"]:
            raise DataError(where, "missing field 'id' (a non-empty string)")
        if "conversations" not in row:
            raise DataError(where, "missing field 'conversations'")
        images = _paths(where, row.get("images"), "images")
        entry = InstructionEntry(
            id=row["id"],
            split=self.split,
            images=[_resolve(self.index_path.parent, p) for p in images],
            conversations=self.conversation(where, row["conversations"]),
            source=where,
        )
        if "kinds" in row:
            kinds, asked = row["kinds"], len(entry.conversations) // 2
            listed = isinstance(kinds, list) and all(isinstance(k, str) for k in kinds)
            if not listed or len(kinds) != asked:
                raise DataError(where, f"'kinds' must list one string per human turn ({asked})")
            entry.extra["kinds"] = kinds
        return entry


# --------------------------------------------------------------------------------------------------
# ChangeChat-87k and ChangeChat-105k (DeltaVLM): LLaVA-style pair records over LEVIR images
# --------------------------------------------------------------------------------------------------
class _LlavaPairs(InstructionDataset):
    """Records ``{"id", "image": [A, B], "conversations"}`` with paths relative to ``image_dir``."""

    image_dir: ClassVar[str] = "images"

    def _pair_entry(self, where: str, record: Any, index: int) -> InstructionEntry:
        if not isinstance(record, dict):
            raise DataError(where, "a record must be a JSON object")
        images = _paths(where, record.get("image"), "image")
        if "conversations" not in record:
            raise DataError(where, "missing field 'conversations'")
        return InstructionEntry(
            id=_record_id(record, f"{self.split}/{index}"),
            split=self.split,
            images=[_resolve(self.root / self.image_dir, p) for p in images],
            conversations=self.conversation(where, record["conversations"]),
            source=where,
        )


class ChangeChat(_LlavaPairs):
    """ChangeChat-87k as released (module docstring): one JSON list beside LEVIR-MCI's ``images/``."""

    name = format = "changechat"
    splits = ("train",)
    index_name: ClassVar[str] = "ChangeChat_instruct_gpt_87k.json"

    @classmethod
    def index_file(cls, root: Path, split: str) -> Path:
        return root / cls.index_name

    def _entries(self) -> list[InstructionEntry]:
        return [self._pair_entry(where, r, i) for i, (where, r) in enumerate(json_records(self.index_path))]


class ChangeChat105k(_LlavaPairs):
    """ChangeChat-105k as DeltaVLM lays it out (module docstring): ``annotations/`` and ``images/``."""

    name = format = "changechat-105k"
    splits = (
        "train",
        "train_loc",
        "val",
        "test",
        "test_binary",
        "test_count",
        "test_loc",
        "test_open",
        "test_dialog",
    )
    annotation_dir: ClassVar[str] = "annotations"
    file_pattern: ClassVar[str] = "changechat_105k_{split}.json"
    #: DeltaVLM's fixed prompt for the caption records (``infer_subtasks.DEFAULT_CAPTION_PROMPT``)
    caption_prompt: ClassVar[str] = "Please briefly describe the changes in these two images."

    @classmethod
    def index_file(cls, root: Path, split: str) -> Path:
        return root / cls.annotation_dir / cls.file_pattern.format(split=split)

    def _entries(self) -> list[InstructionEntry]:
        entries = []
        for i, (where, record) in enumerate(json_records(self.index_path)):
            caption = isinstance(record, dict) and "conversations" not in record and "image_A" in record
            entry = self._caption_entry(where, record) if caption else self._pair_entry(where, record, i)
            entries.append(entry)
        return entries

    def _caption_entry(self, where: str, record: dict[str, Any]) -> InstructionEntry:
        images = [record.get("image_A"), record.get("image_B")]
        for key, path in zip(("image_A", "image_B"), images, strict=True):
            if not isinstance(path, str) or not path.strip():
                raise DataError(where, f"missing field '{key}' (an image path)")
        captions = record.get("captions")
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise DataError(where, "'captions' must be a non-empty list of strings")
        turns = [
            {"from": "human", "value": self.caption_prompt},
            {"from": "gpt", "value": captions[0].strip()},
        ]
        return InstructionEntry(
            id=Path(images[0]).stem,
            split=self.split,
            images=[_resolve(self.root / self.image_dir, p) for p in images],
            conversations=self.conversation(where, turns),
            source=where,
            extra={"captions": [c.strip() for c in captions]},
        )


# --------------------------------------------------------------------------------------------------
# TEOChatlas: temporal sequences with dates
# --------------------------------------------------------------------------------------------------
def _iso_date(where: str, text: Any) -> str:
    """A ``%Y-%m-%d`` date (as TEOChat parses it, so ``2018-1-5`` too) as an ISO date."""
    try:
        return datetime.datetime.strptime(str(text).strip(), "%Y-%m-%d").date().isoformat()
    except ValueError:
        raise DataError(where, f"timestamp {text!r} is not a date (YYYY-MM-DD)") from None


class TEOChatlas(WithImageRoot):
    """TEOChatlas as released on Hugging Face (module docstring): ``train/instruct.json``,
    ``eval/<Split>.json``; frames sorted by date."""

    name = format = "teochatlas"
    #: the evaluation files (``videollava/eval/eval.py``, ``dataset_name2hf_split``)
    eval_names: ClassVar[tuple[str, ...]] = (
        "fMoW_High_Res",
        "fMoW_Low_Res",
        "ABCD",
        "CDVQA",
        "AID",
        "UCMerced",
        "LRBEN",
        "HRBEN",
        "xBD_Change_Detection_Localization",
        "xBD_Change_Detection_Classification",
        "S2Looking_Change_Detection",
        "xBD_SRE_QA_RQA",
        "S2Looking_SRE_QA",
        "S2Looking_RQA",
        "QFabric_RQA2",
        "QFabric_RQA5_RTQA5",
        "QFabric_TRE_RTQA",
    )
    splits = ("train", *(f"eval_{n}" for n in eval_names))
    has_times = True

    @classmethod
    def index_file(cls, root: Path, split: str) -> Path:
        if split == "train":
            return root / "train" / "instruct.json"
        return root / "eval" / f"{split.removeprefix('eval_')}.json"

    def _entries(self) -> list[InstructionEntry]:
        base = self.image_root or self.root
        entries, single = [], 0
        for i, (where, record) in enumerate(json_records(self.index_path)):
            if not isinstance(record, dict):
                raise DataError(where, "a record must be a JSON object")
            frames = record.get("video")
            if frames is None or (isinstance(frames, list) and len(frames) < 2):
                if frames is None and "image" not in record:
                    raise DataError(where, "missing field 'video' (the list of frames)")
                single += 1  # one image: GeoChat-style, not change data
                continue
            frames = _paths(where, frames, "video")
            times = self._times(where, record.get("timestamp"), len(frames))
            if times is not None:  # oldest first, as TEOChat orders them (a stable sort)
                order = sorted(range(len(frames)), key=lambda k: times[k])
                frames, times = [frames[k] for k in order], [times[k] for k in order]
            task = record.get("task")
            entries.append(
                InstructionEntry(
                    id=_record_id(record, f"{self.split}/{i}"),
                    split=self.split,
                    images=[_resolve(base, p) for p in frames],
                    conversations=self.conversation(where, record.get("conversations")),
                    source=where,
                    times=times,
                    extra={"task": task if isinstance(task, str) else None},
                )
            )
        if single:
            left_out = f"{single} single-image record(s) left out (not change data)"
            self.notes.append(f"{self.index_path}: {left_out}")
        return entries

    @staticmethod
    def _times(where: str, value: Any, count: int) -> list[str] | None:
        if value is None or value == []:
            return None
        if not isinstance(value, list) or len(value) != count:
            got = len(value) if isinstance(value, list) else type(value).__name__
            raise DataError(where, f"'timestamp' must list one date per frame ({count}), got {got}")
        return [_iso_date(where, t) for t in value]


# --------------------------------------------------------------------------------------------------
# QAG-360K: change questions with a textual and a visual (mask) answer
# --------------------------------------------------------------------------------------------------
class QAG360K(InstructionDataset):
    """QAG-360K as VisTA reads it (module docstring): ``<split>/json/<Split>.json``, ``image/im1``,
    ``image/im2``, ``mask/<id>.png``."""

    name = format = "qag-360k"
    json_names: ClassVar[dict[str, str]] = {"train": "Train", "val": "Val", "test": "Test"}
    #: mask values at or above this are the visual answer (VisTA: value / 255 > 0.5)
    mask_threshold: ClassVar[int] = 128

    @classmethod
    def index_file(cls, root: Path, split: str) -> Path:
        return root / split / "json" / f"{cls.json_names[split]}.json"

    def _entries(self) -> list[InstructionEntry]:
        data = read_json(self.index_path)
        if not isinstance(data, dict) or not isinstance(data.get("question"), list):
            raise DataError(self.index_path, "missing field 'question' (the list of questions)")
        folder = self.index_path.parent.parent
        return [
            self._entry(f"{self.index_path}: question {i}", q, folder) for i, q in enumerate(data["question"])
        ]

    def _entry(self, where: str, q: Any, folder: Path) -> InstructionEntry:
        if not isinstance(q, dict):
            raise DataError(where, "a question must be a JSON object")
        for key in ("img_id", "type", "question", "answer"):
            if not isinstance(q.get(key), str) or not q[key].strip():
                raise DataError(where, f"missing field '{key}' (a string)")
        if isinstance(q.get("id"), bool) or not isinstance(q.get("id"), int | str) or q["id"] == "":
            raise DataError(where, "missing field 'id' (the question id, which names its mask)")
        qid = str(q["id"])
        turns = [{"from": "human", "value": q["question"]}, {"from": "gpt", "value": q["answer"]}]
        return InstructionEntry(
            id=qid,
            split=self.split,
            images=[folder / "image" / "im1" / q["img_id"], folder / "image" / "im2" / q["img_id"]],
            conversations=self.conversation(where, turns),
            source=f"{where} (id {qid})",
            mask=folder / "mask" / f"{qid}.png",
            extra={"question": q["question"], "answer": q["answer"], "qtype": q["type"]},
        )

    def read_mask(self, entry: InstructionEntry, shape: tuple[int, int]) -> np.ndarray | None:
        if entry.mask is None:
            return None
        values = read_array(entry.mask)
        if values.ndim == 3:
            values = values[:, :, 0]
        if values.shape != shape:
            raise DataError(
                entry.mask, f"mask is {values.shape[1]}x{values.shape[0]}, images are {shape[1]}x{shape[0]}"
            )
        return (values >= self.mask_threshold).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# ChangeIMTI (ChangeVG): one JSON list per task over LEVIR-MCI pairs, with the authors' absolute paths
# --------------------------------------------------------------------------------------------------
class ChangeIMTI(WithImageRoot):
    """ChangeIMTI as ChangeVG's generator writes it (module docstring): ``<split>_task_data/<task>.json``,
    LEVIR-MCI's ``images/`` at ROOT/images; the split's index is its folder."""

    name = format = "changeimti"
    splits = ("train", "test")
    folder_pattern: ClassVar[str] = "{split}_task_data"
    #: the task files, in the order a split concatenates them (the notebook's order of writing)
    tasks: ClassVar[tuple[str, ...]] = (
        "caption",
        "binary_class",
        "count_road",
        "count_build",
        "loc_road",
        "loc_build",
        "mul",
    )
    #: where the user puts LEVIR-MCI's ``images`` folder (or a link to it)
    image_dir: ClassVar[str] = "images"
    placeholder_run = _PLACEHOLDER_AND_RUN

    @classmethod
    def index_file(cls, root: Path, split: str) -> Path:
        return root / cls.folder_pattern.format(split=split)

    @classmethod
    def matches(cls, root: Path) -> bool:
        folders = [cls.index_file(root, split) for split in cls.splits]
        return any((folder / f"{task}.json").is_file() for folder in folders for task in cls.tasks)

    def _entries(self) -> list[InstructionEntry]:
        folder = self.index_path
        if not folder.is_dir():
            raise DataError(folder, "file not found (the folder of this split's task files)")
        files = [(task, folder / f"{task}.json") for task in self.tasks]
        files = [(task, path) for task, path in files if path.is_file()]
        if not files:
            names = ", ".join(f"{task}.json" for task in self.tasks)
            raise DataError(folder, f"none of the task files is there ({names})")
        for other in sorted(p for p in folder.glob("*.json") if p.stem not in self.tasks):
            self.notes.append(f"{other}: not read (not one of the ChangeIMTI task files)")
        found: dict[str, tuple[Path, bool]] = {}
        entries = []
        for task, path in files:
            for i, (where, record) in enumerate(json_records(path)):
                entries.append(self._entry(where, record, f"{self.split}/{task}/{i}", task, found))
        return entries

    def _entry(
        self, where: str, record: Any, record_id: str, task: str, found: dict[str, tuple[Path, bool]]
    ) -> InstructionEntry:
        if not isinstance(record, dict):
            raise DataError(where, "a record must be a JSON object")
        if "conversations" not in record:
            raise DataError(where, "missing field 'conversations'")
        paths = _paths(where, record.get("images"), "images")
        entry = InstructionEntry(
            id=record_id,
            split=self.split,
            images=[],
            conversations=self.conversation(where, record["conversations"]),
            source=where,
            extra={"task": task},
        )
        for written in paths:
            if written not in found:
                found[written] = self._find_image(written)
            image, moved = found[written]
            entry.images.append(image)
            if moved:
                entry.written[image] = written.strip()
        return entry

    def _find_image(self, written: str) -> tuple[Path, bool]:
        """Where an image path of a record is: the first of the path as written (relative: to ROOT), its
        ``images`` tail under ROOT/images, that tail under ``image_root``, that is a file; else the last
        of them (for the message). The flag says whether it is not the path as written."""
        candidates = [_resolve(self.root, written)]
        tail = _images_tail(written)
        if tail is not None:
            candidates.append(self.root / self.image_dir / tail)
            if self.image_root is not None:
                candidates.append(self.image_root / tail)
        image = next((c for c in candidates if c.is_file()), candidates[-1])
        return image, image != candidates[0]


#: the instruction formats, in the order ``detect_format`` tries them
DETECTION_ORDER: tuple[type[InstructionDataset], ...] = (
    ChangeChat105k,
    ChangeChat,
    TEOChatlas,
    QAG360K,
    ChangeIMTI,
    ChangescopeInstructions,
)


def detect(root: Path) -> str | None:
    """The instruction format whose layout ``root`` holds, or None."""
    for cls in DETECTION_ORDER:
        if cls.matches(root):
            return cls.name
    return None
