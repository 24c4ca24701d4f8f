#!/usr/bin/env python3
"""Tiny copies of LEVIR-CC, LEVIR-MCI, Dubai-CC, SECOND-CC and CDVQA in their real layouts, and broken ones.

Every dataset has a few pairs per split, written exactly as the releases lay them out and with the
releases' JSON field names, so the readers and the checker meet the quirks of the real files: gaps in
LEVIR file numbers and images on disk that no caption lists, LEVIR-CC with and without ``changeflag``,
LEVIR-MCI labels as 3-channel PNGs coded in channel 0, Dubai-CC's capitalised captions and
``image_id`` / ``sentence_id`` records, a SECOND-CC map stored at half size, CDVQA's many ``images``
records per pair, an inactive question and an inactive image record.

Import the ``make_*`` functions and ``corrupt`` from tests, or run the module to look at the files::

    python tests/data/make_fixtures.py OUT

Nothing here imports changescope: a fixture must not be shaped by the code it tests.
"""

from __future__ import annotations

import json
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SIZE = 32  # LEVIR, SECOND-CC and CDVQA chips (the real ones are 256 x 256)
DUBAI_SIZE = 50  # Dubai-CC chips are 50 x 50, as released

# --------------------------------------------------------------------------------------------------
# what each fixture holds: split -> [(pair id, changed)]
# --------------------------------------------------------------------------------------------------
LEVIR_PAIRS: dict[str, list[tuple[str, bool]]] = {
    "train": [("train_000001", True), ("train_000004", False), ("train_000006", True)],
    "val": [("val_000002", True), ("val_000003", False)],
    "test": [("test_000001", False), ("test_000005", True)],
}
#: on disk (A, B and label) but in no caption file, as in the real LEVIR-CC folders
LEVIR_UNLISTED = ("train_000002", "test_000003")

DUBAI_DIR = "datasetDubaiCCPublic"
DUBAI_FILES = {
    "train": "Train_Dubai_CC.json",
    "val": "Validation_Dubai_CC.json",
    "test": "Test_Dubai_CC.json",
}
DUBAI_PAIRS: dict[str, list[tuple[str, bool]]] = {
    "train": [("1x4", False), ("6x26", True), ("7x25", True)],
    "val": [("8x34", False), ("9x46", True)],
    "test": [("0x0", False), ("7x37", True)],
}
DUBAI_UNLISTED = ("2x2",)

SECOND_PAIRS: dict[str, list[tuple[str, bool]]] = {
    "train": [("00003", True), ("00010", False), ("00042", True)],
    "val": [("00007", True), ("00011", False)],
    "test": [("00005", True), ("00020", False)],
}
#: this pair's after-date map is stored at half size, to exercise nearest-neighbour resizing
SECOND_SMALL_MAP = ("train", "00042")
#: SECOND's palette, class id -> colour (Bi-SRNet ``datasets/RS_ST.py``)
SECOND_COLORS = {
    0: (255, 255, 255),
    1: (0, 0, 255),
    2: (128, 128, 128),
    3: (0, 128, 0),
    4: (0, 255, 0),
    5: (128, 0, 0),
    6: (255, 0, 0),
}

CDVQA_PREFIX = {"train": "Train", "val": "Val", "test": "Test"}  # no Test2: the checker must cope
CDVQA_PAIRS = {"train": ("00587.png", "01417.png"), "val": ("02180.png", "07502.png"), "test": ("06250.png",)}
CDVQA_IMAGE_RECORDS_PER_PAIR = 2
CDVQA_QUESTIONS_PER_RECORD = 3
CDVQA_INACTIVE_QUESTION = ("val", 5)
CDVQA_INACTIVE_IMAGE_RECORD = ("train", 1)  # its three questions drop out with it
CDVQA_BANK = (
    ("change_or_not", "Have the regions of water changed?", "no"),
    ("change_or_not", "Did the areas of non-vegetated ground surface change?", "yes"),
    ("increase_or_not", "Have the areas of buildings increased?", "yes"),
    ("decrease_or_not", "Did the areas of low vegetation decrease?", "yes"),
    ("smallest_change", "What type of change is the smallest?", "trees"),
    ("largest_change", "What is the largest change?", "NVG_surface"),
    (
        "change_to_what",
        "What have the areas of low vegetation in the pre-change image mainly changed to?",
        "buildings",
    ),
    ("change_ratio", "What is the percentage of changed areas?", "30_to_40"),
    ("change_ratio_types", "What is the change ratio of water in the second image?", "0"),
)
#: answer ids are offset and the answers file is reversed, so only a join by id gets answers right
CDVQA_ANSWER_ID_OFFSET = 1000

