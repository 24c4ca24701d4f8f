"""The dataset checker against clean, inconsistent and broken fixtures."""

import json

import pytest
from data import make_fixtures as fx
from PIL import Image

from changescope.data.check import CheckReport, check_dataset
from changescope.errors import DataError

CAPTION_FORMATS = {
    "levir-cc": (fx.make_levir_cc, fx.LEVIR_PAIRS, False),
    "levir-mci": (fx.make_levir_mci, fx.LEVIR_PAIRS, True),
    "dubai-cc": (fx.make_dubai_cc, fx.DUBAI_PAIRS, False),
    "second-cc": (fx.make_second_cc, fx.SECOND_PAIRS, True),
}


def _levir_json(root):
    path = root / "LevirCCcaptions.json"
    return path, json.loads(path.read_text())


@pytest.mark.parametrize("fmt", list(CAPTION_FORMATS))
def test_clean_caption_fixture_is_ok_with_right_counts(tmp_path, fmt):
    make, pairs, masks = CAPTION_FORMATS[fmt]
    report = check_dataset(make(tmp_path))
    assert report.format == fmt
    assert report.ok and report.errors == [] and report.inconsistencies == [] and report.warnings == []
    assert list(report.splits) == ["train", "val", "test"]
    for split, stats in report.splits.items():
        changed = sum(c for _, c in pairs[split])
        assert (stats.pairs, stats.changed, stats.unchanged) == (
            len(pairs[split]),
            changed,
            len(pairs[split]) - changed,
        )
        assert stats.with_mask == (len(pairs[split]) if masks else 0)
    total = report.total()
    assert total.pairs == sum(len(p) for p in pairs.values())
    text = report.format_text()
    assert "train" in text and f"{100 * total.changed / total.pairs:.1f}%" in text and "OK" in text


def test_clean_cdvqa_is_ok_and_reports_missing_test2(tmp_path):
    report = check_dataset(fx.make_cdvqa(tmp_path))
    assert report.ok and report.inconsistencies == []
    assert list(report.splits) == ["train", "val", "test"]
    for split, stats in report.splits.items():
        expected = fx.cdvqa_expected(split)
        assert stats.questions == len(expected)
        assert stats.pairs == len({q["file_name"] for q in expected})
    assert len(report.warnings) == 1 and "Test2_questions.json" in report.warnings[0]
    assert "questions" in report.format_text()


def test_to_dict_is_json(tmp_path):
    report = check_dataset(fx.make_levir_mci(tmp_path))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["format"] == "levir-mci"
    assert data["splits"]["train"]["pairs"] == len(fx.LEVIR_PAIRS["train"])
    assert data["splits"]["val"]["change_percent"] == pytest.approx(50.0)


# inconsistencies (LEVIR-MCI issue #18) -------------------------------------------------------------
def test_flag_contradicting_captions_and_mask_is_listed_not_failed(tmp_path):
    root = fx.make_levir_mci(tmp_path)
    path, data = _levir_json(root)
    changed_pair = next(i for i in data["images"] if i["changeflag"] == 1)
    changed_pair["changeflag"] = 0  # like train_000025: flag 0, yet captions and mask show change
    path.write_text(json.dumps(data))
    pair_id = changed_pair["filename"][:-4]

    report = check_dataset(root)
    assert report.ok
    mine = [line for line in report.inconsistencies if f"'{pair_id}'" in line]
    assert any("changeflag 0 but its captions describe change" in line for line in mine)
    assert any("changed pixels" in line for line in mine)
    assert report.inconsistency_counts == {"flag vs captions": 1, "flag vs mask": 1}
    split = changed_pair["split"]
    assert report.splits[split].unchanged == sum(not c for _, c in fx.LEVIR_PAIRS[split]) + 1  # the flag wins


def test_changed_pair_with_empty_mask_is_listed(tmp_path):
    root = fx.make_levir_mci(tmp_path)
    pair_id = next(p for p, changed in fx.LEVIR_PAIRS["val"] if changed)
    label = root / "images" / "val" / "label" / f"{pair_id}.png"
    Image.new("RGB", Image.open(label).size).save(label)  # like train_000119: flag 1, all background

    report = check_dataset(root)
    assert report.ok
    where = f"{root / 'LevirCCcaptions.json'}: pair '{pair_id}' (val)"
    assert report.inconsistencies == [f"{where} has changeflag 1 but {label.name} is all background"]


