"""Instruction readers (changescope/data/readers/instructions.py) against fixtures in the released layouts
(tests/data/make_instructions.py), and through ``changescope data check``."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data import make_instructions as mi
from PIL import Image

from changescope.cli import main
from changescope.data.readers import FORMATS, detect_format, open_dataset
from changescope.data.readers.instructions import ChangeIMTI, normalise_placeholder
from changescope.data.sample import collate, validate_sample
from changescope.errors import DataError

FORMAT_NAMES = list(mi.MAKERS)


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("instructions")
    return {fmt: make(base / fmt) for fmt, (make, _) in mi.MAKERS.items()}


@pytest.fixture
def copy_of(roots, tmp_path):
    return lambda fmt: shutil.copytree(roots[fmt], tmp_path / fmt)


def _samples(root, split, fmt):
    dataset = open_dataset(root, split, format=fmt)
    return [validate_sample(dataset[i]) for i in range(len(dataset))]


def _assert_canonical(turns):
    assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and len(turns) % 2 == 0
    assert turns[0]["value"].count("<image>") == 1
    assert not any("<image>" in t["value"] or "<video>" in t["value"] for t in turns[1:])
    assert "<video>" not in turns[0]["value"]


def _check(root, capsys, *options, code=0):
    assert main(["data", "check", str(root), *options, "--json"]) == code
    return json.loads(capsys.readouterr().out)


def _rewrite_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rewrite_jsonl(path, edit):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    edit(rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


# the sample contract --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_each_layout_is_detected_registered_and_keeps_the_contract(roots, fmt):
    root, expected = roots[fmt], mi.MAKERS[fmt][1]
    assert fmt in FORMATS and detect_format(root) == fmt
    for split, rows in expected.items():
        samples = _samples(root, split, fmt)
        got = [
            (s["id"], s["image"].shape[0], len(s["conversations"]), s["conversations"][0]["value"])
            for s in samples
        ]
        assert got == [row[:4] for row in rows], split
        for sample in samples:
            image = sample["image"]
            assert image.dtype == torch.float32 and tuple(image.shape[1:]) == (3, mi.H, mi.W)
            # oldest first: the fixtures paint green = 60 * date index
            assert [round(255 * float(g)) for g in image[:, 1, 0, 0]] == [60 * t for t in range(len(image))]
            _assert_canonical(sample["conversations"])
        pairs = [s for s in samples if s["image"].shape[0] == 2]
        if len(pairs) > 1:
            assert collate(pairs)["image"].shape == (len(pairs), 2, 3, mi.H, mi.W)


def test_changechat_keeps_the_later_turns_as_released(roots):
    raw = json.loads((roots["changechat"] / mi.CHANGECHAT_FILE).read_text())
    samples = _samples(roots["changechat"], "train", "changechat")
    assert raw[0]["conversations"][0]["value"].startswith("<image> <image> ")  # as released
    for record, sample in zip(raw, samples, strict=True):
        assert sample["conversations"][1:] == record["conversations"][1:]
    assert set(samples[0]) == {"id", "image", "conversations"}


def test_changechat_105k_caption_records_keep_all_references(roots):
    (sample,) = _samples(roots["changechat-105k"], "test", "changechat-105k")
    captions = [c.strip() for c in mi.CHANGECHAT105K_FILES["test"][0]["captions"]]
    assert sample["captions"] == captions and sample["conversations"][1]["value"] == captions[0]


def test_teochatlas_sorts_frames_by_date_and_leaves_single_images_out(roots):
    dataset = open_dataset(roots["teochatlas"], "train")
    assert dataset.notes == [f"{dataset.index_path}: 1 single-image record(s) left out (not change data)"]
    for split, rows in mi.TEOCHAT_EXPECTED.items():
        dataset = open_dataset(roots["teochatlas"], split)
        samples = _samples(roots["teochatlas"], split, "teochatlas")
        for entry, sample, row in zip(dataset.entries, samples, rows, strict=True):
            assert sample["times"] == row[4]
            assert [p.relative_to(roots["teochatlas"]).as_posix() for p in entry.images] == row[5]
            assert isinstance(sample["task"], str)


def test_qag_questions_carry_answer_and_mask(roots):
    samples = _samples(roots["qag-360k"], "train", "qag-360k")
    for sample, q in zip(samples, mi.QAG_QUESTIONS["train"], strict=True):
        assert (sample["question"], sample["answer"], sample["qtype"]) == (
            q["question"],
            q["answer"],
            q["type"],
        )
        assert sample["conversations"][1]["value"] == q["answer"]
        expected = np.zeros((mi.H, mi.W), np.int64)
        if mi.QAG_MASKS[q["id"]] is not None:
            r0, r1, c0, c1 = mi.QAG_MASKS[q["id"]]
            expected[r0:r1, c0:c1] = 1
        assert sample["mask"].dtype == torch.long and np.array_equal(sample["mask"].numpy(), expected)


def test_changeimti_reads_both_splits_with_tasks_and_the_later_turns_as_released(roots):
    root = roots["changeimti"]
    raw = json.loads((root / "train_task_data" / "mul.json").read_text())
    assert raw[0]["images"][0].startswith("/data/coding/") and "id" not in raw[0]  # as released
    for split, rows in mi.CHANGEIMTI_EXPECTED.items():
        dataset = open_dataset(root, split, format="changeimti")
        samples = _samples(root, split, "changeimti")
        assert [(s["id"], s["task"]) for s in samples] == [(row[0], row[4]) for row in rows]
        assert len(samples) == sum(len(records) for records in mi.CHANGEIMTI_FILES[split].values())
        for entry, sample in zip(dataset.entries, samples, strict=True):
            task, index = sample["id"].split("/")[1:]
            record = mi.CHANGEIMTI_FILES[split][task][int(index)]
            assert sample["conversations"][1:] == record["conversations"][1:]
            tails = [p.split("/images/")[-1] for p in record["images"]]
            assert entry.images == [root / "images" / t for t in tails]
            assert set(sample) == {"id", "image", "conversations", "task"}
    (mul,) = [s for s in _samples(root, "train", "changeimti") if s["task"] == "mul"]
    assert len(mul["conversations"]) == 8
    assert mul["conversations"][0]["value"] == (
        "Have there been any changes to the roads and buildings in these two images:<image>?"
    )
    assert open_dataset(root, "test").notes == []


def test_changeimti_finds_images_as_written_relative_or_under_image_root(copy_of, tmp_path):
    root = copy_of("changeimti")
    mul = root / "train_task_data" / "mul.json"
    written = json.loads(mul.read_text())[0]["images"]
    levir = tmp_path / "LEVIR-MCI-dataset" / "images"
    levir.parent.mkdir()
    shutil.move(root / "images", levir)
    # found nowhere: the place looked in, the file and record that list it, the path as written
    with pytest.raises(DataError) as caught:
        open_dataset(root, "train", format="changeimti")
    first = root / "images" / "train" / "A" / "train_000001.png"
    assert str(caught.value) == (
        f"{first}: file not found (listed by {root / 'train_task_data' / 'caption.json'}: record 0 "
        f"as '{written[0]}', which is not there either)"
    )
    # under image_root
    dataset = ChangeIMTI(root, "train", image_root=levir)
    assert all(p.is_relative_to(levir) and p.is_file() for e in dataset.entries for p in e.images)
    # the path as written, when it is there
    here = [str(levir / p.split("/images/")[-1]) for p in written]
    _rewrite_json(mul, lambda records: records[0].update(images=here))
    entry = ChangeIMTI(root, "train", check_files=False).entries[-1]
    assert entry.images == [Path(p) for p in here] and entry.written == {}
    # relative paths: to ROOT, else their images/ tail (all of one without it) under ROOT/images
    shutil.move(levir, root / "images")
    relative = ["images/train/A/train_000001.png", "train/B/train_000001.png"]
    _rewrite_json(mul, lambda records: records[0].update(images=relative))
    entry = ChangeIMTI(root, "train").entries[-1]
    assert entry.images == [root / "images" / "train" / ab / "train_000001.png" for ab in "AB"]


@pytest.mark.parametrize(
    "run", ["<image> and <image>", "<image><image>", "<image> <image>", "<image>and <image>"]
)
def test_changeimti_placeholder_runs_become_one_image_token(run):
    turns = [{"from": "human", "value": f"How many roads changed in these two images:{run}?"}]
    turns.append({"from": "gpt", "value": "2"})
    normalised = normalise_placeholder("f.json: record 0", turns, ChangeIMTI.placeholder_run)
    assert normalised[0]["value"] == "How many roads changed in these two images:<image>?"


def test_changeimti_leaves_a_split_without_its_folder_out(copy_of, capsys):
    root = copy_of("changeimti")
    shutil.rmtree(root / "test_task_data")
    (root / "train_task_data" / "count.json").write_text("[]")
    with pytest.raises(DataError, match="test_task_data: file not found"):
        open_dataset(root, "test")
    assert detect_format(root) == "changeimti"
    report = _check(root, capsys)
    assert report["ok"] and set(report["splits"]) == {"train"}
    assert report["warnings"] == [
        f"{root / 'train_task_data' / 'count.json'}: not read (not one of the ChangeIMTI task files)",
        f"split left out: {root / 'test_task_data'}: file not found (the folder of this split's task files)",
    ]


@pytest.mark.parametrize(
    "text, normalised",
    [
        ("<image> <image> Please describe.", "<image>\nPlease describe."),
        ("<image>Please judge.", "<image>\nPlease judge."),
        ("Two images in order: <video> Classify.", "Two images in order: <image> Classify."),
        ("What changed?", "<image>\nWhat changed?"),
    ],
)
def test_released_placeholders_become_one_image_token(text, normalised):
    turns = [{"from": "human", "value": text}, {"from": "gpt", "value": "x"}]
    assert normalise_placeholder("f.json: record 0", turns)[0]["value"] == normalised
    turns[0]["value"] = f"<image> {text} <video>"
    with pytest.raises(DataError, match="^f.json: record 0: the first turn has image placeholders in more"):
        normalise_placeholder("f.json: record 0", turns)


# broken records: one line naming the file and the line or record ---------------------------------------
def _gpt_first(rows):
    rows[1]["conversations"] = rows[1]["conversations"][::-1]


def _two_placeholders(rows):
    rows[0]["conversations"][0]["value"] = "<image> <image>\nWhat changed?"


def _extra_field(rows):
    rows[1]["meta"] = {}


def _later_placeholder(records):
    records[5]["conversations"][2]["value"] = "<image> " + records[5]["conversations"][2]["value"]


def _unanswered(records):
    records[1]["conversations"] = records[1]["conversations"][:-1]


def _bad_timestamps(records):
    records[1]["timestamp"] = records[1]["timestamp"][:2]


def _no_answer(data):
    del data["question"][2]["answer"]


def _imti_later_placeholder(records):
    records[0]["conversations"][4]["value"] += " <image>"


def _imti_no_conversations(records):
    del records[1]["conversations"]


BROKEN = {
    "gpt first": (
        "changescope-instructions",
        "train.jsonl",
        _gpt_first,
        ":2: conversations[0] is from 'gpt'",
    ),
    "two placeholders": (
        "changescope-instructions",
        "train.jsonl",
        _two_placeholders,
        ":1: '<image>' must appear exactly once, in the first human turn (found 2 there and 0 in later",
    ),
    "unknown field": ("changescope-instructions", "train.jsonl", _extra_field, ":2: unknown fields ['meta']"),
    "later placeholder": (
        "changechat",
        mi.CHANGECHAT_FILE,
        _later_placeholder,
        ": record 5: conversations[2] holds an image placeholder",
    ),
    "unanswered": (
        "changechat-105k",
        "annotations/changechat_105k_train.json",
        _unanswered,
        ": record 1: the last turn (conversations[4]) is a question without an answer",
    ),
    "timestamps": (
        "teochatlas",
        "train/instruct.json",
        _bad_timestamps,
        ": record 1: 'timestamp' must list one date per frame (3), got 2",
    ),
    "no answer": ("qag-360k", "train/json/Train.json", _no_answer, ": question 2: missing field 'answer'"),
    "changeimti later placeholder": (
        "changeimti",
        "train_task_data/mul.json",
        _imti_later_placeholder,
        ": record 0: conversations[4] holds an image placeholder; only the first turn may",
    ),
    "changeimti no conversations": (
        "changeimti",
        "train_task_data/loc_road.json",
        _imti_no_conversations,
        ": record 1: missing field 'conversations'",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_record_is_one_line_naming_file_and_record(copy_of, capsys, case):
    fmt, name, edit, message = BROKEN[case]
    root = copy_of(fmt)
    (_rewrite_jsonl if name.endswith(".jsonl") else _rewrite_json)(root / name, edit)
    split = "train"
    with pytest.raises(DataError) as caught:
        open_dataset(root, split, format=fmt)
    text = str(caught.value)
    assert "\n" not in text and text.startswith(f"{root / name}{message}")
    report = _check(root, capsys, "--format", fmt, code=1)
    assert report["error_counts"] == {"index": 1} and report["errors"] == [text]


# changescope data check --------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMAT_NAMES)
def test_data_check_round_trips_each_fixture(roots, capsys, fmt):
    expected = mi.MAKERS[fmt][1]
    report = _check(roots[fmt], capsys, "--format", fmt)
    assert report["ok"] and report["format"] == fmt and report["unit"] == "samples"
    assert report["errors"] == [] and report["inconsistencies"] == []
    assert set(report["splits"]) == set(expected)
    for split, rows in expected.items():
        stats = report["splits"][split]
        assert (stats["pairs"], stats["turns"], stats["images"]) == (
            len(rows),
            sum(r[2] for r in rows),
            sum(r[1] for r in rows),
        )
    if fmt == "qag-360k":
        train = report["splits"]["train"]
        assert (train["with_mask"], train["changed"], train["unchanged"]) == (3, 2, 1)
        assert report["warnings"] == [f"split left out: {roots[fmt] / 'test/json/Test.json'}: file not found"]
    if fmt == "teochatlas":
        assert report["warnings"][0].endswith(
            "instruct.json: 1 single-image record(s) left out (not change data)"
        )


def test_data_check_text_report(roots, capsys):
    assert main(["data", "check", str(roots["changescope-instructions"])]) == 0
    text = capsys.readouterr().out
    assert "(format: changescope-instructions)" in text and "images / sample" in text
    assert "2.33" in text and "OK (3 samples checked)" in text


def test_data_check_lists_missing_and_unreadable_files(copy_of, capsys):
    root = copy_of("changescope-instructions")
    missing = root / "images" / "synth-001" / "t2.png"
    missing.unlink()
    with pytest.raises(DataError, match="t2.png: file not found") as caught:
        open_dataset(root, "train")
    assert str(caught.value) == f"{missing}: file not found (listed by {root / 'train.jsonl'}:2)"
    (root / "images" / "synth-002" / "t1.png").write_bytes(b"not a png")
    report = _check(root, capsys, code=1)
    assert report["error_counts"] == {"missing file": 1, "image": 1}
    assert report["errors"][0] == str(caught.value)
    assert "synth-002/t1.png: not a readable image" in report["errors"][1]


def test_data_check_names_a_changeimti_image_found_nowhere(copy_of, capsys):
    root = copy_of("changeimti")
    missing = root / "images" / "test" / "B" / "test_000001.png"
    missing.unlink()
    with pytest.raises(DataError) as caught:
        open_dataset(root, "test")
    text = str(caught.value)
    written = mi.CHANGEIMTI_PREFIX + "test/B/test_000001.png"
    listed = f"{root / 'test_task_data' / 'binary_class.json'}: record 0"
    assert "\n" not in text
    assert text == f"{missing}: file not found (listed by {listed} as '{written}', which is not there either)"
    report = _check(root, capsys, code=1)
    # every test record is of that pair: one error each, the first as the reader raises it
    assert report["error_counts"] == {"missing file": len(mi.CHANGEIMTI_EXPECTED["test"])}
    assert report["errors"][0] == text and report["splits"]["train"]["pairs"] == 11


def test_data_check_names_a_mask_of_the_wrong_size_and_a_repeated_id(copy_of, capsys):
    root = copy_of("qag-360k")
    Image.new("L", (mi.W // 2, mi.H), 0).save(root / "train" / "mask" / "1240.png")
    _rewrite_json(root / "val" / "json" / "Val.json", lambda d: d["question"].append(dict(d["question"][0])))
    report = _check(root, capsys, code=1)
    assert report["errors"] == [f"{root / 'train/mask/1240.png'}: mask is 8x12, images are 16x12"]
    assert report["inconsistencies"] == [
        f"{root / 'val/json/Val.json'}: sample id '77' is listed 2 times in split 'val'"
    ]