LEVIR_NO_CHANGE = (
    "there is no difference",
    "the two scenes seem identical",
    "the scene is the same as before",
    "no change has occurred",
    "almost nothing has changed",
)
LEVIR_CHANGE = (
    "a new road appears in the center and some trees are removed",
    "a road is built through the scene",
    "two buildings are constructed at the top left",
    "many houses appear along the road",
    "the bare land is replaced by a row of villas",
)
DUBAI_NO_CHANGE = (
    "Nothing has changed.",
    "There is no difference.",
    "No change occurred in this area.",
    "Everything remains the same.",
    "The area appears the same.",
)
DUBAI_CHANGE = (
    "New buildings appear on the upper left side and the crossroad is increased in size.",
    "A residential area has appeared on the left of the crossroads.",
    "A subdivision has been built near the road crossing.",
    "New houses appear next to the crossroads.",
    "An artificial island appeared in the sea.",
)
SECOND_NO_CHANGE = (
    "the scene is the same as before",
    "there is no difference",
    "the two scenes seem identical",
    "no change is occurred",
    "almost nothing is changed",
)
SECOND_CHANGE = (
    "the low vegetation at the top left is turned into buildings",
    "some buildings are constructed on the low vegetation",
    "a pond appears where the bare ground was",
    "new buildings replace the vegetation and water covers the ground",
    "the ground at the bottom right is flooded",
)


# --------------------------------------------------------------------------------------------------
# small writers
# --------------------------------------------------------------------------------------------------
def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32("/".join(map(str, key)).encode()))


def _write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _texture(*key: object, size: int = SIZE) -> np.ndarray:
    return _rng(*key).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _write_pair(before: Path, after: Path, key: str, size: int = SIZE) -> None:
    _write_image(before, _texture(key, "A", size=size))
    _write_image(after, _texture(key, "B", size=size))


def _karpathy(
    imgid: int, filename: str, split: str, captions: tuple[str, ...], raw_style: str
) -> dict[str, Any]:
    """One Karpathy record; LEVIR writes ``raw`` as " words ." while the others write plain sentences."""
    sentences = []
    for k, caption in enumerate(captions):
        raw = f" {caption} ." if raw_style == "levir" else caption
        sentences.append({"tokens": caption.split(), "raw": raw, "imgid": imgid, "sentid": imgid * 5 + k})
    return {
        "filepath": split,
        "filename": filename,
        "imgid": imgid,
        "split": split,
        "sentences": sentences,
        "sentids": [s["sentid"] for s in sentences],
    }


# --------------------------------------------------------------------------------------------------
# LEVIR-CC and LEVIR-MCI
# --------------------------------------------------------------------------------------------------
def _levir_label(pair_id: str, changed: bool) -> np.ndarray:
    """Channel 0: 128 road, 255 building; the other channels hold values the reader must ignore."""
    label = np.zeros((SIZE, SIZE, 3), np.uint8)
    if changed:
        label[2:6, :, 0] = 128
        label[12:20, 14:24, 0] = 255
        label[..., 1] = 77
    return label


def make_levir_cc(root: str | Path, flag: bool = True, labels: bool = False) -> Path:
    """LEVIR-CC (``flag=False``: the original RSICC JSON, without ``changeflag``)."""
    root = Path(root)
    images, imgid = [], 0
    for split, pairs in LEVIR_PAIRS.items():
        for pair_id, changed in pairs:
            record = _karpathy(
                imgid, f"{pair_id}.png", split, LEVIR_CHANGE if changed else LEVIR_NO_CHANGE, "levir"
            )
            if flag:
                record["changeflag"] = int(changed)
            images.append(record)
            imgid += 1
    _write_json(root / "LevirCCcaptions.json", {"images": images})
    on_disk = [
        (split, pair_id, changed) for split, pairs in LEVIR_PAIRS.items() for pair_id, changed in pairs
    ]
    on_disk += [(name.split("_")[0], name, True) for name in LEVIR_UNLISTED]
    for split, pair_id, changed in on_disk:
        folder = root / "images" / split
        _write_pair(folder / "A" / f"{pair_id}.png", folder / "B" / f"{pair_id}.png", pair_id)
        if labels:
            _write_image(folder / "label" / f"{pair_id}.png", _levir_label(pair_id, changed))
    return root


