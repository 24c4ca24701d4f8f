"""Readers against fixtures written in the real layouts (tests/data/make_fixtures.py)."""

import json

import numpy as np
import pytest
import torch
from data import make_fixtures as fx
from PIL import Image

from changescope.data.readers import detect_format, open_dataset
from changescope.data.readers.cdvqa import CDVQA
from changescope.data.readers.dubai import DUBAI_NO_CHANGE, DubaiCC
from changescope.data.readers.levir import LevirCC, LevirMCI
from changescope.data.readers.second import SecondCC, resize_nearest
from changescope.data.records import RecordDataset, write_records
from changescope.data.sample import collate, validate_sample
from changescope.data.text import normalize
from changescope.errors import DataError

SPLITS = ("train", "val", "test")


def _all(dataset):
    return [dataset[i] for i in range(len(dataset))]


# LEVIR-CC / LEVIR-MCI ------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", [True, False], ids=["changeflag", "no-changeflag"])
def test_levir_cc_reads_listed_pairs_exactly(tmp_path, flag):
    root = fx.make_levir_cc(tmp_path, flag=flag)
    for split in SPLITS:
        ds = LevirCC(root, split)
        expected = fx.LEVIR_PAIRS[split]
        assert [e.id for e in ds.entries] == [pair_id for pair_id, _ in expected]
        assert all((e.flag is None) != flag for e in ds.entries)
        for sample, (_, changed) in zip(_all(ds), expected, strict=True):
            # without the flag, `changed` comes from the captions and must still be right
            assert sample["changed"] is changed
            reference = fx.LEVIR_CHANGE if changed else fx.LEVIR_NO_CHANGE
            assert [normalize(c) for c in sample["captions"]] == list(reference)
            assert sample["captions"][0] == f"{reference[0]} ."  # raw as written, outer spaces stripped
            assert "mask" not in sample
    listed = {e.id for split in SPLITS for e in LevirCC(root, split).entries}
    assert listed.isdisjoint(fx.LEVIR_UNLISTED)  # on disk, but no caption lists them


def test_levir_mci_decodes_channel_zero(tmp_path):
    root = fx.make_levir_mci(tmp_path)
    seen = set()
    for split in SPLITS:
        ds = LevirMCI(root, split)
        for entry, sample in zip(ds.entries, _all(ds), strict=True):
            channel0 = np.asarray(Image.open(entry.label))[..., 0]
            expected = (channel0 == 128) * 1 + (channel0 == 255) * 2
            assert sample["mask"].dtype == torch.long
            assert torch.equal(sample["mask"], torch.from_numpy(expected))
            assert bool(sample["mask"].any()) is sample["changed"]
            seen |= set(sample["mask"].unique().tolist())
    assert seen == {0, 1, 2}  # 128 -> road (1), 255 -> building (2)


# Dubai-CC ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "nested, rgb_dir", [(True, "imgs_tiles/RGB"), (False, "imgs_tiles/RGB"), (True, "RGB"), (False, "RGB")]
)
def test_dubai_cc_layouts(tmp_path, nested, rgb_dir):
    root = fx.make_dubai_cc(tmp_path, nested=nested, rgb_dir=rgb_dir)
    for split in SPLITS:
        ds = DubaiCC(root, split)
        expected = fx.DUBAI_PAIRS[split]
        assert [e.id for e in ds.entries] == [pair_id for pair_id, _ in expected]
        for sample, (_, changed) in zip(_all(ds), expected, strict=True):
            assert sample["image"].shape == (2, 3, fx.DUBAI_SIZE, fx.DUBAI_SIZE)
            assert sample["changed"] is changed  # from the captions: Dubai-CC has no flag
            assert sample["captions"] == list(fx.DUBAI_CHANGE if changed else fx.DUBAI_NO_CHANGE)
            assert "mask" not in sample


def test_dubai_no_change_list_fixes_chg2cap_commas():
    # Chg2Cap's list glues these two into one string, so neither matched there
    assert DubaiCC.changed_from_captions(["All remained the same.", "Everything remains the same."]) is False
    assert DubaiCC.changed_from_captions(["Nothing has changed.", "A road was built."]) is None
    assert DubaiCC.changed_from_captions(["A road was built."]) is True
    normalized = [normalize(s) for s in DUBAI_NO_CHANGE]
    assert len(set(normalized)) == len(normalized)


