"""Change-detection readers (binary masks, no captions) against fixtures in the real layouts
(tests/data/make_cd_fixtures.py), and against the real folders under /work/shared/realdata when present."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data import make_cd_fixtures as cx
from PIL import Image

from changescope.cli import main
from changescope.data.check import check_dataset
from changescope.data.readers import FORMATS, detect_format, open_dataset
from changescope.data.readers.changedetection import (
    IGNORE_INDEX,
    OSCD,
    XBD,
    ChangeFolder,
    LandsatSparse,
    SceneTriplets,
    SztakiAirChange,
    read_envi,
    read_list,
)
from changescope.data.sample import collate, validate_sample
from changescope.errors import DataError

SPLITS = ("train", "val", "test")
from conftest import REALDATA  # noqa: E402

KEYS = {"id", "image", "mask", "captions", "changed", "gsd"}


def _all(dataset):
    return [dataset[i] for i in range(len(dataset))]


def _assert_sample(sample, mask, gsd, keys=KEYS):
    """The sample contract: native size, float image in [0, 1], long 0/1/255 mask, no captions."""
    validate_sample(sample)
    assert set(sample) == keys
    image = sample["image"]
    assert image.dtype == torch.float32 and image.shape == (2, 3, *mask.shape)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert sample["mask"].dtype == torch.long
    assert torch.equal(sample["mask"], torch.from_numpy(np.asarray(mask, np.int64)))
    assert set(sample["mask"].unique().tolist()) <= {0, 1, IGNORE_INDEX}
    assert sample["captions"] == []
    assert sample["changed"] is bool((mask == 1).any())
    assert sample["gsd"] == gsd
    assert isinstance(sample["id"], str)


# what each fixture should read as: split -> [(id, 0/1/255 mask)] ------------------------------------
def _folder_expected(layout="split", lists=True, jpeg=False, label_dir="label"):
    def expected(root):
        out = {s: [] for s in SPLITS}
        for split, items in cx.FOLDER_PAIRS.items():
            for pair_id, changed in items:
                into = split if (layout == "split" or lists) else "train"
                mask = cx.truth(pair_id, changed).astype(np.int64)
                if jpeg:  # lossy labels: the stored values above 127
                    stored = np.asarray(Image.open(root / split / label_dir / f"{pair_id}.jpg"))
                    mask = (stored > 127).astype(np.int64)
                out[into].append((cx.folder_id(layout, split, pair_id), mask))
        if layout == "flat" and not lists:
            out["train"].sort(key=lambda item: item[0])
        return out

    return expected


def _sztaki_expected(root):
    return {s: [(p, cx.sztaki_expected(p, c)) for p, c in items] for s, items in cx.SZTAKI_PAIRS.items()}


def _oscd_train_expected(root):
    out = {s: [] for s in SPLITS}
    for city, (shape, changed, _) in cx.OSCD_TRAIN_CITIES.items():
        out["val" if city in cx.OSCD_VAL else "train"].append((city, cx.truth(city, changed, shape)))
    return out


def _oscd_test_expected(root):
    cities = cx.OSCD_TEST_CITIES.items()
    return {"train": [], "val": [], "test": [(c, cx.truth(c, ch, shape)) for c, (shape, ch, _) in cities]}


def _xbd_expected(root):
    return {
        s: [(name, (cx.xbd_damage(name, changed) >= 2).astype(np.int64)) for name, changed in items]
        for s, items in cx.XBD_PAIRS.items()
    }


def _landsat_expected(root):
    return {
        s: [(scene, cx.landsat_expected(scene)) for scene, _ in items]
        for s, items in cx.LANDSAT_PAIRS.items()
    }


def _triplets_expected(names):
    def expected(root):
        return {"train": [], "val": [], "test": [(n, cx.triplet_expected(root, n)) for n in names]}

    return expected


#: fixture name -> (maker, format, expected, gsd)
FIXTURES = {
    "folder-split": (cx.make_folder, "folder", _folder_expected(lists=False), None),
    "folder-flat-lists": (
        lambda r: cx.make_folder(r, layout="flat", lists=True),
        "folder",
        _folder_expected("flat", lists=True),
        None,
    ),
    "folder-flat-01-gsd": (
        lambda r: cx.make_folder(r, layout="flat", coding="0-1", config={"gsd": 0.5}),
        "folder",
        _folder_expected("flat", lists=False),
        0.5,
    ),
    "folder-cdd-jpeg": (
        lambda r: cx.make_folder(r, label_dir="OUT", image_ext=".jpg", label_ext=".jpg"),
        "folder",
        _folder_expected(jpeg=True, label_dir="OUT"),
        None,
    ),
    "folder-sysu-dirs": (
        lambda r: cx.make_folder(r, dirs=("time1", "time2")),
        "folder",
        _folder_expected(lists=False),
        None,
    ),
    "egy-bcd": (cx.make_egy, "folder", _folder_expected(lists=True), None),
    "sztaki": (cx.make_sztaki, "sztaki", _sztaki_expected, 1.5),
    "oscd-train": (cx.make_oscd_train, "oscd", _oscd_train_expected, 10.0),
    "oscd-test": (cx.make_oscd_test, "oscd", _oscd_test_expected, 10.0),
    "xbd": (cx.make_xbd, "xbd", _xbd_expected, 0.5),
    "landsat": (cx.make_landsat, "landsat", _landsat_expected, 30.0),
    "sar-classic": (cx.make_sar_classic, "triplets", _triplets_expected(list(cx.SAR_CLASSIC)), None),
    "inlpg": (cx.make_inlpg, "triplets", _triplets_expected(sorted(cx.INLPG)), None),
}


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    """Every fixture written once for the module (tests that break files copy theirs first)."""
    base = tmp_path_factory.mktemp("cd")
    return {name: make(base / name) for name, (make, *_) in FIXTURES.items()}


def _copy(fixtures, name, tmp_path):
    return Path(shutil.copytree(fixtures[name], tmp_path / name))


@pytest.mark.parametrize("name", list(FIXTURES))
def test_fixture_reads_exactly_with_detected_format(fixtures, name):
    _, fmt, expected, gsd = FIXTURES[name]
    root = fixtures[name]
    assert detect_format(root) == fmt
    want = expected(root)
    for split in SPLITS:
        ds = open_dataset(root, split)
        assert type(ds).name == fmt and ds.classes == ("background", "change")
        assert ds.no_change_sentences == () and ds.has_masks
        assert [e.id for e in ds.entries] == [pair_id for pair_id, _ in want[split]]
        keys = KEYS | {"times"} if fmt == "oscd" else KEYS
        for sample, (_, mask) in zip(_all(ds), want[split], strict=True):
            _assert_sample(sample, mask, gsd, keys)
        # changed() from the mask, also on a fresh reader that has decoded nothing yet
        fresh = open_dataset(root, split)
        assert [fresh.changed(e) for e in fresh.entries] == [bool((m == 1).any()) for _, m in want[split]]


@pytest.mark.parametrize("name", list(FIXTURES))
def test_check_reports_counts_and_no_caption_findings(fixtures, name):
    _, fmt, expected, _ = FIXTURES[name]
    root = fixtures[name]
    report = check_dataset(root)
    assert report.format == fmt and report.ok, report.errors
    assert report.inconsistencies == []
    want = expected(root)
    assert list(report.splits) == list(SPLITS)
    for split, stats in report.splits.items():
        masks = [m for _, m in want[split]]
        changed = sum(bool((m == 1).any()) for m in masks)
        assert (stats.pairs, stats.changed, stats.unchanged, stats.with_mask) == (
            len(masks),
            changed,
            len(masks) - changed,
            len(masks),
        )
        assert stats.changed_pixels == sum(int((m == 1).sum()) for m in masks)
        assert stats.labelled_pixels == sum(int((m != IGNORE_INDEX).sum()) for m in masks)
    assert report.warnings == [f"split '{s}' has no pairs" for s in SPLITS if not want[s]]
    text = report.format_text()
    assert "changed px" in text and "labelled px" in text and "OK" in text


def test_cli_data_check_text_and_json(fixtures, capsys):
    for name in ("egy-bcd", "landsat", "inlpg"):
        assert main(["data", "check", str(fixtures[name])]) == 0
        out = capsys.readouterr().out
        assert f"(format: {FIXTURES[name][1]})" in out and "changed px" in out
    assert main(["data", "check", str(fixtures["sztaki"]), "--format", "sztaki", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["format"] == "sztaki"
    assert {s: data["splits"][s]["pairs"] for s in SPLITS} == {"train": 9, "val": 2, "test": 2}
    assert data["splits"]["test"]["changed_pixels"] == sum(
        int(cx.sztaki_expected(p, c).sum()) for p, c in cx.SZTAKI_PAIRS["test"]
    )


def test_formats_are_registered_and_caption_detection_still_wins(tmp_path):
    for fmt in ("folder", "sztaki", "oscd", "xbd", "landsat", "triplets"):
        assert fmt in FORMATS
    from data import make_fixtures as fx

    # LEVIR-MCI has images/<split>/{A,B,label}: its caption file must still decide
    assert detect_format(fx.make_levir_mci(tmp_path / "mci")) == "levir-mci"
    with pytest.raises(DataError, match="cannot tell the dataset format"):
        detect_format(tmp_path / "mci" / "images" / "train" / "A")


# folder ------------------------------------------------------------------------------------------
def test_folder_lists_crlf_without_final_newline(fixtures):
    root = fixtures["egy-bcd"] / cx.EGY_DIR
    raw = (root / "list" / "train.txt").read_bytes()
    assert b"\r\n" in raw and not raw.endswith(b"\n")
    assert read_list(root / "list" / "train.txt") == ["train_1.png", "train_2.png", "train_3.png"]
    assert read_list(root / "list" / "val.txt") == ["val_1", "val_2"]  # without extension
    assert detect_format(root) == "folder"  # the inner folder opens too
    assert [e.id for e in ChangeFolder(root, "val").entries] == ["val/val_1", "val/val_2"]


def test_folder_list_names_lose_their_path_and_unlisted_pairs_are_left_out(fixtures, tmp_path):
    root = _copy(fixtures, "folder-flat-lists", tmp_path)
    (root / "list" / "test.txt").write_text("test/A/test_1.png\n\n", encoding="utf-8")
    assert [e.id for e in ChangeFolder(root, "test").entries] == ["test_1"]
    listed = {e.id for s in SPLITS for e in ChangeFolder(root, s).entries}
    assert cx.FOLDER_UNLISTED not in listed and (root / "A" / f"{cx.FOLDER_UNLISTED}.png").is_file()
    (root / "list" / "val.txt").unlink()
    assert len(ChangeFolder(root, "val")) == 0  # no list: an empty split, not an error


def test_folder_label_rules(fixtures, tmp_path):
    root = _copy(fixtures, "folder-split", tmp_path)
    label = root / "train" / "label" / "train_1.png"
    values = np.asarray(Image.open(label)).copy()
    values[0, 0], values[0, 1] = 213, 40  # strays in a 0/255 label follow the nearer side of 127
    Image.fromarray(values).save(label)
    mask = ChangeFolder(root, "train")[0]["mask"]
    assert mask[0, 0] == 1 and mask[0, 1] == 0

    Image.fromarray(np.tile(np.arange(3, dtype=np.uint8), (cx.H, cx.W // 3))).save(label)  # {0, 1, 2}
    with pytest.raises(
        DataError, match=r"train_1.png: label values \[2\] are outside the class map \[0, 1\]"
    ):
        _all(ChangeFolder(root, "train"))

    flat = _copy(fixtures, "folder-flat-01-gsd", tmp_path)
    label = flat / "label" / "train_1.png"
    values = np.asarray(Image.open(label)).copy()
    values[0, 0] = 2  # 0/1 labels: anything else is an error, not binarised
    Image.fromarray(values).save(label)
    with pytest.raises(
        DataError, match=r"train_1.png: label values \[2\] are outside the class map \[0, 1\]"
    ):
        _all(ChangeFolder(flat, "train"))
    (flat / "changescope.json").write_text(json.dumps({"gsd": 0.5, "labels": "0-255"}))
    assert ChangeFolder(flat, "train").label_coding == "0-255"
    assert not ChangeFolder(flat, "train")[3]["changed"]  # 0/1 read as 0/255: every 1 is below 128

    values[0, 0] = 255
    Image.fromarray(values).save(label)
    (flat / "changescope.json").write_text(json.dumps({"labels": "0-1"}))
    with pytest.raises(DataError, match=r"label values \[255\] are outside the class map \[0, 1\]"):
        _all(ChangeFolder(flat, "train"))


@pytest.mark.parametrize(
    "config, message",
    [
        ({"gsd": -1}, "gsd must be a positive number"),
        ({"gsd": "half"}, "gsd must be a positive number"),
        ({"labels": "0-127"}, "labels must be one of auto, 0-1, 0-255"),
        ({"scale": 2}, r"unknown keys \['scale'\]"),
    ],
)
def test_folder_config_is_checked(fixtures, tmp_path, config, message):
    root = _copy(fixtures, "folder-split", tmp_path)
    (root / "changescope.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=f"changescope.json: {message}"):
        ChangeFolder(root, "train")


def test_folder_several_copies_are_refused(fixtures, tmp_path):
    shutil.copytree(fixtures["folder-split"], tmp_path / "one")
    shutil.copytree(fixtures["folder-split"], tmp_path / "two")
    assert detect_format(tmp_path) == "folder"
    with pytest.raises(DataError, match=r"several change-detection folders \(one, two\)"):
        ChangeFolder(tmp_path, "train")


# SZTAKI ------------------------------------------------------------------------------------------
def test_sztaki_case_insensitive_files_and_benchmark_root(fixtures):
    base = fixtures["sztaki"] / cx.SZTAKI_DIR
    assert detect_format(base) == "sztaki"
    names = {e.id: e for s in SPLITS for e in SztakiAirChange(base, s).entries}
    assert len(names) == 13
    for pair_id, stem in cx.SZTAKI_UPPER:
        index = ("im1", "im2", "gt").index(stem)
        entry = names[pair_id]
        path = (*entry.images, entry.label)[index]
        assert path.name == f"{stem}.BMP" and path.is_file()
    assert Image.open(names[cx.SZTAKI_PALETTE_GT].label).mode == "P"
    assert SztakiAirChange.pairs["Szada/1"] == "test" and SztakiAirChange.pairs["Tiszadob/5"] == "val"


# OSCD --------------------------------------------------------------------------------------------
def test_oscd_dates_rgba_labels_and_tif_fallback(fixtures, tmp_path):
    root = _copy(fixtures, "oscd-train", tmp_path)
    labels = root / "Dataset" / "OSCD" / cx.OSCD_LABELS
    assert Image.open(labels / "pisa" / "cm" / "cm.png").mode == "RGBA"
    ds = OSCD(root, "val")
    pisa = ds[[e.id for e in ds.entries].index("pisa")]
    assert pisa["times"] == [cx.oscd_iso(d) for d in cx.OSCD_TRAIN_CITIES["pisa"][2]]
    assert cx.OSCD_UNLABELLED_CITY not in {e.id for s in SPLITS for e in OSCD(root, s).entries}

    (labels / "pisa" / "cm" / "cm.png").unlink()  # the {1, 2} tif is read instead
    ds = OSCD(root, "val")
    entry = ds.entries[[e.id for e in ds.entries].index("pisa")]
    assert entry.label.name == "pisa-cm.tif"
    assert torch.equal(ds[ds.entries.index(entry)]["mask"], pisa["mask"])

    tif = labels / "pisa" / "cm" / "pisa-cm.tif"
    values = np.asarray(Image.open(tif)).copy()
    values[0, 0] = 0  # the README's 0 / 1 coding is not what the release stores
    Image.fromarray(values).save(tif)
    report = check_dataset(root)
    assert not report.ok and report.errors == [f"{tif}: label values [0] are outside the class map [1, 2]"]


def test_oscd_both_layouts_in_one_root_and_bad_dates(fixtures, tmp_path):
    root = _copy(fixtures, "oscd-train", tmp_path)
    shutil.copytree(fixtures["oscd-test"] / "FCN_version", root / "FCN_version")
    counts = {s: len(OSCD(root, s)) for s in SPLITS}
    assert counts == {"train": 2, "val": 2, "test": len(cx.OSCD_TEST_CITIES)}
    dates = root / cx.OSCD_TEST_HOME / "testing" / "dubai" / "dates.txt"
    dates.write_text("date_1: 2015-12-11\n")
    with pytest.raises(DataError, match="dates.txt: line 1 is not 'date_1: YYYYMMDD'"):
        OSCD(root, "test")


# xBD ---------------------------------------------------------------------------------------------
def test_xbd_change_is_damage_two_or_more(fixtures):
    ds = XBD(fixtures["xbd"], "train")
    entry = ds.entries[1]
    assert entry.images[0].name.endswith("_pre_disaster.png")
    assert entry.images[1].name.endswith("_post_disaster.png") and entry.label.parent.name == "masks"
    stored = np.asarray(Image.open(entry.label))
    assert set(np.unique(stored)) == {0, 1} and ds[1]["changed"] is False  # no damage is no change
    assert set(np.unique(np.asarray(Image.open(ds.entries[0].label)))) >= {0, 1, 3, 4}
    assert XBD.pair_splits["hurricane-harvey_00000007"] == "test"


# Landsat -----------------------------------------------------------------------------------------
def _stretched(scene):
    """The expected image: TM bands 3, 2, 1, one 2-98 % stretch per band over both dates."""
    dates = [cx.landsat_bands(scene, d)[[2, 1, 0]].astype(np.float64) for d in (1, 2)]
    pooled = np.stack(dates)
    out = []
    for date in dates:
        bands = []
        for b in range(3):
            low, high = np.percentile(pooled[:, b], (2, 98))
            bands.append(np.clip(np.rint((date[b] - low) / (high - low) * 255), 0, 255))
        out.append(np.stack(bands))
    return torch.from_numpy(np.stack(out).astype(np.uint8)).float() / 255


def test_landsat_bands_stretch_and_sparse_mask(fixtures):
    root = fixtures["landsat"]
    ds = LandsatSparse(root, "val")
    sample = ds[0]
    assert sample["id"] == "Taizhou" and ds.entries[0].aux[1].name == "2000TM.HDR"
    assert torch.allclose(sample["image"], _stretched("Taizhou"), atol=1.5 / 255)
    assert (sample["mask"] == IGNORE_INDEX).float().mean() > 0.1  # most pixels carry no label
    raw = read_envi(ds.entries[0].images[0])
    assert raw.shape == (6, cx.H, cx.W) and np.array_equal(raw, cx.landsat_bands("Taizhou", 1))
    assert raw.max() < 130  # dark 8-bit data: why the reader stretches


@pytest.mark.parametrize("interleave", ["bil", "bip"])
def test_envi_interleave_and_header_offset(tmp_path, interleave):
    bands = cx.landsat_bands("Taizhou", 1)
    layout = {"bil": (1, 0, 2), "bip": (1, 2, 0)}[interleave]
    path = tmp_path / "scene"
    cx.write_envi(path, bands, interleave=interleave, offset=16)
    # rewrite the payload in the interleaved order (write_envi writes band-sequential bytes)
    path.write_bytes(b"\0" * 16 + np.ascontiguousarray(bands.transpose(layout)).tobytes())
    assert np.array_equal(read_envi(path), bands)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"data_type": 12}, "data type 12 is not supported"),
        ({"interleave": "bsx"}, "interleave 'bsx' is not supported"),
        ({"samples": cx.W + 1}, "file is .* bytes; its header .* needs"),
        ({"bands": "six"}, "'bands' must be an integer"),
    ],
)
def test_envi_header_is_strict(fixtures, tmp_path, edit, message):
    root = _copy(fixtures, "landsat", tmp_path)
    scene = root / "Dataset" / "Landsat" / "Taizhou"
    raster = scene / "2003TM"
    cx.write_envi(raster, cx.landsat_bands("Taizhou", 2), ".HDR", **edit)
    with pytest.raises(DataError) as caught:
        LandsatSparse(root, "val")[0]
    assert "\n" not in str(caught.value)
    assert re.search(message, str(caught.value)) and "2003TM" in str(caught.value)
    report = check_dataset(root)
    assert not report.ok and any("2003TM" in line for line in report.errors)


def test_landsat_labels_are_strict(fixtures, tmp_path):
    root = _copy(fixtures, "landsat", tmp_path)
    scene = root / "Dataset" / "Landsat" / "Nanjing"
    change = np.asarray(Image.open(scene / "change.bmp")).copy()
    unchanged = np.asarray(Image.open(scene / "unchanged.bmp"))
    row, col = np.argwhere(unchanged == 255)[0]
    change[row, col] = 255
    Image.fromarray(change).save(scene / "change.bmp")
    with pytest.raises(
        DataError, match="change.bmp: 1 pixels are marked in both change.bmp and unchanged.bmp"
    ):
        LandsatSparse(root, "train")[0]
    change[row, col] = 128
    Image.fromarray(change).save(scene / "change.bmp")
    with pytest.raises(DataError, match=r"change.bmp: label values \[128\] are outside the class map"):
        LandsatSparse(root, "train")[0]


# triplets ----------------------------------------------------------------------------------------
def test_triplets_grey_replicated_zips_skipped_lossy_gt_thresholded(fixtures):
    sar = SceneTriplets(fixtures["sar-classic"], "test")
    assert [e.id for e in sar.entries] == list(cx.SAR_CLASSIC)  # the two zips add nothing
    assert all(e.label.suffix == ".bmp" for e in sar.entries)
    for sample in _all(sar):
        image = sample["image"]
        assert torch.equal(image[:, 0], image[:, 1]) and torch.equal(image[:, 1], image[:, 2])
    inlpg = SceneTriplets(fixtures["inlpg"], "test")
    by_id = {e.id: (e, s) for e, s in zip(inlpg.entries, _all(inlpg), strict=True)}
    shuguang = by_id["shuguang"][1]["image"]
    assert torch.equal(shuguang[0, 0], shuguang[0, 2]) and not torch.equal(shuguang[1, 0], shuguang[1, 2])
    entry, sample = by_id["beijing_A"]
    stored = np.asarray(Image.open(entry.label))
    assert not set(np.unique(stored)) <= {0, 255}  # lossy JPEG levels
    assert torch.equal(sample["mask"], torch.from_numpy((stored > 127).astype(np.int64)))
    entry, sample = by_id["yellow_C"]
    assert cx.YELLOW_C_STRAY in np.unique(np.asarray(Image.open(entry.label)))
    assert int(sample["mask"][0].sum()) == int(cx.truth("yellow_C", True, cx.INLPG["yellow_C"])[0].sum())


def test_triplets_split_lists_and_unique_names(fixtures, tmp_path):
    root = _copy(fixtures, "sar-classic", tmp_path)
    (root / "list").mkdir()
    (root / "list" / "train.txt").write_text("ottawa\nbern_gt\n")
    (root / "list" / "val.txt").write_text("san")
    assert [e.id for e in SceneTriplets(root, "train").entries] == ["ottawa", "bern"]
    assert [e.id for e in SceneTriplets(root, "val").entries] == ["san"]
    assert len(SceneTriplets(root, "test")) == 0
    (root / "list" / "val.txt").write_text("tokyo")
    with pytest.raises(DataError, match="val.txt: lists 'tokyo', but there is no tokyo_gt image"):
        SceneTriplets(root, "val")
    shutil.rmtree(root / "list")
    shutil.copytree(root / "SAR_Change_Detection_CWNN" / "pic", root / "copy")
    with pytest.raises(DataError, match="pair 'bern' is also at"):
        SceneTriplets(root, "test")


# errors, splits, batching ------------------------------------------------------------------------
def _first_entry(root, fmt):
    cls = open_dataset(root, "train", format=fmt, check_files=False)
    if not len(cls):
        cls = open_dataset(root, "test", format=fmt, check_files=False)
    return cls.split, cls.entries[0]


BREAKABLE = ["folder-split", "sztaki", "oscd-train", "xbd", "landsat", "inlpg"]


@pytest.mark.parametrize("name", BREAKABLE)
def test_missing_file_is_one_line_naming_it(fixtures, tmp_path, name):
    root = _copy(fixtures, name, tmp_path)
    fmt = FIXTURES[name][1]
    split, entry = _first_entry(root, fmt)
    entry.images[1].unlink()
    with pytest.raises(DataError) as caught:
        open_dataset(root, split, format=fmt)
    assert "\n" not in str(caught.value) and entry.images[1].name in str(caught.value)
    assert f"listed for pair '{entry.id}'" in str(caught.value)
    report = check_dataset(root)
    assert report.error_counts == {"missing file": 1} and entry.images[1].name in report.errors[0]


@pytest.mark.parametrize("name", BREAKABLE)
def test_mismatched_sizes_are_one_line_errors(fixtures, tmp_path, name):
    root = _copy(fixtures, name, tmp_path)
    fmt = FIXTURES[name][1]
    split, entry = _first_entry(root, fmt)
    if fmt == "landsat":  # resize the label: the rasters' size is the header's
        culprit = entry.label
        Image.fromarray(np.zeros((cx.H + 6 + 3, cx.W + 4), np.uint8)).save(culprit)
        expected = "label is"
    else:
        culprit = entry.images[1]
        big = np.zeros((30, 31, 3), np.uint8)
        Image.fromarray(big).save(culprit, format=Image.open(entry.images[0]).format)
        expected = "image is 31x30 but"
    with pytest.raises(DataError) as caught:
        ds = open_dataset(root, split, format=fmt)
        ds[[e.id for e in ds.entries].index(entry.id)]
    assert (
        "\n" not in str(caught.value) and culprit.name in str(caught.value) and expected in str(caught.value)
    )
    report = check_dataset(root)
    assert not report.ok and len(report.errors) == 1 and culprit.name in report.errors[0]
    # the broken pair is counted but is neither changed nor unchanged
    stats = report.splits[split]
    assert stats.pairs == stats.changed + stats.unchanged + 1


@pytest.mark.parametrize(
    "name, value, message",
    [
        ("folder-split", 7, r"label values \[7\] are outside the class map \[0, 1\]"),
        ("xbd", 5, r"label values \[5\] are outside the class map \[0, 1, 2, 3, 4\]"),
        ("landsat", 60, r"label values \[60\] are outside the class map \[0, 255\]"),
    ],
)
def test_bad_label_value_is_one_line_error(fixtures, tmp_path, capsys, name, value, message):
    root = _copy(fixtures, name, tmp_path)
    fmt = FIXTURES[name][1]
    _, entry = _first_entry(root, fmt)
    values = np.asarray(Image.open(entry.label)).copy()
    values[0, 0] = value
    if name == "folder-split":
        values[values == 255] = 1  # a 0/1 label with a 7 in it
    Image.fromarray(values).save(entry.label)
    report = check_dataset(root)
    assert not report.ok and report.error_counts == {"label": 1}
    assert entry.label.name in report.errors[0]
    assert re.search(message, report.errors[0])
    assert main(["data", "check", str(root)]) == 1
    assert entry.label.name in capsys.readouterr().out


@pytest.mark.parametrize("name", list(FIXTURES))
def test_unknown_split_is_an_error_and_batches_collate(fixtures, name):
    root, fmt = fixtures[name], FIXTURES[name][1]
    with pytest.raises(DataError, match=r"unknown split 'training'"):
        open_dataset(root, "training", format=fmt)
    samples = [s for split in SPLITS for s in _all(open_dataset(root, split))]
    same = [s for s in samples if s["image"].shape == samples[0]["image"].shape][:2]
    batch = collate(same)
    assert batch["mask"].shape[0] == len(same) and batch["changed"].dtype == torch.bool
    assert batch["captions"] == [[]] * len(same)


def test_format_without_its_layout_is_one_line_error(tmp_path):
    for fmt in ("folder", "sztaki", "oscd", "xbd", "landsat", "triplets"):
        with pytest.raises(DataError) as caught:
            open_dataset(tmp_path, "train", format=fmt)
        assert str(tmp_path) in str(caught.value) and "\n" not in str(caught.value)
        assert caught.value.path == tmp_path


def test_ignore_index_matches_training():
    from changescope.tasks.data import IGNORE_INDEX as TRAINING_IGNORE

    assert IGNORE_INDEX == TRAINING_IGNORE


# the real folders --------------------------------------------------------------------------------
#: folder -> format, pairs per split, changed pixels, labelled pixels (the numbers of each PROVENANCE.md)
REAL = {
    "sztaki-airchange": ("sztaki", (9, 2, 2), 412_766, 8_070_112),
    "oscd-8cities": ("oscd", (6, 2, 0), 132_869, 5_235_985),
    "oscd-test10-labels": ("oscd", (0, 0, 10), 159_077, 3_077_936),
    "landsat-taizhou-nanjing": ("landsat", (1, 1, 0), 4_227 + 2_363, 21_390 + 14_756),
    "xbd-idabd-dahitra": ("xbd", (5, 2, 2), 336_802 + 121_929, 9 * 1024 * 1024),
    "egy-bcd-ncc-samples": ("folder", (4, 3, 2), 220_704, 589_824),
    "sar-classic-summitgao": ("triplets", (0, 0, 4), 16_049 + 1_155 + 4_685 + 12_610, 323_173),
    "sar-heterogeneous-yulisun-inlpg": ("triplets", (0, 0, 8), 79_991, 1_588_276),
}
needs_realdata = pytest.mark.skipif(not REALDATA.is_dir(), reason=f"{REALDATA} is not on this machine")


@needs_realdata
@pytest.mark.parametrize("folder", list(REAL))
def test_real_folder_checks_with_provenance_counts(folder):
    fmt, pairs, changed_pixels, labelled_pixels = REAL[folder]
    root = REALDATA / folder
    assert detect_format(root) == fmt
    report = check_dataset(root)
    assert report.ok and report.format == fmt, report.errors
    assert report.inconsistencies == []
    assert tuple(report.splits[s].pairs for s in SPLITS) == pairs
    total = report.total()
    assert total.changed == total.pairs and total.with_mask == total.pairs  # every real pair has change
    assert (total.changed_pixels, total.labelled_pixels) == (changed_pixels, labelled_pixels)


@needs_realdata
def test_real_pairs_per_provenance():
    def changed(ds, pair_id):
        entry = next(e for e in ds.entries if e.id == pair_id)
        return int((ds.read_mask(entry, ds.image_shape(entry)) == 1).sum())

    sztaki = REALDATA / "sztaki-airchange"
    assert changed(SztakiAirChange(sztaki, "test"), "Tiszadob/3") == 88_449
    assert changed(SztakiAirChange(sztaki, "train"), "Tiszadob/1") == 1_334
    assert changed(SztakiAirChange(sztaki, "train"), "Archieve") == 67_715
    oscd = OSCD(REALDATA / "oscd-8cities", "val")
    assert changed(oscd, "pisa") == 9_130 and changed(oscd, "beirut") == 33_918
    inlpg = SceneTriplets(REALDATA / "sar-heterogeneous-yulisun-inlpg" / "datasets", "test")
    assert changed(inlpg, "beijing_A") == 19_577 and changed(inlpg, "yellow_C") == 4_255
    taizhou = LandsatSparse(REALDATA / "landsat-taizhou-nanjing", "val")
    mask = taizhou.read_mask(taizhou.entries[0], (400, 400))
    assert (int((mask == 1).sum()), int((mask == 0).sum())) == (4_227, 17_163)

    sample = SztakiAirChange(sztaki, "train")[8]
    assert sample["id"] == "Archieve" and sample["image"].shape == (2, 3, 724, 1048) and sample["gsd"] == 1.5
    sample = taizhou[0]
    assert sample["image"].shape == (2, 3, 400, 400) and sample["gsd"] == 30.0
    assert float(sample["image"].std()) > 0.15  # the stretch spreads the dark 8-bit data
    ncc = REALDATA / "egy-bcd-ncc-samples" / "NCC samples"
    assert detect_format(ncc) == "folder" and ChangeFolder(ncc, "test")[0]["gsd"] is None
    sample = OSCD(REALDATA / "oscd-test10-labels", "test")[0]
    assert sample["id"] == "brasilia" and sample["times"] == ["2015-09-16", "2017-10-17"]


@needs_realdata
def test_real_cli_data_check_exits_zero(capsys):
    assert main(["data", "check", str(REALDATA / "sztaki-airchange")]) == 0
    out = capsys.readouterr().out
    assert "(format: sztaki)" in out and "412766" in out and "OK (13 pairs checked)" in out