def make_levir_mci(root: str | Path) -> Path:
    """LEVIR-MCI: the LEVIR-CC JSON with ``changeflag`` plus ``images/<split>/label``."""
    return make_levir_cc(root, flag=True, labels=True)


# --------------------------------------------------------------------------------------------------
# Dubai-CC
# --------------------------------------------------------------------------------------------------
def make_dubai_cc(root: str | Path, nested: bool = True, rgb_dir: str = "imgs_tiles/RGB") -> Path:
    """Dubai-CC; ``nested`` puts it in ``root/datasetDubaiCCPublic`` as the archive does. Returns ``root``."""
    root = Path(root)
    base = root / DUBAI_DIR if nested else root
    image_id = 0
    for split, pairs in DUBAI_PAIRS.items():
        records = []
        for pair_id, changed in pairs:
            sentences = [
                {"image_id": image_id, "sentence_id": image_id * 5 + k, "raw": raw, "tokens": raw.split()}
                for k, raw in enumerate(DUBAI_CHANGE if changed else DUBAI_NO_CHANGE)
            ]
            records.append(
                {
                    "filename": f"{pair_id}.tif",
                    "sentences": sentences,
                    "split": split,
                    "image_id": image_id,
                    "sentids": [s["sentence_id"] for s in sentences],
                }
            )
            image_id += 1
        _write_json(
            base / "description_jsontr_te_val" / DUBAI_FILES[split],
            {"dataset": "DUBAI CC", "images": records},
        )
    names = [pair_id for pairs in DUBAI_PAIRS.values() for pair_id, _ in pairs] + list(DUBAI_UNLISTED)
    for pair_id in names:
        rgb = base / rgb_dir
        _write_pair(
            rgb / "500_2000" / f"{pair_id}.tif", rgb / "500_2010" / f"{pair_id}.tif", pair_id, DUBAI_SIZE
        )
    return root