def test_dubai_split_field_must_match_file_name(tmp_path):
    root = fx.make_dubai_cc(tmp_path)
    path = tmp_path / fx.DUBAI_DIR / "description_jsontr_te_val" / fx.DUBAI_FILES["train"]
    data = json.loads(path.read_text())
    data["images"][1]["split"] = "test"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="Train_Dubai_CC.json.*has split 'test'"):
        DubaiCC(root, "train")
    assert len(DubaiCC(root, "val")) == len(fx.DUBAI_PAIRS["val"])  # other splits still open


def test_dubai_root_with_two_copies_is_refused(tmp_path):
    fx.make_dubai_cc(tmp_path / "a")
    fx.make_dubai_cc(tmp_path / "b", nested=False)
    (tmp_path / "b").rename(tmp_path / "a" / "copy")
    with pytest.raises(DataError, match="several Dubai-CC copies"):
        DubaiCC(tmp_path / "a", "train")


# SECOND-CC -----------------------------------------------------------------------------------------
def test_second_cc_semantic_maps_and_mask(tmp_path):
    root = fx.make_second_cc(tmp_path)
    for split in SPLITS:
        ds = SecondCC(root, split)
        expected = fx.SECOND_PAIRS[split]
        assert [e.id for e in ds.entries] == [pair_id for pair_id, _ in expected]
        for sample, (pair_id, changed) in zip(_all(ds), expected, strict=True):
            before, after = fx.second_class_maps(pair_id, changed)
            assert sample["changed"] is changed  # from SECOND-CC's own no-change sentences
            semantic, mask = sample["semantic"], sample["mask"]
            assert semantic.dtype == torch.long and semantic.shape == (2, fx.SIZE, fx.SIZE)
            assert torch.equal(semantic, torch.from_numpy(np.stack([before, after])))
            assert torch.equal(mask, torch.from_numpy(np.where((before > 0) | (after > 0), after, 0)))


