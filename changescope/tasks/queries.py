"""Questions and grounding queries joined to the image pairs they are about, for training and evaluation.

A dataset's pairs come from its reader (captions, masks); its questions come from JSONL records
(``records.jsonl`` beside a SynthChange dataset) or from CDVQA's three files. Records are joined to pairs
by the resolved path of the first image, so any reader and any record file meet without shared ids. A
dataset with questions but no caption index (CDVQA) gets its pairs from the records (``RecordPairs``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from changescope.data.imageio import read_array, read_rgb, to_tensor_pair
from changescope.data.readers import detect_format, open_dataset
from changescope.data.readers.base import PairEntry
from changescope.data.records import Record, read_records
from changescope.errors import DataError

#: the question type answered in free form by the caption decoder
OPEN = "open"
#: questions that ask for a description; trained with the pair's captions as answers
OPEN_PROMPTS = (
    "what changed?",
    "describe the changes.",
    "what is different between the two images?",
    "what has changed between the two dates?",
    "describe what happened here.",
    "can you describe the change?",
)
RECORDS_FILE = "records.jsonl"


def read_target(path: str | Path) -> np.ndarray:
    """A grounding target (PNG, first band of a colour one) as a boolean mask: non-zero is the target."""
    values = read_array(path)
    return (values[..., 0] if values.ndim == 3 else values) != 0


@dataclass
class PairQueries:
    #: (question, qtype, answer)
    vqa: list[tuple[str, str, str]] = field(default_factory=list)
    #: (query, target mask path)
    grounding: list[tuple[str, Path]] = field(default_factory=list)


def _key(path: str | Path) -> str:
    return str(Path(path).resolve())


def load_records(data: str | Path, split: str, format: str | None = None) -> list[Record]:
    """The split's vqa and grounding records with absolute image / mask paths ([] if the data has none)."""
    root = Path(data)
    fmt = format or detect_format(root)
    if fmt == "cdvqa":
        return open_dataset(root, split, "cdvqa", check_files=False).to_records()
    path = root / RECORDS_FILE
    if not path.is_file():
        return []
    out = []
    for record in read_records(path):
        if record.task not in ("vqa", "grounding") or record.meta.get("split") != split:
            continue
        record.images = [{**i, "path": str(path.parent / i["path"])} for i in record.images]
        if record.mask is not None:
            record.mask = str(path.parent / record.mask)
        out.append(record)
    return out


def attach(entries: list[PairEntry], records: list[Record], source: str | Path) -> list[PairQueries]:
    """Each pair's questions and queries (records about other images are an error: they would be lost)."""
    index = {_key(e.images[0]): i for i, e in enumerate(entries)}
    out = [PairQueries() for _ in entries]
    for record in records:
        i = index.get(_key(record.images[0]["path"]))
        if i is None:
            raise DataError(
                source, f"record '{record.id}' is about {record.images[0]['path']}, not a pair here"
            )
        if record.task == "vqa":
            if record.question is None or record.answer is None or record.qtype is None:
                raise DataError(source, f"vqa record '{record.id}' needs question, qtype and answer")
            out[i].vqa.append((record.question, record.qtype, record.answer))
        else:
            if record.question is None or record.mask is None:
                raise DataError(source, f"grounding record '{record.id}' needs a question and a mask")
            out[i].grounding.append((record.question, Path(record.mask)))
    return out


class RecordPairs(Dataset):
    """The image pairs that question records are about, as a caption-less pair dataset (for CDVQA)."""

    has_masks = False
    classes: tuple[str, ...] = ()
    no_change_sentences: tuple[str, ...] = ()

    def __init__(self, records: list[Record], split: str, check_files: bool = True):
        seen: dict[str, PairEntry] = {}
        for record in records:
            key = _key(record.images[0]["path"])
            if key not in seen:
                images = tuple(Path(i["path"]) for i in record.images)
                seen[key] = PairEntry(id=images[0].stem, split=split, images=images, captions=[])
        self.entries = list(seen.values())
        if check_files:
            for entry in self.entries:
                for path in entry.images:
                    if not path.is_file():
                        raise DataError(path, "file not found (listed by a question record)")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        a, b = read_rgb(entry.images[0]), read_rgb(entry.images[-1])
        if a.shape != b.shape:
            raise DataError(
                entry.images[-1], f"image is {b.shape[:2]}, {entry.images[0].name} is {a.shape[:2]}"
            )
        return {"id": entry.id, "image": to_tensor_pair(a, b), "captions": [], "changed": False}


