"""Time-series readers (changescope/data/readers/timeseries.py): SynthChange sequences against the arrays
the generator rendered, SpaceNet 7 against fixtures in the released layout (tests/data/make_sn7.py), and
both through ``changescope data check``."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from changescope.cli import main
from changescope.data.readers import FORMATS, detect_format, open_dataset
from changescope.data.readers.timeseries import SpaceNet7, SynthChangeSequences, first_change
from changescope.data.sample import IGNORE_INDEX, collate, validate_sample
from changescope.data.synth.classes import MASK_CLASSES
from changescope.data.synth.sequence import render_sequence, write_sequences
from changescope.errors import DataError

SPLITS = ("train", "val", "test")
KEYS = {"id", "image", "times", "interval_masks", "mask", "captions", "changed"}
SEED, SIZE, DATES, COUNT = 3, 64, 4, 8


def _all(dataset):
    return [dataset[i] for i in range(len(dataset))]


def _rows(root):
    return [json.loads(line) for line in (root / "sequences.jsonl").read_text().splitlines()]


def _write_rows(root, rows):
    (root / "sequences.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


# synthchange-sequences -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_sequences(tmp_path_factory.mktemp("seq") / "ds", COUNT, size=SIZE, seed=SEED, dates=DATES)


@pytest.fixture
def synth_copy(synth, tmp_path):
    import shutil

    return shutil.copytree(synth, tmp_path / "ds")


def test_first_change_is_the_class_of_the_first_labelled_change():
    intervals = np.array(
        [
            [[0, 2, IGNORE_INDEX, 0, IGNORE_INDEX]],
            [[1, 1, 3, IGNORE_INDEX, IGNORE_INDEX]],
            [[4, 0, 0, 0, IGNORE_INDEX]],
        ]
    )
    assert first_change(intervals).tolist() == [[1, 2, 3, 0, IGNORE_INDEX]]


def test_synth_sequences_are_detected_registered_and_keep_the_contract(synth):
    assert detect_format(synth) == "synthchange-sequences" and "synthchange-sequences" in FORMATS
    assert SynthChangeSequences.classes == MASK_CLASSES
    for split in SPLITS:
        samples = [validate_sample(s) for s in _all(open_dataset(synth, split))]
        for sample in samples:
            assert set(sample) == KEYS
            assert sample["image"].shape == (DATES, 3, SIZE, SIZE) and sample["image"].dtype == torch.float32
            assert sample["interval_masks"].shape == (DATES - 1, SIZE, SIZE)
            assert sample["interval_masks"].dtype == sample["mask"].dtype == torch.long
        batch = collate(samples[:2])
        assert batch["interval_masks"].shape == (len(samples[:2]), DATES - 1, SIZE, SIZE)


def test_synth_samples_equal_the_rendered_sequences(synth):
    rows = {r["id"]: r for r in _rows(synth)}
    seen = []
    for split in SPLITS:
        dataset = open_dataset(synth, split)
        assert [e.split for e in dataset.entries] == [split] * len(dataset)
        for sample in _all(dataset):
            row = rows[sample["id"]]
            assert row["split"] == split
            seq = render_sequence(SEED, row["index"], SIZE, DATES)
            pixels = (sample["image"] * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            assert np.array_equal(pixels, seq.images)
            assert np.array_equal(sample["interval_masks"].numpy(), seq.interval_masks)
            first_class = np.take_along_axis(seq.interval_masks, np.maximum(seq.first_change, 0)[None], 0)[0]
            expected = np.where(seq.first_change >= 0, first_class, 0)
            assert np.array_equal(sample["mask"].numpy(), expected)
            assert sample["times"] == seq.dates and sample["captions"] == seq.captions
            assert sample["changed"] == bool(seq.events)
            seen.append(sample["id"])
    assert sorted(seen) == sorted(rows)  # every sequence in exactly one split


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(interval_masks=r["interval_masks"][:-1]), "2 interval masks for 4 images"),
        (lambda r: r.update(dates=r["dates"][::-1]), "dates must increase"),
        (lambda r: r.update(dates=["2020-02-30", *r["dates"][1:]]), "is not an ISO date"),
        (lambda r: r.pop("images"), "missing field 'images'"),
        (lambda r: r.update(split="training"), "unknown split 'training'"),
    ],
)
def test_a_broken_row_is_one_line_naming_file_and_line(synth_copy, edit, message):
    rows = _rows(synth_copy)
    edit(rows[1])
    _write_rows(synth_copy, rows)
    with pytest.raises(DataError, match=message) as caught:
        open_dataset(synth_copy, rows[0]["split"])
    assert "\n" not in str(caught.value) and str(caught.value).startswith(
        f"{synth_copy / 'sequences.jsonl'}:2"
    )


def test_missing_and_unreadable_files_are_named(synth_copy):
    row = next(r for r in _rows(synth_copy) if r["split"] == "train")
    (synth_copy / row["interval_masks"][1]).unlink()
    with pytest.raises(DataError, match="interval_01.png: file not found") as caught:
        open_dataset(synth_copy, "train")
    assert f"sequence '{row['id']}'" in str(caught.value)
    (synth_copy / row["interval_masks"][1]).write_bytes(b"not a png")
    dataset = open_dataset(synth_copy, "train")
    with pytest.raises(DataError, match="interval_01.png: not a readable image"):
        dataset[[e.id for e in dataset.entries].index(row["id"])]


# spacenet7 -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sx():
    pytest.importorskip("rasterio", reason="the geo extra is not installed")
    from data import make_sn7

    return make_sn7


@pytest.fixture(scope="module")
def sn7(sx, tmp_path_factory):
    return sx.make_sn7(tmp_path_factory.mktemp("sn7") / "SN7", public=True)


@pytest.fixture
def sn7_copy(sn7, tmp_path):
    import shutil

    return shutil.copytree(sn7, tmp_path / "SN7")


def _one(root, split, **options):
    dataset = open_dataset(root, split, **options)
    assert len(dataset) == 1
    return validate_sample(dataset[0])


def test_sn7_is_detected_registered_and_split_by_aoi_name(sx, sn7):
    assert detect_format(sn7) == "spacenet7" and "spacenet7" in FORMATS
    found = {split: [e.id for e in open_dataset(sn7, split).entries] for split in SpaceNet7.splits}
    assert found == {
        "train": [a for a, s in sx.SPLITS.items() if s == "train"],
        "val": [a for a, s in sx.SPLITS.items() if s == "val"],
        "test": [],
        "test_public": [sx.PUBLIC_AOI],
    }


def test_sn7_samples_keep_the_contract_with_dates_from_the_file_names(sx, sn7):
    for aoi, split in sx.SPLITS.items():
        sample = _one(sn7, split)
        assert set(sample) == KEYS and sample["id"] == aoi
        assert sample["times"] == sx.TIMES == ["2019-11-01", "2019-12-01", "2020-01-01", "2020-02-01"]
        assert sample["image"].shape == (4, 3, sx.H, sx.W)  # RGBA mosaics: the alpha band is dropped
        assert np.array_equal(sample["interval_masks"].numpy(), sx.expected_intervals(aoi))
        assert sample["changed"] is True and sample["captions"] == []
    batch = collate([_one(sn7, "train"), _one(sn7, "val")])
    assert batch["interval_masks"].shape == (2, 3, sx.H, sx.W)


def test_sn7_change_is_a_building_id_seen_for_the_first_time(sx, sn7):
    aoi = "L15-0331E-1257N_1327_3160_13"
    sample = _one(sn7, "train")
    intervals, first = sample["interval_masks"].numpy(), sample["mask"].numpy()
    existing, donut, cloudy = sx.AOIS[aoi]
    assert not intervals[0].any()  # month 2 adds nothing
    assert np.array_equal(intervals[1] == 1, sx.footprint(donut))  # appears in month 3: interval 1
    assert intervals[1][28, 38] == 0  # its hole is no building
    assert not (intervals[:, sx.footprint(existing)] != 0).any()  # there from the first date
    assert (first[sx.footprint(donut)] == 1).all() and (first[sx.footprint(existing)] == 0).all()
    demolished = sx.AOIS["L15-0487E-1246N_1950_3207_13"][2]
    assert not (_one(sn7, "val")["interval_masks"].numpy()[:, sx.footprint(demolished)]).any()


def test_sn7_udm_pixels_are_ignored_in_both_intervals_of_their_month(sx, sn7):
    aoi = "L15-0331E-1257N_1327_3160_13"
    sample = _one(sn7, "train")
    intervals, first = sample["interval_masks"].numpy(), sample["mask"].numpy()
    cloud = sx.cloud(aoi, 3)  # the last month: only interval 2 touches it
    assert (intervals[2][cloud] == IGNORE_INDEX).all() and not (intervals[:2] == IGNORE_INDEX).any()
    building = sx.footprint(sx.AOIS[aoi][2])
    assert (intervals[2][building & ~cloud] == 1).all() and (building & cloud).any()
    assert (first[cloud] == 0).all()  # intervals 0 and 1 are labelled there: no change
    pixels = sample["image"].numpy()
    assert (pixels[3][:, cloud] == 0).all()  # images_masked: the UDM applied


def test_sn7_step_and_max_dates_pick_months_and_the_change_follows(sx, sn7):
    aoi = "L15-0331E-1257N_1327_3160_13"
    for options, months in [({"step": 2}, (0, 2)), ({"max_dates": 3}, (0, 2, 3)), ({"step": 3}, (0, 3))]:
        sample = _one(sn7, "train", **options)
        assert sample["times"] == [sx.TIMES[m] for m in months], options
        assert np.array_equal(sample["interval_masks"].numpy(), sx.expected_intervals(aoi, months)), options
    for options, message in [({"step": 0}, "step must be"), ({"max_dates": 17}, "max_dates must be")]:
        with pytest.raises(DataError, match=message):
            open_dataset(sn7, "train", **options)
    with pytest.raises(DataError, match="has 1 images; a change needs 2"):
        open_dataset(sn7, "train", step=4)


def test_sn7_public_test_aois_have_no_labels(sx, sn7):
    sample = _one(sn7, "test_public")
    assert (sample["interval_masks"] == IGNORE_INDEX).all() and (sample["mask"] == IGNORE_INDEX).all()
    assert sample["changed"] is False


def test_sn7_split_lists_replace_the_name_rule(sx, sn7_copy):
    (sn7_copy / "list").mkdir()
    (sn7_copy / "list" / "test.txt").write_text("L15-0331E-1257N_1327_3160_13\r\n")
    assert [e.id for e in open_dataset(sn7_copy, "test").entries] == ["L15-0331E-1257N_1327_3160_13"]
    assert [len(open_dataset(sn7_copy, s)) for s in ("train", "val")] == [0, 0]  # unlisted: left out


def test_sn7_broken_layout_is_one_line_naming_the_file(sx, sn7_copy):
    aoi = sn7_copy / "train" / "L15-0331E-1257N_1327_3160_13"
    name = sx.stem(aoi.name, 2)
    labels = aoi / "labels_match_pix" / f"{name}_Buildings.geojson"
    text = labels.read_text()
    labels.unlink()
    with pytest.raises(DataError, match=f"{name}_Buildings.geojson: file not found") as caught:
        open_dataset(sn7_copy, "train")
    assert "\n" not in str(caught.value)

    labels.write_text(text.replace('"Id"', '"id"'))
    with pytest.raises(DataError, match=r"_Buildings.geojson: features\[0\] has no 'Id' property"):
        open_dataset(sn7_copy, "train")[0]
    labels.write_text(text)

    image = aoi / "images_masked" / f"{name}.tif"
    image.write_bytes(image.read_bytes()[:300])
    with pytest.raises(DataError, match=f"{name}.tif: not a readable GeoTIFF") as caught:
        open_dataset(sn7_copy, "train")[0]
    assert "\n" not in str(caught.value)

    stray = aoi / "images_masked" / "global_monthly_2020_13_mosaic_L15-0331E-1257N_1327_3160_13.tif"
    stray.write_bytes(b"")
    with pytest.raises(DataError, match="global_monthly_2020_13.*: not a monthly mosaic of this AOI"):
        open_dataset(sn7_copy, "train")


# changescope data check ----------------------------------------------------------------------------
def _check_json(root, capsys, code=0):
    assert main(["data", "check", str(root), "--json"]) == code
    return json.loads(capsys.readouterr().out)


def test_data_check_reports_synth_sequences_per_split(synth, capsys):
    rows = _rows(synth)
    report = _check_json(synth, capsys)
    assert report["ok"] and report["format"] == "synthchange-sequences" and report["unit"] == "sequences"
    assert report["errors"] == report["inconsistencies"] == report["warnings"] == []
    for split in SPLITS:
        mine = [r for r in rows if r["split"] == split]
        stats = report["splits"][split]
        assert (stats["pairs"], stats["with_mask"]) == (len(mine), len(mine))
        assert stats["changed"] == sum(bool(r["changed_intervals"]) for r in mine)
        assert stats["intervals"] == (DATES - 1) * len(mine)
        assert stats["changed_intervals"] == sum(len(r["changed_intervals"]) for r in mine)
        assert stats["labelled_pixels"] == (DATES - 1) * SIZE * SIZE * len(mine)
    assert main(["data", "check", str(synth)]) == 0
    text = capsys.readouterr().out
    assert "sequences" in text and "changed intervals" in text and f"OK ({COUNT} sequences checked)" in text


def test_data_check_reports_sn7_with_udm_and_public_aois(sx, sn7, capsys):
    report = _check_json(sn7, capsys)
    assert report["ok"] and report["format"] == "spacenet7"
    assert report["warnings"] == ["split 'test' has no sequences"]
    train, val, public = (report["splits"][s] for s in ("train", "val", "test_public"))
    truth = sx.expected_intervals("L15-0331E-1257N_1327_3160_13")
    assert (train["intervals"], train["changed_intervals"], val["changed_intervals"]) == (3, 2, 1)
    assert train["changed_pixels"] == int((truth == 1).sum())
    assert train["labelled_pixels"] == int((truth != IGNORE_INDEX).sum())
    assert (
        public["pairs"],
        public["intervals"],
        public["with_mask"],
        public["changed"],
        public["unchanged"],
    ) == (
        1,
        3,
        0,
        0,
        0,
    )
    assert main(["data", "check", str(sn7), "--format", "spacenet7"]) == 0
    assert "(format: spacenet7)" in capsys.readouterr().out


def test_data_check_lists_every_broken_file_of_a_sequence(synth_copy, capsys):
    row = next(r for r in _rows(synth_copy) if r["split"] == "val")
    (synth_copy / row["images"][2]).write_bytes(b"not a png")
    (synth_copy / row["images"][3]).unlink()
    other = next(r for r in _rows(synth_copy) if r["split"] == "test")
    Image.new("RGB", (SIZE, SIZE), (7, 7, 7)).save(synth_copy / other["interval_masks"][0])  # no class colour
    small = next(r for r in _rows(synth_copy) if r["split"] == "train")
    Image.new("RGB", (SIZE // 2, SIZE)).save(synth_copy / small["images"][1])
    report = _check_json(synth_copy, capsys, code=1)
    assert report["error_counts"] == {"missing file": 1, "label": 1, "image": 1}
    errors = "\n".join(report["errors"])
    assert f"{row['images'][3]}: file not found (needed by sequence '{row['id']}'" in errors
    assert "label colours (7,7,7) are outside the class map" in errors
    assert f"{small['images'][1]}: image is 32x64 but" in errors and "images of a sequence" in errors
    assert report["splits"]["val"]["pairs"] == sum(r["split"] == "val" for r in _rows(synth_copy))


def test_data_check_names_the_index_line_of_a_broken_sequence(synth_copy, capsys):
    rows = _rows(synth_copy)
    rows[0]["dates"] = rows[0]["dates"][::-1]
    _write_rows(synth_copy, rows)
    report = _check_json(synth_copy, capsys, code=1)
    assert any(line.startswith(f"{synth_copy / 'sequences.jsonl'}:1: ") for line in report["errors"])
    assert "dates must increase" in report["errors"][0]


def test_data_check_names_an_unreadable_sn7_mosaic(sx, sn7_copy, capsys):
    image = sn7_copy / "train" / "L15-0487E-1246N_1950_3207_13" / "images_masked"
    broken = image / f"{sx.stem('L15-0487E-1246N_1950_3207_13', 1)}.tif"
    broken.write_bytes(b"II*\x00garbage")
    report = _check_json(sn7_copy, capsys, code=1)
    assert report["error_counts"] == {"image": 1}
    assert report["errors"][0].startswith(f"{broken}: not a readable GeoTIFF")