def test_second_cc_small_map_is_resized_with_nearest_neighbour(tmp_path):
    root = fx.make_second_cc(tmp_path)
    split, pair_id = fx.SECOND_SMALL_MAP
    ds = SecondCC(root, split)
    index = [e.id for e in ds.entries].index(pair_id)
    assert Image.open(ds.entries[index].label).size == (fx.SIZE // 2, fx.SIZE // 2)
    sample = ds[index]
    assert sample["mask"].shape == (fx.SIZE, fx.SIZE)
    assert set(sample["semantic"][1].unique().tolist()) <= set(range(len(SecondCC.classes)))
    assert torch.equal(sample["semantic"][1], torch.from_numpy(fx.second_class_maps(pair_id, True)[1]))


def test_resize_nearest_matches_pillow_and_adds_no_values():
    ids = np.random.default_rng(0).integers(0, 7, (7, 5))
    for shape in ((16, 13), (3, 2), (7, 5)):
        out = resize_nearest(ids, shape)
        pillow = np.asarray(Image.fromarray(ids.astype(np.uint8)).resize(shape[::-1], Image.NEAREST))
        assert np.array_equal(out, pillow)
        assert set(np.unique(out)) <= set(np.unique(ids))


def test_second_cc_changeflag_and_missing_before_map(tmp_path):
    root = fx.make_second_cc(tmp_path, flag=True)
    assert [e.flag for e in SecondCC(root, "val").entries] == [c for _, c in fx.SECOND_PAIRS["val"]]
    before = tmp_path / "test" / "sem" / "A" / f"{fx.SECOND_PAIRS['test'][0][0]}.png"
    before.unlink()
    with pytest.raises(DataError, match=f"{before.name}: file not found"):
        SecondCC(root, "test")


# CDVQA ---------------------------------------------------------------------------------------------
def test_cdvqa_joins_by_id(tmp_path):
    root = fx.make_cdvqa(tmp_path)
    for split in SPLITS:
        ds = CDVQA(root, split)
        got = [(s["id"], s["question"], s["answer"], s["qtype"]) for s in _all(ds)]
        expected = [(str(q["id"]), q["question"], q["answer"], q["qtype"]) for q in fx.cdvqa_expected(split)]
        assert got == expected
        assert [item.file_name for item in ds.items] == [q["file_name"] for q in fx.cdvqa_expected(split)]
    val = {s["id"]: s for s in _all(CDVQA(root, "val"))}
    # a known question: answers are listed in reverse with offset ids, so a positional join gets "0" here
    assert val["3"]["question"] == "Did the areas of low vegetation decrease?" and val["3"]["answer"] == "yes"
    assert str(fx.CDVQA_INACTIVE_QUESTION[1]) not in val
    train_ids = {s["id"] for s in _all(CDVQA(root, "train"))}
    assert train_ids.isdisjoint({"3", "4", "5"})  # the questions of the inactive image record


def test_cdvqa_answer_and_type_vocabularies():
    assert len(CDVQA.ANSWERS) == 19 and len(set(CDVQA.ANSWERS)) == 19
    assert len(CDVQA.QTYPES) == 8
    assert {answer for _, _, answer in fx.CDVQA_BANK} <= set(CDVQA.ANSWERS)


def test_cdvqa_image_folder_variant_and_missing_split(tmp_path):
    root = fx.make_cdvqa(tmp_path, image_dir="image")
    assert len(CDVQA(root, "test")) == len(fx.cdvqa_expected("test"))
    assert CDVQA(root, "test")[0]["image"].shape == (2, 3, fx.SIZE, fx.SIZE)
    with pytest.raises(DataError, match="Test2_questions.json: file not found"):
        CDVQA(root, "test2")


def test_cdvqa_records_round_trip(tmp_path):
    root = fx.make_cdvqa(tmp_path / "cdvqa")
    ds = CDVQA(root, "val")
    records = ds.to_records(relative_to=tmp_path)
    assert records[0].id == f"val/{ds.items[0].id}" and records[0].task == "vqa"
    assert records[0].meta["split"] == "val"
    assert records[0].images[0]["path"] == f"cdvqa/im1/{ds.items[0].file_name}"
    path = tmp_path / "cdvqa.jsonl"
    write_records(path, records)
    loaded = RecordDataset(path, task="vqa", split="val")
    assert len(loaded) == len(ds)
    for mine, theirs in zip(_all(ds), _all(loaded), strict=True):
        assert torch.equal(mine["image"], theirs["image"])
        assert (mine["question"], mine["answer"], mine["qtype"]) == (
            theirs["question"],
            theirs["answer"],
            theirs["qtype"],
        )


# every format --------------------------------------------------------------------------------------
FORMATS = [
    ("levir-cc", fx.make_levir_cc),
    ("levir-mci", fx.make_levir_mci),
    ("dubai-cc", fx.make_dubai_cc),
    ("second-cc", fx.make_second_cc),
    ("cdvqa", fx.make_cdvqa),
]


@pytest.mark.parametrize("fmt, make", FORMATS, ids=[f for f, _ in FORMATS])
def test_open_dataset_detects_format_and_samples_batch(tmp_path, fmt, make):
    root = make(tmp_path)
    assert detect_format(root) == fmt
    for split in SPLITS:
        ds = open_dataset(root, split)
        samples = [validate_sample(s) for s in _all(ds)]
        batch = collate(samples[:2])
        assert batch["image"].shape[:2] == (2, 2)
        assert all(isinstance(s["id"], str) for s in samples)
        if "mask" in samples[0]:
            assert batch["mask"].shape == (2, *samples[0]["image"].shape[-2:])


def test_detect_format_finds_flat_dubai(tmp_path):
    assert detect_format(fx.make_dubai_cc(tmp_path, nested=False)) == "dubai-cc"


MALFORMED = [(fmt, kind) for fmt, kinds in fx.CORRUPTIONS.items() for kind in kinds]
MAKERS = dict(FORMATS)


@pytest.mark.parametrize("fmt, kind", MALFORMED, ids=[f"{f}-{k}" for f, k in MALFORMED])
def test_malformed_variant_raises_one_line_naming_the_file(tmp_path, fmt, kind):
    root = MAKERS[fmt](tmp_path)
    culprit = fx.corrupt(root, kind)
    with pytest.raises(DataError) as caught:
        _all(open_dataset(root, "train", format=fmt))
    message = str(caught.value)
    assert "\n" not in message
    assert culprit.name in message


@pytest.mark.parametrize("fmt, make", FORMATS, ids=[f for f, _ in FORMATS])
def test_unknown_split_argument(tmp_path, fmt, make):
    root = make(tmp_path)
    with pytest.raises(DataError, match=r"unknown split 'training'"):
        open_dataset(root, "training", format=fmt)
