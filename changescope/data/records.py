"""JSONL records for question / instruction data (DESIGN.md section 3).

One JSON object per line::

    {"id": "...", "task": "vqa", "images": [{"path": "A.png", "time": null}, {"path": "B.png", "time": null}],
     "question": "...", "qtype": "...", "answer": "...", "mask": null, "boxes": null, "meta": {}}

Paths are relative to the JSONL file's directory (absolute paths are kept as they are). ``boxes`` are
xyxy normalised to [0, 1]. ``mask`` is a PNG path; its stored values are class ids, except for
``task == "grounding"`` where any non-zero pixel is the target (read as 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changescope.data.imageio import read_array, read_rgb, to_tensor_pair
from changescope.errors import DataError
from changescope.fileio import atomic_path

TASKS = ("caption", "vqa", "grounding", "retrieval", "detection")


@dataclass
class Record:
    id: str
    task: str
    images: list[dict[str, Any]]
    question: str | None = None
    qtype: str | None = None
    answer: str | None = None
    mask: str | None = None
    boxes: list[list[float]] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        # not dataclasses.asdict: its deep copy of nested lists costs more than the JSON encoding
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, ensure_ascii=False)


def _parse(obj: Any, where: str) -> Record:
    if not isinstance(obj, dict):
        raise DataError(where, "a record must be a JSON object")
    for key in ("id", "task", "images"):
        if key not in obj:
            raise DataError(where, f"missing field '{key}'")
    if obj["task"] not in TASKS:
        raise DataError(where, f"unknown task '{obj['task']}' (known: {', '.join(TASKS)})")
    images = obj["images"]
    if not isinstance(images, list) or len(images) < 2:
        raise DataError(where, '\'images\' must list at least two {"path", "time"} entries')
    for image in images:
        if not isinstance(image, dict) or not isinstance(image.get("path"), str):
            raise DataError(where, "each entry of 'images' needs a 'path' string")
    boxes = obj.get("boxes")
    if boxes is not None:
        ok = isinstance(boxes, list) and all(
            isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in boxes
        )
        if not ok:
            raise DataError(where, "'boxes' must be a list of [x0, y0, x1, y1] (normalised to [0, 1])")
        if any(not (0 <= v <= 1) for b in boxes for v in b):
            raise DataError(where, "'boxes' values must be normalised to [0, 1]")
    known = {f for f in Record.__dataclass_fields__}
    extra = sorted(set(obj) - known)
    if extra:
        raise DataError(where, f"unknown fields {extra}")
    record = Record(**obj)
    if record.meta is None:
        record.meta = {}
    return record


def read_jsonl(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(where, object)`` for every non-blank line of a JSONL file; ``where`` is ``file:line``, which
    errors about the object name too."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(where, f"invalid JSON ({err.msg})") from None
            yield where, obj


def read_records(path: str | Path) -> list[Record]:
    """Read every record of a JSONL file; errors name ``file:line``."""
    return [_parse(obj, where) for where, obj in read_jsonl(path)]


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write records atomically; return how many were written."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for record in records:
            fh.write(record.to_json() + "\n")
            count += 1
    return count


class RecordDataset(torch.utils.data.Dataset):
    """Samples (DESIGN.md section 3) from a JSONL file, optionally filtered by task and ``meta.split``."""

    def __init__(self, path: str | Path, task: str | None = None, split: str | None = None):
        self.path = Path(path)
        self.root = self.path.parent
        records = read_records(self.path)
        self.records = [
            r
            for r in records
            if (task is None or r.task == task) and (split is None or r.meta.get("split") == split)
        ]

    def __len__(self) -> int:
        return len(self.records)

    def resolve(self, relpath: str) -> Path:
        p = Path(relpath)
        return p if p.is_absolute() else self.root / p

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        arrays = [read_rgb(self.resolve(image["path"])) for image in record.images]
        shapes = {a.shape for a in arrays}
        if len(shapes) != 1:
            paths = [str(self.resolve(i["path"])) for i in record.images]
            raise DataError(paths[-1], f"images of record '{record.id}' differ in size: {sorted(shapes)}")
        if len(arrays) == 2:
            image = to_tensor_pair(arrays[0], arrays[1])
        else:
            image = torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy()).float() / 255
        sample: dict[str, Any] = {"id": record.id, "image": image, "task": record.task}
        times = [i.get("time") for i in record.images]
        if any(t is not None for t in times):
            sample["times"] = times
        for key in ("question", "qtype", "answer"):
            value = getattr(record, key)
            if value is not None:
                sample[key] = value
        if record.mask is not None:
            mask_path = self.resolve(record.mask)
            values = read_array(mask_path)
            if values.ndim == 3:
                values = values[:, :, 0]
            if values.shape != arrays[0].shape[:2]:
                raise DataError(mask_path, f"mask is {values.shape}, images are {arrays[0].shape[:2]}")
            if record.task == "grounding":
                values = values != 0
            sample["mask"] = torch.from_numpy(values.astype(np.int64))
        if record.boxes is not None:
            sample["boxes"] = torch.tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
        return sample
