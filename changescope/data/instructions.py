"""Change instructions written from a labelled pair dataset (SynthChange, or any reader with masks).

Each pair becomes one multi-turn conversation in the ``changescope-instructions`` JSONL format::

    {"id": "train_000012", "images": ["../images/train/A/train_000012.png", "../images/train/B/..."],
     "conversations": [{"from": "human", "value": "<image>\\nDescribe what changed."},
                       {"from": "gpt", "value": "two houses are built along the road"}, ...],
     "kinds": ["caption", "count", "grid"]}

Every answer is read off the pair's labels, never invented: a caption (one of the references), yes / no
and counts from its question records (SynthChange's ``records.jsonl``), where the change is on a 3 x 3 grid
and how much of the image changed from its change mask. The first turn describes the change or says
whether there is one, or (a quarter of the conversations) is one question record on its own, the way
``ask`` and a VQA evaluation pose it; one to three follow-ups come after. Deterministic per seed.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from changescope.fileio import atomic_path

CAPTION_PROMPTS = (
    "Describe what changed between the two images.",
    "What changed here?",
    "Write one sentence about the change from the first date to the second.",
    "Summarise the differences between the earlier and the later image.",
)
CHANGED_PROMPTS = ("Did anything change?", "Is there any change between the two dates?")
GRID_PROMPT = "Where is the change? Name the parts of a 3 x 3 grid."
AREA_PROMPT = "How much of the image changed?"
CELLS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
#: a cell holds change when at least this share of its pixels changed
CELL_SHARE = 0.02
#: the question records' types that make turns (closed answers a user can check): all of SynthChange's
FOLLOW_UP_TYPES = (
    "change_or_not",
    "count",
    "increase_or_not",
    "decrease_or_not",
    "change_to_what",
    "largest_change",
    "smallest_change",
    "change_ratio",
    "change_ratio_types",
)
#: the share of conversations that open with one question record instead of a caption / did-it-change turn
QUESTION_FIRST = 0.25


def grid_answer(changed: np.ndarray) -> str:
    """Which cells of a 3 x 3 grid hold change (row by row), "nowhere" when none does."""
    h, w = changed.shape
    found = []
    for i, name in enumerate(CELLS):
        r, c = divmod(i, 3)
        cell = changed[r * h // 3 : (r + 1) * h // 3, c * w // 3 : (c + 1) * w // 3]
        if cell.size and cell.mean() >= CELL_SHARE:
            found.append(name)
    if not found:
        return "nowhere"
    return found[0] if len(found) == 1 else ", ".join(found[:-1]) + " and " + found[-1]


def area_answer(changed: np.ndarray) -> str:
    share = 100.0 * float(changed.mean())
    if share == 0:
        return "none of it"
    if share < 1:
        return "less than 1 % of the image"
    return f"about {share:.0f} % of the image"


def _answer_text(record) -> str:
    return str(record.answer).replace("_", " ")


def _asked(record, rng: random.Random) -> str:
    """A question record's text as a user might type it: as written, or capitalised."""
    question = record.question
    return question[:1].upper() + question[1:] if rng.random() < 0.5 else question


def conversation(
    captions: list[str], changed: np.ndarray, records: list, rng: random.Random
) -> tuple[list[dict[str, str]], list[str]]:
    """One pair's turns and their kinds (see the module docstring)."""
    turns: list[tuple[str, str, str]] = []
    any_change = bool(changed.any())
    follow = [r for r in records if r.qtype in FOLLOW_UP_TYPES and r.answer is not None]
    rng.shuffle(follow)
    first = rng.random()
    if first < QUESTION_FIRST and follow:  # one question alone, as `ask` and VQA evaluation pose it
        record = follow.pop()
        turns.append((record.qtype, _asked(record, rng), _answer_text(record)))
    elif first < QUESTION_FIRST + 0.55 and captions:
        turns.append(("caption", rng.choice(CAPTION_PROMPTS), rng.choice(captions)))
    else:
        turns.append(("changed", rng.choice(CHANGED_PROMPTS), "yes" if any_change else "no"))
    extra = [("grid", GRID_PROMPT, grid_answer(changed)), ("area", AREA_PROMPT, area_answer(changed))]
    extra += [(r.qtype, _asked(r, rng), _answer_text(r)) for r in follow[:2]]
    rng.shuffle(extra)
    turns += extra[: rng.randint(1, 3)]
    out = []
    for i, (_, question, answer) in enumerate(turns):
        out.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        out.append({"from": "gpt", "value": answer})
    return out, [kind for kind, _, _ in turns]


def write_instructions(
    data: str | Path, out: str | Path, splits: Iterable[str] = ("train", "val", "test"), seed: int = 0
) -> dict[str, int]:
    """Write ``OUT/<split>.jsonl`` for a dataset with masks (image paths relative to ``OUT``, so the folder
    moves with the dataset); returns the conversations per split. Each file is written atomically."""
    from changescope.tasks.queries import load_records, open_pairs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in splits:
        dataset, _ = open_pairs(data, split)
        by_pair: dict[str, list] = {}
        for record in load_records(data, split):
            if record.task == "vqa":
                by_pair.setdefault(record.meta.get("pair"), []).append(record)
        rng = random.Random(f"{seed}-{split}")
        rows = []
        for index, entry in enumerate(dataset.entries):
            mask = dataset[index].get("mask")
            if mask is None:
                continue
            changed = np.asarray(mask) > 0
            turns, kinds = conversation(list(entry.captions), changed, by_pair.get(entry.id, []), rng)
            images = [os.path.relpath(Path(p).resolve(), out.resolve()) for p in entry.images]
            rows.append({"id": entry.id, "images": images, "conversations": turns, "kinds": kinds})
        with atomic_path(out / f"{split}.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        counts[split] = len(rows)
    return counts


def read_instructions(path: str | Path) -> list[dict[str, Any]]:
    """The rows of one ``changescope-instructions`` JSONL file, image paths made absolute."""
    path = Path(path)
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["images"] = [str((path.parent / p).resolve()) for p in row["images"]]
            rows.append(row)
    return rows
