import json

import numpy as np
import pytest
from PIL import Image

from changescope.data.records import Record, RecordDataset, read_records, write_records
from changescope.data.sample import collate, validate_sample
from changescope.errors import DataError


def _write_pair(root, name, size=(16, 12)):
    for folder, value in (("A", 10), ("B", 200)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*size, 3), value, np.uint8)).save(root / folder / f"{name}.png")


def test_round_trip_and_dataset(tmp_path):
    _write_pair(tmp_path, "p0")
    mask = np.zeros((16, 12), np.uint8)
    mask[2:5, 3:7] = 255
    Image.fromarray(mask).save(tmp_path / "g0.png")
    images = [{"path": "A/p0.png", "time": "2019-01-01"}, {"path": "B/p0.png", "time": "2021-06-01"}]
    records = [
        Record(
            id="q0",
            task="vqa",
            images=images,
            question="did buildings appear?",
            qtype="change_or_not",
            answer="yes",
            meta={"split": "test"},
        ),
        Record(
            id="g0",
            task="grounding",
            images=images,
            question="where were trees cleared?",
            mask="g0.png",
            boxes=[[0.25, 0.125, 7 / 12, 5 / 16]],
            meta={"split": "test"},
        ),
        Record(id="q1", task="vqa", images=images, question="x", answer="no", meta={"split": "train"}),
    ]
    path = tmp_path / "records.jsonl"
    assert write_records(path, records) == 3
    assert read_records(path) == records

    ds = RecordDataset(path, split="test")
    assert len(ds) == 2
    vqa, grounding = ds[0], ds[1]
    assert vqa["answer"] == "yes" and vqa["times"] == ["2019-01-01", "2021-06-01"]
    assert validate_sample(grounding)["mask"].sum().item() == 12  # 255 read as target = 1
    assert grounding["boxes"].shape == (1, 4)
    assert len(RecordDataset(path, task="vqa")) == 2
    collate([vqa, ds[0]])


@pytest.mark.parametrize(
    "line, problem",
    [
        ("{oops", "invalid JSON"),
        (json.dumps({"task": "vqa", "images": []}), "missing field 'id'"),
        (json.dumps({"id": 1, "task": "dance", "images": []}), "unknown task"),
        (json.dumps({"id": 1, "task": "vqa", "images": [{"path": "a"}]}), "at least two"),
        (
            json.dumps(
                {"id": 1, "task": "vqa", "images": [{"path": "a"}, {"path": "b"}], "boxes": [[0, 0, 2, 1]]}
            ),
            "normalised",
        ),
        (
            json.dumps({"id": 1, "task": "vqa", "images": [{"path": "a"}, {"path": "b"}], "colour": 1}),
            "unknown fields",
        ),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, problem):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"id": "0", "task": "vqa", "images": [{"path": "a"}, {"path": "b"}]})
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(DataError, match=problem) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}:2:")


def test_pair_of_different_sizes_is_an_error(tmp_path):
    _write_pair(tmp_path, "p0")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "B" / "p0.png")
    write_records(
        tmp_path / "r.jsonl",
        [Record(id="0", task="vqa", images=[{"path": "A/p0.png"}, {"path": "B/p0.png"}])],
    )
    with pytest.raises(DataError, match="differ in size"):
        RecordDataset(tmp_path / "r.jsonl")[0]