def first_pairs(dataset, records: list[Record], limit: int | None) -> list[Record]:
    """Keep the first ``limit`` pairs of ``dataset`` (in place) and return the records about them; None
    keeps everything."""
    if limit is None:
        return records
    dataset.entries = dataset.entries[:limit]
    kept = {_key(e.images[0]) for e in dataset.entries}
    return [r for r in records if _key(r.images[0]["path"]) in kept]


def open_pairs(data: str | Path, split: str, format: str | None = None, check_files: bool = True):
    """``(pair dataset, its records)``: the reader's pairs, or the records' pairs for question-only data."""
    from changescope.data.mix import MixedPairs, is_mix_file

    if is_mix_file(data):
        return MixedPairs(data, split, check_files), []
    fmt = format or detect_format(data)
    records = load_records(data, split, fmt)
    if fmt == "cdvqa":
        return RecordPairs(records, split, check_files), records
    return open_dataset(data, split, fmt, check_files=check_files), records


class WithQueries(Dataset):
    """Adds each pair's questions and grounding queries to the items of a pair dataset.

    In training each visit draws ``questions`` of the pair's questions and one grounding query (as one
    caption is drawn per visit), plus, when ``open_prompts`` and the pair has captions, a description
    prompt answered by one of its captions; in evaluation every question and query is kept. Grounding
    targets are read per visit and resized (nearest) to the model's size.
    """

    def __init__(
        self,
        base: Dataset,
        queries: list[PairQueries],
        processor,
        train: bool,
        seed: int = 0,
        questions: int = 3,
        open_prompts: bool = False,
    ):
        if len(base) != len(queries):
            raise ValueError(f"{len(queries)} query lists for {len(base)} pairs")
        self.base, self.queries, self.processor = base, queries, processor
        self.train, self.questions, self.open_prompts = train, questions, open_prompts
        self.rng = random.Random(seed + 1)

    def __len__(self) -> int:
        return len(self.base)

    def _target(self, path: Path) -> torch.Tensor:
        return self.processor.resize_mask(torch.from_numpy(read_target(path).astype(np.uint8)))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.base[index]
        pair = self.queries[index]
        vqa, grounding = list(pair.vqa), list(pair.grounding)
        if self.train:
            vqa = self.rng.sample(vqa, min(self.questions, len(vqa)))
            grounding = self.rng.sample(grounding, min(1, len(grounding)))
            if self.open_prompts and item["captions"]:
                vqa.append((self.rng.choice(OPEN_PROMPTS), OPEN, self.rng.choice(item["captions"])))
        item["vqa"] = vqa
        item["grounding"] = [(query, self._target(path)) for query, path in grounding]
        return item


def collate_queries(items: list[dict[str, Any]], batch: dict[str, Any], size: int) -> None:
    """Flatten the items' questions and queries into ``batch``, each with the index of its pair."""
    rows = [(i, q) for i, item in enumerate(items) for q in item["vqa"]]
    batch["questions"] = [q for _, (q, _, _) in rows]
    batch["qtypes"] = [t for _, (_, t, _) in rows]
    batch["answers"] = [a for _, (_, _, a) in rows]
    batch["q_pair"] = torch.tensor([i for i, _ in rows], dtype=torch.long)
    grows = [(i, g) for i, item in enumerate(items) for g in item["grounding"]]
    batch["g_queries"] = [q for _, (q, _) in grows]
    batch["g_pair"] = torch.tensor([i for i, _ in grows], dtype=torch.long)
    batch["g_masks"] = (
        torch.stack([m for _, (_, m) in grows]) if grows else torch.zeros(0, size, size, dtype=torch.uint8)
    )