# --------------------------------------------------------------------------------------------------
# SECOND-CC
# --------------------------------------------------------------------------------------------------
def second_class_maps(pair_id: str, changed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Before / after class ids at full size (blocks on even coordinates, so halving is exact)."""
    before = np.zeros((SIZE, SIZE), np.int64)
    after = np.zeros((SIZE, SIZE), np.int64)
    if changed:
        before[4:12, 4:12], after[4:12, 4:12] = 3, 5  # low vegetation -> building
        before[16:28, 18:30], after[16:28, 18:30] = 2, 1  # ground -> water
        before[20:24, 2:10], after[20:24, 2:10] = 4, 6  # tree -> playground
    return before, after


def _colorize(ids: np.ndarray) -> np.ndarray:
    rgb = np.zeros((*ids.shape, 3), np.uint8)
    for class_id, color in SECOND_COLORS.items():
        rgb[ids == class_id] = color
    return rgb


def make_second_cc(root: str | Path, flag: bool = False) -> Path:
    """SECOND-CC; ``flag=True`` adds a ``changeflag`` to every record."""
    root = Path(root)
    images, imgid = [], 0
    for split, pairs in SECOND_PAIRS.items():
        for pair_id, changed in pairs:
            name = f"{pair_id}.png"
            record = _karpathy(imgid, name, split, SECOND_CHANGE if changed else SECOND_NO_CHANGE, "plain")
            if flag:
                record["changeflag"] = int(changed)
            images.append(record)
            imgid += 1
            folder = root / split
            _write_pair(folder / "rgb" / "A" / name, folder / "rgb" / "B" / name, pair_id)
            before, after = second_class_maps(pair_id, changed)
            if (split, pair_id) == SECOND_SMALL_MAP:
                after = after[::2, ::2]
            _write_image(folder / "sem" / "A" / name, _colorize(before))
            _write_image(folder / "sem" / "B" / name, _colorize(after))
    _write_json(root / "SECOND-CC-AUG.json", {"images": images})
    return root


# --------------------------------------------------------------------------------------------------
# CDVQA
# --------------------------------------------------------------------------------------------------
def cdvqa_tables(split: str) -> dict[str, list[dict[str, Any]]]:
    """The three JSON tables of one CDVQA split, as written by ``make_cdvqa``."""
    questions, answers, images = [], [], []
    qid = 0
    for name in CDVQA_PAIRS[split]:
        for _ in range(CDVQA_IMAGE_RECORDS_PER_PAIR):
            record_id = len(images)
            ids = []
            for _ in range(CDVQA_QUESTIONS_PER_RECORD):
                qtype, text, answer = CDVQA_BANK[qid % len(CDVQA_BANK)]
                aid = qid + CDVQA_ANSWER_ID_OFFSET
                questions.append(
                    {
                        "id": qid,
                        "date_added": 1631215070.0 + qid,
                        "img_id": record_id,
                        "type": qtype,
                        "question": text,
                        "answers_ids": [aid],
                        "active": (split, qid) != CDVQA_INACTIVE_QUESTION,
                    }
                )
                answers.append(
                    {
                        "id": aid,
                        "date_added": 1631215070.0 + qid,
                        "question_id": qid,
                        "answer": answer,
                        "active": True,
                    }
                )
                ids.append(qid)
                qid += 1
            images.append(
                {
                    "id": record_id,
                    "res_x": ".1524m",
                    "res_y": ".1524m",
                    "questions_ids": ids,
                    "file_name": name,
                    "active": (split, record_id) != CDVQA_INACTIVE_IMAGE_RECORD,
                }
            )
    return {"questions": questions, "answers": answers[::-1], "images": images}


def cdvqa_expected(split: str) -> list[dict[str, Any]]:
    """The active questions of a split joined by hand: ``{id, question, answer, qtype, file_name}``."""
    tables = cdvqa_tables(split)
    answers = {a["id"]: a["answer"] for a in tables["answers"]}
    images = {i["id"]: i for i in tables["images"]}
    return [
        {
            "id": q["id"],
            "question": q["question"],
            "answer": answers[q["answers_ids"][0]],
            "qtype": q["type"],
            "file_name": images[q["img_id"]]["file_name"],
        }
        for q in tables["questions"]
        if q["active"] and images[q["img_id"]]["active"]
    ]


def make_cdvqa(root: str | Path, image_dir: str = "") -> Path:
    """CDVQA: Train/Val/Test tables (no Test2) and the pairs in ``im1``/``im2`` (``image_dir`` above them)."""
    root = Path(root)
    for split, prefix in CDVQA_PREFIX.items():
        for kind, rows in cdvqa_tables(split).items():
            _write_json(root / f"{prefix}_{kind}.json", {kind: rows})
        for name in CDVQA_PAIRS[split]:
            _write_pair(root / image_dir / "im1" / name, root / image_dir / "im2" / name, name)
    return root


# --------------------------------------------------------------------------------------------------
# broken copies
# --------------------------------------------------------------------------------------------------
_IMAGE_KINDS = ("missing-image", "size-mismatch", "truncated-image", "random-bytes")
_CAPTION_KINDS = (*_IMAGE_KINDS, "missing-field", "unknown-split", "empty-captions")
#: format -> the corruptions ``corrupt`` can apply to it
CORRUPTIONS: dict[str, tuple[str, ...]] = {
    "levir-cc": _CAPTION_KINDS,
    "levir-mci": (*_CAPTION_KINDS, "bad-label"),
    "dubai-cc": _CAPTION_KINDS,
    "second-cc": (*_CAPTION_KINDS, "bad-label"),
    "cdvqa": (*_IMAGE_KINDS, "missing-field", "dangling-image-id", "dangling-answer-id"),
}


def fixture_format(root: str | Path) -> str:
    root = Path(root)
    if (root / "LevirCCcaptions.json").is_file():
        return "levir-mci" if any((root / "images").glob("*/label")) else "levir-cc"
    if (root / "SECOND-CC-AUG.json").is_file():
        return "second-cc"
    if (root / "Train_questions.json").is_file():
        return "cdvqa"
    if (root / "description_jsontr_te_val").is_dir() or (root / DUBAI_DIR).is_dir():
        return "dubai-cc"
    raise ValueError(f"{root} holds none of the fixtures")


def _first_train_pair(root: Path, fmt: str) -> dict[str, Path]:
    """Paths of the first train pair: its index file, before and after images, and label if any."""
    if fmt in ("levir-cc", "levir-mci"):
        index = root / "LevirCCcaptions.json"
        name = next(i["filename"] for i in json.loads(index.read_text())["images"] if i["split"] == "train")
        folder = root / "images" / "train"
        return {
            "index": index,
            "before": folder / "A" / name,
            "after": folder / "B" / name,
            "label": folder / "label" / name,
        }
    if fmt == "dubai-cc":
        base = root if (root / "description_jsontr_te_val").is_dir() else root / DUBAI_DIR
        index = base / "description_jsontr_te_val" / DUBAI_FILES["train"]
        name = json.loads(index.read_text())["images"][0]["filename"]
        rgb = base / "imgs_tiles" / "RGB" if (base / "imgs_tiles").is_dir() else base / "RGB"
        return {"index": index, "before": rgb / "500_2000" / name, "after": rgb / "500_2010" / name}
    if fmt == "second-cc":
        index = root / "SECOND-CC-AUG.json"
        name = next(i["filename"] for i in json.loads(index.read_text())["images"] if i["split"] == "train")
        rgb, sem = root / "train" / "rgb", root / "train" / "sem"
        return {
            "index": index,
            "before": rgb / "A" / name,
            "after": rgb / "B" / name,
            "label": sem / "B" / name,
        }
    index = root / "Train_questions.json"
    name = json.loads((root / "Train_images.json").read_text())["images"][0]["file_name"]
    base = root / "image" if (root / "image" / "im1").is_dir() else root
    return {"index": index, "before": base / "im1" / name, "after": base / "im2" / name}


def _edit_first_train_record(index: Path, fmt: str, edit: Callable[[dict[str, Any]], object]) -> None:
    data = json.loads(index.read_text())
    if fmt == "cdvqa":
        edit(data["questions"][0])
    else:
        edit(next(i for i in data["images"] if i.get("split", "train") == "train"))
    index.write_text(json.dumps(data), encoding="utf-8")


def corrupt(root: str | Path, kind: str) -> Path:
    """Break one thing of the first train pair of the fixture at ``root``; return the file to blame.

    The returned file is the one an error message must name: the image, label or index file.
    """
    root = Path(root)
    fmt = fixture_format(root)
    if kind not in CORRUPTIONS[fmt]:
        raise ValueError(f"'{kind}' does not apply to {fmt} (known: {', '.join(CORRUPTIONS[fmt])})")
    paths = _first_train_pair(root, fmt)
    after, index = paths["after"], paths["index"]
    if kind == "missing-image":
        after.unlink()
        return after
    if kind == "size-mismatch":
        size = (DUBAI_SIZE if fmt == "dubai-cc" else SIZE) + 8
        _write_image(after, _texture("resized", size=size))
        return after
    if kind == "truncated-image":
        data = after.read_bytes()
        after.write_bytes(data[: len(data) // 2])
        return after
    if kind == "random-bytes":
        after.write_bytes(_rng("random", after.name).integers(0, 256, 300, dtype=np.uint8).tobytes())
        return after
    if kind == "bad-label":
        label = paths["label"]
        if fmt == "levir-mci":
            values = np.asarray(Image.open(label)).copy()
            values[0:3, 0:3, 0] = 77  # neither 0, 128 nor 255
        else:
            values = np.asarray(Image.open(label).convert("RGB")).copy()
            values[0:3, 0:3] = (1, 2, 3)  # a colour of no SECOND class
        _write_image(label, values)
        return label
    if kind == "unknown-split" and fmt == "dubai-cc":
        renamed = index.with_name("Training" + index.name[len("Train") :])
        index.rename(renamed)
        return renamed
    edits = {
        "missing-field": lambda r: r.pop("img_id" if fmt == "cdvqa" else "filename"),
        "unknown-split": lambda r: r.update(split="training"),
        "empty-captions": lambda r: r.update(sentences=[]),
        "dangling-image-id": lambda r: r.update(img_id=99999),
        "dangling-answer-id": lambda r: r.update(answers_ids=[99999]),
    }
    _edit_first_train_record(index, fmt, edits[kind])
    return index


MAKERS = {
    "levir-cc": make_levir_cc,
    "levir-cc-noflag": lambda root: make_levir_cc(root, flag=False),
    "levir-mci": make_levir_mci,
    "dubai-cc": make_dubai_cc,
    "second-cc": make_second_cc,
    "cdvqa": make_cdvqa,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python tests/data/make_fixtures.py OUT", file=sys.stderr)
        return 2
    out = Path(argv[0])
    for name, make in MAKERS.items():
        target = make(out / name)
        files = sum(1 for p in target.rglob("*") if p.is_file())
        print(f"{name:16s} {files:3d} files in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
