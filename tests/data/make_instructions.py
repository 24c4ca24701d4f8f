#!/usr/bin/env python3
"""Tiny instruction datasets in the released layouts, one maker per layout (sources: the docstring of
``changescope/data/readers/instructions.py``, which names the files read for each):

``make_changescope``
    The project's JSONL: ``train.jsonl`` (a pair, a 3-date sample), ``val.jsonl``; images beside them.
``make_changechat``
    ChangeChat-87k: ``ChangeChat_instruct_gpt_87k.json`` beside LEVIR-MCI's ``images/train/{A,B}``, the
    six record types of ``GPT-api/make_instructs.ipynb`` (``"<image> <image> "`` prefix, int ids,
    ``changeflag`` and ``type`` where the generator writes them).
``make_changechat_105k``
    ChangeChat-105k as DeltaVLM lays it out: ``annotations/changechat_105k_{train,test,test_binary}.json``
    (the caption test file in its own ``image_A`` / ``image_B`` / ``captions`` schema) and LEVIR-CC
    ``images/{train,test}/{A,B}``.
``make_teochatlas``
    TEOChatlas: ``train/instruct.json`` (frames listed out of date order, a ``%Y-%m-%d`` date without
    zero padding, a record without dates, a GeoChat single-image record) and
    ``eval/xBD_Change_Detection_Localization.json`` (with a WKT ``polygon``); frame paths relative to ROOT.
``make_qag``
    QAG-360K as VisTA reads it: ``{train,val}/json/{Train,Val}.json``, ``image/im1``, ``image/im2``,
    ``mask/<id>.png`` (one empty: the visual answer "no change"); no ``test`` (it is released on request).
``make_changeimti``
    ChangeIMTI as ChangeVG's ``deal_data/deal_data.ipynb`` writes it: ``train_task_data/`` with the seven
    task files, ``test_task_data/`` with six (no ``caption.json``), JSON lists dumped with ``indent=4``,
    records of ``conversations`` + ``images`` (no id) holding the authors' absolute paths
    (``/data/coding/datasets/LEVIR-MCI-dataset/images/...``, not there), the prompts as the notebook writes
    them (``<image> and <image>``); LEVIR-MCI's ``images/{train,test}/{A,B}`` at ROOT/images.

Images are ``H`` x ``W`` = 12 x 16 (never square) of one colour each; the green channel is the date index
times 60, so the image order can be read back from the pixels. What each fixture holds is in its
``*_EXPECTED`` table: split -> [(id, number of images, number of turns, first human turn as normalised)].
Run the module to look at the files::

    python tests/data/make_instructions.py OUT

Nothing here imports changescope: a fixture must not be shaped by the code it tests.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image

H, W = 12, 16


def _png(path: Path, date_index: int, shade: int = 0) -> None:
    """One image: green = 60 * its date index (the order test), red = ``shade`` (which sample)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (W, H), (shade, 60 * date_index, 100)).save(path)


def _dump(path: Path, data, indent: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=indent, ensure_ascii=False), encoding="utf-8")


def _turns(*pairs: str) -> list[dict[str, str]]:
    return [{"from": ("human", "gpt")[i % 2], "value": v} for i, v in enumerate(pairs)]


# --------------------------------------------------------------------------------------------------
# changescope-instructions
# --------------------------------------------------------------------------------------------------
CHANGESCOPE_RECORDS = {
    "train": [
        {
            "id": "synth-000",
            "images": ["images/synth-000/t0.png", "images/synth-000/t1.png"],
            "conversations": _turns(
                "<image>\nWhat changed between the two images?",
                "A road was built across the field.",
                "Where is it?",
                "In the lower half.",
            ),
        },
        {
            "id": "synth-001",
            "images": ["images/synth-001/t0.png", "images/synth-001/t1.png", "images/synth-001/t2.png"],
            "conversations": _turns(
                "<image>\nWhen did the building appear?", "Between the 2nd and 3rd date."
            ),
        },
    ],
    "val": [
        {
            "id": "synth-002",
            "images": ["images/synth-002/t0.png", "images/synth-002/t1.png"],
            "conversations": _turns("<image>\nHas anything changed?", "No."),
        }
    ],
}
CHANGESCOPE_EXPECTED = {
    split: [
        (r["id"], len(r["images"]), len(r["conversations"]), r["conversations"][0]["value"]) for r in rows
    ]
    for split, rows in CHANGESCOPE_RECORDS.items()
}