def test_mixed_captions_and_duplicate_ids_are_listed(tmp_path):
    root = fx.make_levir_cc(tmp_path, flag=False)
    path, data = _levir_json(root)
    pair_id = next(p for p, changed in fx.LEVIR_PAIRS["test"] if not changed)
    unchanged = next(i for i in data["images"] if i["filename"] == f"{pair_id}.png")
    unchanged["sentences"][1]["raw"] = " a road is built ."
    data["images"].append(dict(data["images"][0]))  # the first train pair listed twice
    path.write_text(json.dumps(data))

    report = check_dataset(root)
    assert report.ok
    assert any(
        f"'{pair_id}' (test) mixes change and no-change captions" in line for line in report.inconsistencies
    )
    first = data["images"][0]["filename"][:-4]
    assert f"pair id '{first}' is listed 2 times (train, train)" in report.inconsistencies


def test_cdvqa_answer_outside_closed_set_is_listed(tmp_path):
    root = fx.make_cdvqa(tmp_path)
    path = root / "Val_answers.json"
    data = json.loads(path.read_text())
    data["answers"][0]["answer"] = "maybe"
    path.write_text(json.dumps(data))
    report = check_dataset(root)
    assert report.ok
    assert report.inconsistency_counts == {"unknown answer": 1}
    assert "Val_answers.json" in report.inconsistencies[0] and "'maybe'" in report.inconsistencies[0]


# errors --------------------------------------------------------------------------------------------
MALFORMED = [(fmt, kind) for fmt, kinds in fx.CORRUPTIONS.items() for kind in kinds]
MAKERS = {fmt: make for fmt, (make, _, _) in CAPTION_FORMATS.items()} | {"cdvqa": fx.make_cdvqa}


@pytest.mark.parametrize("fmt, kind", MALFORMED, ids=[f"{f}-{k}" for f, k in MALFORMED])
def test_malformed_variant_is_an_error_naming_the_file(tmp_path, fmt, kind):
    root = MAKERS[fmt](tmp_path)
    culprit = fx.corrupt(root, kind)
    report = check_dataset(root, format=fmt)
    assert not report.ok
    assert any(culprit.name in line for line in report.errors), report.errors
    assert all("\n" not in line for line in report.errors)
    assert "FAILED" in report.format_text()


def test_all_errors_are_collected(tmp_path):
    root = fx.make_levir_mci(tmp_path)
    missing = root / "images" / "train" / "B" / "train_000001.png"
    missing.unlink()
    garbage = root / "images" / "val" / "A" / "val_000002.png"
    garbage.write_bytes(b"not an image")
    label = root / "images" / "test" / "label" / "test_000005.png"
    label.write_bytes(label.read_bytes()[:40])

    report = check_dataset(root)
    assert report.error_counts == {"missing file": 1, "image": 1, "label": 1}
    for path in (missing, garbage, label):
        assert sum(path.name in line for line in report.errors) == 1
    assert report.splits["val"].pairs == len(fx.LEVIR_PAIRS["val"])  # broken pairs are still counted


def test_listed_errors_are_capped(tmp_path):
    root = fx.make_levir_cc(tmp_path)
    for path in (root / "images").glob("*/B/*.png"):
        path.unlink()
    report = check_dataset(root, max_listed=2)
    listed = sum(len(p) for p in fx.LEVIR_PAIRS.values())
    assert report.error_counts == {"missing file": listed}
    assert len(report.errors) == 3 and report.errors[-1] == f"... and {listed - 2} more missing file errors"


def test_missing_split_file_is_a_warning_but_no_index_at_all_is_an_error(tmp_path):
    root = fx.make_dubai_cc(tmp_path / "dubai")
    (root / fx.DUBAI_DIR / "description_jsontr_te_val" / fx.DUBAI_FILES["val"]).unlink()
    report = check_dataset(root)
    assert report.ok and list(report.splits) == ["train", "test"]
    assert len(report.warnings) == 1 and "Validation_*.json" in report.warnings[0]

    root = fx.make_levir_cc(tmp_path / "levir")
    (root / "LevirCCcaptions.json").unlink()
    report = check_dataset(root, format="levir-cc")
    assert not report.ok and report.errors == [f"{root / 'LevirCCcaptions.json'}: file not found"]


def test_unknown_layout_is_an_error_and_unknown_format_raises(tmp_path):
    report = check_dataset(tmp_path)
    assert isinstance(report, CheckReport) and not report.ok and report.format == "unknown"
    assert "cannot tell the dataset format" in report.errors[0]
    with pytest.raises(DataError, match="unknown format 'nope'"):
        check_dataset(tmp_path, format="nope")
