"""CDVQA (Yuan et al., TGRS 2022): change question answering in the RSVQA three-file layout.

Layout::

    ROOT/<P>_questions.json   {"questions": [{id, img_id, type, question, answers_ids, active}]}
    ROOT/<P>_answers.json     {"answers": [{id, question_id, answer, active}]}
    ROOT/<P>_images.json      {"images": [{id, file_name, questions_ids, active}]}
    ROOT/im1/<file_name>, ROOT/im2/<file_name>    the SECOND pair, before and after (or image/im1, image/im2)

with the prefix ``<P>`` one of ``Train``, ``Val``, ``Test``, ``Test2`` (splits train, val, test, test2).

A question is joined ``img_id -> images.id -> file_name`` and ``answers_ids[0] -> answers.id``. Many
``images`` records share one ``file_name`` (Val: 6,400 records over 400 pairs), so pairs are read by file
name. Records with ``"active": false`` are skipped, and so is a question whose image or answer record is
inactive. Question ids restart at 0 in every split: a sample's ``id`` is the question id, a record's id
adds the split (``val/12``) so that splits can share one JSONL file. ``res_x`` / ``res_y`` are a
constant leftover of RSVQA and are not read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from changescope.data.imageio import read_rgb, to_tensor_pair
from changescope.data.readers.base import checked_root_and_split, read_json
from changescope.data.records import Record
from changescope.errors import DataError


@dataclass(frozen=True)
class VQAItem:
    """One active question, joined with its answer and image pair."""

    id: int
    split: str
    question: str
    answer: str
    qtype: str
    file_name: str
    images: tuple[Path, Path]


def _records(path: Path, key: str, fields: tuple[str, ...]) -> dict[int, dict[str, Any]]:
    """The active records of one file by id; every record must carry ``fields``."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise DataError(path, f"missing field '{key}' (a list of records)")
    by_id: dict[int, dict[str, Any]] = {}
    for index, record in enumerate(data[key]):
        if not isinstance(record, dict):
            raise DataError(path, f"{key}[{index}] is not an object")
        for name in ("id", *fields):
            if name not in record:
                raise DataError(path, f"{key}[{index}] is missing field '{name}'")
        if record["id"] in by_id:
            raise DataError(path, f"{key}[{index}] repeats id {record['id']}")
        by_id[record["id"]] = record
    return by_id


def _active(record: dict[str, Any]) -> bool:
    return record.get("active", True) is not False


class CDVQA(torch.utils.data.Dataset):
    """Samples ``{"id", "image", "question", "answer", "qtype"}`` of one CDVQA split."""

    name: ClassVar[str] = "cdvqa"
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test", "test2")
    #: file-name prefix of each split
    prefixes: ClassVar[dict[str, str]] = {"train": "Train", "val": "Val", "test": "Test", "test2": "Test2"}
    #: the closed answer vocabulary (19)
    ANSWERS: ClassVar[tuple[str, ...]] = (
        "yes",
        "no",
        "NVG_surface",
        "buildings",
        "low_vegetation",
        "trees",
        "water",
        "playgrounds",
        "0",
        *(f"{low}_to_{low + 10}" for low in range(0, 100, 10)),
    )
    #: question types (8)
    QTYPES: ClassVar[tuple[str, ...]] = (
        "change_or_not",
        "increase_or_not",
        "decrease_or_not",
        "change_to_what",
        "smallest_change",
        "largest_change",
        "change_ratio",
        "change_ratio_types",
    )

    def __init__(self, root: str | Path, split: str = "train", check_files: bool = True):
        self.root, self.split = checked_root_and_split(root, split, self.name, self.splits)
        self.items: list[VQAItem] = self._items()
        if check_files:
            for path in sorted({path for item in self.items for path in item.images}):
                if not path.is_file():
                    raise DataError(path, f"file not found (listed in {self.index_file('images').name})")

    # layout ---------------------------------------------------------------------------------------
    def index_file(self, kind: str) -> Path:
        return self.root / f"{self.prefixes[self.split]}_{kind}.json"

    def image_dirs(self) -> tuple[Path, Path]:
        for base in (self.root, self.root / "image"):
            if (base / "im1").is_dir():
                return base / "im1", base / "im2"
        return self.root / "im1", self.root / "im2"  # absent: the missing-file errors name these

    def _items(self) -> list[VQAItem]:
        questions_path = self.index_file("questions")
        questions = _records(questions_path, "questions", ("img_id", "type", "question", "answers_ids"))
        answers = _records(self.index_file("answers"), "answers", ("answer",))
        images = _records(self.index_file("images"), "images", ("file_name",))
        before, after = self.image_dirs()
        items = []
        for qid, record in questions.items():
            if not _active(record):
                continue
            image = images.get(record["img_id"])
            if image is None:
                raise DataError(
                    questions_path,
                    f"question {qid} refers to img_id {record['img_id']}, which is not in "
                    f"{self.index_file('images').name}",
                )
            ids = record["answers_ids"]
            if not isinstance(ids, list) or not ids:
                raise DataError(questions_path, f"question {qid} has an empty 'answers_ids'")
            answer = answers.get(ids[0])
            if answer is None:
                answers_name = self.index_file("answers").name
                raise DataError(
                    questions_path,
                    f"question {qid} refers to answer id {ids[0]}, which is not in {answers_name}",
                )
            if not (_active(image) and _active(answer)):
                continue
            name = image["file_name"]
            items.append(
                VQAItem(
                    id=qid,
                    split=self.split,
                    question=record["question"],
                    answer=str(answer["answer"]),
                    qtype=record["type"],
                    file_name=name,
                    images=(before / name, after / name),
                )
            )
        return items

    # dataset --------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items)

    def read_images(self, item: VQAItem) -> tuple[np.ndarray, np.ndarray]:
        first, second = (read_rgb(path) for path in item.images)
        if first.shape != second.shape:
            raise DataError(
                item.images[1],
                f"image is {second.shape[1]}x{second.shape[0]} but {item.images[0].parent.name}/"
                f"{item.images[0].name} is {first.shape[1]}x{first.shape[0]}; "
                "the images of a pair must have one size",
            )
        return first, second

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        return {
            "id": str(item.id),
            "image": to_tensor_pair(*self.read_images(item)),
            "question": item.question,
            "answer": item.answer,
            "qtype": item.qtype,
        }

    def to_records(self, relative_to: str | Path | None = None) -> list[Record]:
        """JSONL records (task ``vqa``); image paths relative to ``relative_to`` when given, else absolute."""

        def where(path: Path) -> str:
            path = path.resolve()
            return (
                os.path.relpath(path, Path(relative_to).resolve()) if relative_to is not None else str(path)
            )

        return [
            Record(
                id=f"{item.split}/{item.id}",
                task="vqa",
                images=[{"path": where(path), "time": None} for path in item.images],
                question=item.question,
                qtype=item.qtype,
                answer=item.answer,
                meta={
                    "split": item.split,
                    "source": self.name,
                    "question_id": item.id,
                    "file_name": item.file_name,
                },
            )
            for item in self.items
        ]