def make_changescope(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in CHANGESCOPE_RECORDS.items():
        for k, row in enumerate(rows):
            for t, path in enumerate(row["images"]):
                _png(root / path, t, shade=10 * k)
        lines = "".join(json.dumps(row) + "\n" for row in rows)
        (root / f"{split}.jsonl").write_text(lines, encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------------
# ChangeChat-87k
# --------------------------------------------------------------------------------------------------
CHANGECHAT_FILE = "ChangeChat_instruct_gpt_87k.json"
#: LEVIR-MCI pair -> changeflag
CHANGECHAT_PAIRS = {"train_000001.png": 1, "train_000002.png": 0}


def _changechat_records() -> list[dict]:
    records: list[dict] = []

    def add(name: str, rtype: int, turns: list[dict[str, str]], flag: bool = True) -> None:
        record = {"id": len(records), "image": [f"train/A/{name}", f"train/B/{name}"]}
        if flag:
            record["changeflag"] = CHANGECHAT_PAIRS[name]
        record.update({"conversations": turns, "type": rtype})
        records.append(record)

    changed = "train_000001.png"
    add(
        changed,
        1,
        _turns(
            "<image> <image> Please briefly describe the changes in these two images.",
            "A road is built on the bareland.",
        ),
    )
    add(
        changed,
        2,
        _turns(
            "<image> <image> Please judge whether these two images have changed. Please answer yes or no.",
            "Yes",
        ),
    )
    add(
        changed,
        3,
        _turns(
            "<image> <image> How many roads and buildings have changed?",
            "1 road has changed, and no buildings has changed.",
        ),
    )
    add(
        changed,
        4,
        _turns(
            "<image> <image> Please draw the contours of the changed buildings and roads, approximating them "
            "with polygons.",
            "The contours of the changed roads are:[[[0.1,0.2],[0.5,0.2],[0.5,0.3]]], "
            "The contours of the changed buildings are:[].",
        ),
        flag=False,
    )
    add(changed, 5, _turns("<image> <image> What is the new road made of?", "It looks like asphalt."))
    add(
        changed,
        6,
        _turns(
            "<image> <image> Please judge whether these two images have changed. Please answer yes or no.",
            "Yes",
            "If changes have occurred, count the number of road and building changes separately.",
            "1 road has changed, and no buildings has changed.",
            "Based on the above analysis, please describe the changes of these two images in detail.",
            "A road is built on the bareland.",
        ),
        flag=False,
    )
    unchanged = "train_000002.png"
    add(
        unchanged,
        1,
        _turns("<image> <image> Please briefly describe the changes in these two images.", "No change."),
    )
    add(
        unchanged,
        2,
        _turns(
            "<image> <image> Please judge whether these two images have changed. Please answer yes or no.",
            "No",
        ),
    )
    return records


def _normalised(first: str) -> str:
    """What the readers make of a released first turn: the placeholder run -> one "<image>"."""
    for run in ("<image> <image> ", "<image>"):
        if first.startswith(run):
            return "<image>\n" + first[len(run) :].strip()
    return first


CHANGECHAT_EXPECTED = {
    "train": [
        (str(r["id"]), 2, len(r["conversations"]), _normalised(r["conversations"][0]["value"]))
        for r in _changechat_records()
    ]
}


def make_changechat(root: Path) -> Path:
    """``root`` is the LEVIR-MCI-dataset folder."""
    for k, name in enumerate(CHANGECHAT_PAIRS):
        _png(root / "images" / "train" / "A" / name, 0, shade=10 * k)
        _png(root / "images" / "train" / "B" / name, 1, shade=10 * k)
    _dump(root / CHANGECHAT_FILE, _changechat_records())
    return root


# --------------------------------------------------------------------------------------------------
# ChangeChat-105k (DeltaVLM)
# --------------------------------------------------------------------------------------------------
CAPTION_PROMPT = "Please briefly describe the changes in these two images."
CHANGECHAT105K_FILES = {
    "train": [
        {
            "id": 0,
            "image": ["train/A/train_000001.png", "train/B/train_000001.png"],
            "changeflag": 0,
            "conversations": _turns(
                "<image> <image> Please briefly describe the changes in these two images.",
                "There is no difference.",
            ),
        },
        {
            "id": 1,
            "image": ["train/A/train_000002.png", "train/B/train_000002.png"],
            "changeflag": 1,
            "conversations": _turns(
                "<image> <image> Please judge whether these two images have changed or not. "
                "Answer yes or no.",
                "Yes.",
                "What types of objects have changed?",
                "Buildings have changed in the images.",
                "How many buildings have been added?",
                "Two new buildings have been constructed.",
            ),
        },
    ],
    "test": [
        {
            "image_A": "test/A/test_000001.png",
            "image_B": "test/B/test_000001.png",
            "captions": [
                "two houses are built beside the road .",
                "two buildings appear .",
                "two new houses are constructed .",
                "some houses are built .",
                "two villas are built near the road .",
            ],
            "changeflag": 1,
        }
    ],
    "test_binary": [
        {
            "id": 0,
            "image": ["test/A/test_000001.png", "test/B/test_000001.png"],
            "changeflag": 1,
            "conversations": _turns(
                "<image>Please judge whether these two images have changed or not. Answer yes or no.", "Yes."
            ),
        }
    ],
}
CHANGECHAT105K_EXPECTED = {
    "train": [
        (str(r["id"]), 2, len(r["conversations"]), _normalised(r["conversations"][0]["value"]))
        for r in CHANGECHAT105K_FILES["train"]
    ],
    "test": [("test_000001", 2, 2, f"<image>\n{CAPTION_PROMPT}")],
    "test_binary": [
        ("0", 2, 2, "<image>\nPlease judge whether these two images have changed or not. Answer yes or no.")
    ],
}


def make_changechat_105k(root: Path) -> Path:
    """``root`` is DeltaVLM's ``dataset/`` folder."""
    for split, names in (("train", ("train_000001.png", "train_000002.png")), ("test", ("test_000001.png",))):
        for k, name in enumerate(names):
            _png(root / "images" / split / "A" / name, 0, shade=10 * k)
            _png(root / "images" / split / "B" / name, 1, shade=10 * k)
    for split, records in CHANGECHAT105K_FILES.items():
        _dump(root / "annotations" / f"changechat_105k_{split}.json", records)
    return root


# --------------------------------------------------------------------------------------------------
# TEOChatlas
# --------------------------------------------------------------------------------------------------
TEOCHAT_EVAL = "xBD_Change_Detection_Localization"
TEOCHAT_FILES = {
    "train": [
        {  # listed post-first: the reader sorts by date
            "video": [
                "images/xBD/hurricane-michael_00000001_post_disaster.png",
                "images/xBD/hurricane-michael_00000001_pre_disaster.png",
            ],
            "timestamp": ["2018-10-15", "2018-10-01"],
            "task": "change_detection_classification",
            "conversations": _turns(
                "These are two satellite images in chronological order: <video> Classify the level of damage "
                "experienced by the building at location [0, 8, 49, 53].",
                "Destroyed",
            ),
        },
        {  # fMoW: three dates, one without zero padding, listed in order
            "video": [
                "images/fMoW/airport_0_0_rgb.png",
                "images/fMoW/airport_0_1_rgb.png",
                "images/fMoW/airport_0_2_rgb.png",
            ],
            "timestamp": ["2015-3-7", "2016-05-01", "2017-11-30"],
            "task": "temporal_scene_classification",
            "conversations": _turns(
                "This is a sequence of satellite images captured at different times: <video> "
                "Classify the sequence into one of the following classes: airport, dam, road.",
                "airport",
                "In which image was construction finished?",
                "Image 3",
            ),
        },
        {  # S2Looking: no dates
            "video": ["images/S2Looking/1_1.png", "images/S2Looking/1_2.png"],
            "timestamp": [],
            "task": "change_detection",
            "conversations": _turns(
                "These are two satellite images: <video> Identify all changed buildings using bounding boxes "
                "of the form [x_min, y_min, x_max, y_max].",
                "[10, 20, 30, 40]",
            ),
        },
        {  # GeoChat single image: not change data
            "image": "images/GeoChat/P0001.png",
            "task": "region_captioning",
            "conversations": _turns("<image>\nWhat is in [10, 10, 50, 50]?", "A plane."),
        },
    ],
    "eval": [
        {
            "video": [
                "images/xBD/hurricane-michael_00000002_pre_disaster.png",
                "images/xBD/hurricane-michael_00000002_post_disaster.png",
            ],
            "timestamp": ["2018-10-01", "2018-10-15"],
            "task": "change_detection_localization",
            "polygon": "POLYGON ((0 0, 10 0, 10 10, 0 10, 0 0))",
            "conversations": _turns(
                "These are two satellite images in chronological order: <video> Identify the buildings that "
                "were damaged.",
                "[0, 0, 4, 4]",
            ),
        }
    ],
}
#: split -> [(id, images, turns, first turn, dates oldest first, frame paths oldest first)]
TEOCHAT_EXPECTED = {
    "train": [
        (
            "train/0",
            2,
            2,
            "These are two satellite images in chronological order: <image> Classify the level of damage "
            "experienced by the building at location [0, 8, 49, 53].",
            ["2018-10-01", "2018-10-15"],
            [TEOCHAT_FILES["train"][0]["video"][1], TEOCHAT_FILES["train"][0]["video"][0]],
        ),
        (
            "train/1",
            3,
            4,
            "This is a sequence of satellite images captured at different times: <image> "
            "Classify the sequence into one of the following classes: airport, dam, road.",
            ["2015-03-07", "2016-05-01", "2017-11-30"],
            TEOCHAT_FILES["train"][1]["video"],
        ),
        (
            "train/2",
            2,
            2,
            "These are two satellite images: <image> Identify all changed buildings using bounding boxes "
            "of the form [x_min, y_min, x_max, y_max].",
            None,
            TEOCHAT_FILES["train"][2]["video"],
        ),
    ],
    f"eval_{TEOCHAT_EVAL}": [
        (
            "eval_xBD_Change_Detection_Localization/0",
            2,
            2,
            "These are two satellite images in chronological order: <image> Identify the buildings that "
            "were damaged.",
            ["2018-10-01", "2018-10-15"],
            TEOCHAT_FILES["eval"][0]["video"],
        )
    ],
}


def make_teochatlas(root: Path) -> Path:
    for rows in TEOCHAT_EXPECTED.values():
        for k, row in enumerate(rows):
            for t, path in enumerate(row[5]):  # green = date index, in date order
                _png(root / path, t, shade=10 * k)
    _png(root / TEOCHAT_FILES["train"][3]["image"], 0)
    _dump(root / "train" / "instruct.json", TEOCHAT_FILES["train"])
    _dump(root / "eval" / f"{TEOCHAT_EVAL}.json", TEOCHAT_FILES["eval"])
    return root


# --------------------------------------------------------------------------------------------------
# QAG-360K
# --------------------------------------------------------------------------------------------------
QAG_QUESTIONS = {
    "train": [
        {
            "id": 1234,
            "img_id": "00017.png",
            "type": "change_to_what",
            "question": "What have the regions of trees mainly changed to?",
            "answer": "buildings",
        },
        {
            "id": 1235,
            "img_id": "00017.png",
            "type": "change_or_not",
            "question": "Did the areas of water change?",
            "answer": "no",
        },
        {
            "id": 1240,
            "img_id": "00018.png",
            "type": "change_ratio",
            "question": "What is the percentage of changed areas?",
            "answer": "10_to_20",
        },
    ],
    "val": [
        {
            "id": 77,
            "img_id": "00101.png",
            "type": "increase_or_not",
            "question": "Have the buildings increased?",
            "answer": "yes",
        }
    ],
}
#: question id -> the mask's set box (rows r0:r1, columns c0:c1), or None for an empty mask
QAG_MASKS = {1234: (2, 6, 3, 9), 1235: None, 1240: (0, 12, 0, 4), 77: (5, 7, 5, 7)}
QAG_EXPECTED = {
    split: [(str(q["id"]), 2, 2, "<image>\n" + q["question"]) for q in qs]
    for split, qs in QAG_QUESTIONS.items()
}


def make_qag(root: Path) -> Path:
    names = {"train": "Train", "val": "Val"}
    for split, questions in QAG_QUESTIONS.items():
        for k, img_id in enumerate(sorted({q["img_id"] for q in questions})):
            _png(root / split / "image" / "im1" / img_id, 0, shade=10 * k)
            _png(root / split / "image" / "im2" / img_id, 1, shade=10 * k)
        for q in questions:
            mask = Image.new("L", (W, H), 0)
            box = QAG_MASKS[q["id"]]
            if box is not None:
                r0, r1, c0, c1 = box
                mask.paste(255, (c0, r0, c1, r1))
            (root / split / "mask").mkdir(parents=True, exist_ok=True)
            mask.save(root / split / "mask" / f"{q['id']}.png")
        _dump(root / split / "json" / f"{names[split]}.json", {"question": questions})
    return root


# --------------------------------------------------------------------------------------------------
# ChangeIMTI (ChangeVG)
# --------------------------------------------------------------------------------------------------
#: where the authors' LEVIR-MCI images were (deal_data.ipynb); not on this machine
CHANGEIMTI_PREFIX = "/data/coding/datasets/LEVIR-MCI-dataset/images/"
#: (split folder of LEVIR-MCI, file name) of each pair, by the name the records below use
CHANGEIMTI_PAIRS = {
    "changed": ("train", "train_000001.png"),
    "unchanged": ("train", "train_000002.png"),
    "test": ("test", "test_000001.png"),
}
_IMTI_CAPTION = "Please describe the changes in <image> and <image>"
_IMTI_REFER = "Please refer to this description:{}.Modify or correct it."
_IMTI_BINARY = (
    "Please check if there have been any changes to the roads or buildings in these two images:"
    "<image> and <image>. Please answer yes or no."
)
_IMTI_COUNT = "How many {} have been changed in these two images:<image> and <image>"
_IMTI_LOC = "Please tell me where the {} have changed in these two images:<image> and <image>"
_IMTI_NO_CHANGE = ",if no change please output: No change."
_IMTI_MUL = "Have there been any changes to the roads and buildings in these two images:<image> and <image>?"


def _imti(pair: str, *turns: str) -> dict:
    """One record as ``get_single_data`` / ``get_multi_data`` build it."""
    folder, name = CHANGEIMTI_PAIRS[pair]
    images = [f"{CHANGEIMTI_PREFIX}{folder}/A/{name}", f"{CHANGEIMTI_PREFIX}{folder}/B/{name}"]
    return {"conversations": _turns(*turns), "images": images}


def _imti_mul(pair: str, is_: str, roads: tuple[str, str], buildings: tuple[str, str], caption: str) -> dict:
    return _imti(pair, _IMTI_MUL, is_, *roads, *buildings, "Please describe the changes.", caption)


CHANGEIMTI_FILES = {
    "train": {
        "caption": [
            _imti(
                "changed",
                _IMTI_REFER.format("a road is built") + _IMTI_CAPTION,
                "a road is built across the bareland",
            ),
            _imti("unchanged", _IMTI_CAPTION, "the scene is the same as before"),
        ],
        "binary_class": [_imti("changed", _IMTI_BINARY, "Yes"), _imti("unchanged", _IMTI_BINARY, "No")],
        "count_road": [
            _imti("changed", _IMTI_COUNT.format("roads"), "2"),
            _imti("unchanged", _IMTI_COUNT.format("roads"), "0"),
        ],
        "count_build": [_imti("changed", _IMTI_COUNT.format("buildings"), "0")],
        "loc_road": [
            _imti("changed", _IMTI_LOC.format("roads") + _IMTI_NO_CHANGE, "top left corner,center"),
            _imti("unchanged", _IMTI_LOC.format("roads") + _IMTI_NO_CHANGE, "No change"),
        ],
        "loc_build": [_imti("changed", _IMTI_LOC.format("buildings") + _IMTI_NO_CHANGE, "No change")],
        "mul": [
            _imti_mul(
                "changed",
                "Yes",
                ("How many roads have been changed in these two images?", "2"),
                ("Please tell me where the buildings have changed in these two images", "No change"),
                "a road is built across the bareland",
            )
        ],
    },
    "test": {
        "binary_class": [_imti("test", _IMTI_BINARY, "Yes")],
        "count_road": [_imti("test", _IMTI_COUNT.format("roads"), "0")],
        "count_build": [_imti("test", _IMTI_COUNT.format("buildings"), "3")],
        "loc_road": [_imti("test", _IMTI_LOC.format("roads") + _IMTI_NO_CHANGE, "No change")],
        "loc_build": [_imti("test", _IMTI_LOC.format("buildings"), "top right corner,lower")],
        "mul": [
            _imti_mul(
                "test",
                "Yes",
                ("How many roads have been changed in these two images?", "0"),
                ("How many buildings have been changed in these two images?", "3"),
                "three houses are built",
            )
        ],
    },
}
#: split -> [(id, images, turns, first turn as normalised, task)], in the reader's task order
CHANGEIMTI_EXPECTED = {
    split: [
        (
            f"{split}/{task}/{i}",
            2,
            len(r["conversations"]),
            r["conversations"][0]["value"].replace("<image> and <image>", "<image>"),
            task,
        )
        for task in ("caption", "binary_class", "count_road", "count_build", "loc_road", "loc_build", "mul")
        for i, r in enumerate(files.get(task, []))
    ]
    for split, files in CHANGEIMTI_FILES.items()
}


def make_changeimti(root: Path) -> Path:
    """``root`` holds the task folders; LEVIR-MCI's images are put at ``root/images``."""
    for k, (folder, name) in enumerate(CHANGEIMTI_PAIRS.values()):
        _png(root / "images" / folder / "A" / name, 0, shade=10 * k)
        _png(root / "images" / folder / "B" / name, 1, shade=10 * k)
    for split, files in CHANGEIMTI_FILES.items():
        for task, records in files.items():
            _dump(root / f"{split}_task_data" / f"{task}.json", records, indent=4)
    return root


MAKERS = {
    "changescope-instructions": (make_changescope, CHANGESCOPE_EXPECTED),
    "changechat": (make_changechat, CHANGECHAT_EXPECTED),
    "changechat-105k": (make_changechat_105k, CHANGECHAT105K_EXPECTED),
    "teochatlas": (make_teochatlas, TEOCHAT_EXPECTED),
    "qag-360k": (make_qag, QAG_EXPECTED),
    "changeimti": (make_changeimti, CHANGEIMTI_EXPECTED),
}


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "instruction_fixtures")
    for fmt, (make, _) in MAKERS.items():
        print(fmt, "->", make(out / fmt))
