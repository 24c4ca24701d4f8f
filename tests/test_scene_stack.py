"""`changescope scene` on a stack of 3+ GeoTIFFs: when did it change?

Real GeoTIFFs throughout: SynthChange sequences tiled into a mosaic (``geo.synth_scene.write_synth_stack``,
one date warped into EPSG:4326 so co-registration is exercised) for the shipped model, and the painted
rectangles of tests/data/make_geotiffs.py with a stand-in predictor for the geo layer alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from data import make_geotiffs as mg

rasterio = pytest.importorskip("rasterio", reason="the geo extra is not installed")
pytest.importorskip("pyogrio", reason="the geo extra is not installed")

from changescope.cli import main  # noqa: E402
from changescope.errors import ChangescopeError, DataError  # noqa: E402
from changescope.geo.dates import name_date, stack_dates  # noqa: E402
from changescope.geo.raster import aligned_pair, aligned_stack  # noqa: E402
from changescope.geo.synth_scene import Grid, write_synth_stack  # noqa: E402
from changescope.geo.tiling import run_tiles, write_first_change  # noqa: E402
from changescope.metrics.temporal import first_change_map  # noqa: E402
from changescope.tasks.inference import DEFAULT_MODEL  # noqa: E402

DATES = ("2016-05-01", "2018-05-01", "2020-05-01")


def _read(path: Path):
    with rasterio.open(path) as dataset:
        return dataset.read(), dataset.profile, dataset.tags(), dataset.descriptions


# the geo layer: co-registration, blending per interval, date of change ---------------------------------
def _stack_predictor(images: torch.Tensor) -> torch.Tensor:
    """Stands in for the model: per interval, class 1 where consecutive dates differ a lot."""
    changed = (images[:, 1:] - images[:, :-1]).abs().mean(dim=2) > 0.3
    return torch.stack([~changed, changed], dim=2).float()


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    """Three dates on one grid: rectangle 1 appears in date 2, rectangle 2 in date 3 (1 stays)."""
    folder = tmp_path_factory.mktemp("painted")
    pair = mg.make_pair(folder, change=mg.Change(150, 100, 12, 10))
    third = mg.paint_copy(pair.b, folder / "scene_c.tif", mg.Change(40, 150, 9, 8))
    return pair, [pair.a, pair.b, third]


def test_stack_bands_are_the_pairs_and_date_of_change_their_first(tmp_path, painted):
    pair, dates = painted
    with aligned_stack(dates) as stack:
        assert len(stack) == 3 and stack.window.width == pair.width
        labels = {"descriptions": ["i1", "i2"], "tags": {"DATES": "a,b,c"}}
        run_tiles(stack, _stack_predictor, tmp_path / "changes.tif", 2, 128, 16, **labels)
    bands, profile, found_tags, descriptions = _read(tmp_path / "changes.tif")
    assert profile["count"] == 2 and descriptions == ("i1", "i2") and found_tags["DATES"] == "a,b,c"
    for index in range(2):  # each band is what the pair of its two dates gives on its own
        with aligned_pair(dates[index], dates[index + 1]) as interval:
            pair_probs = lambda images: _stack_predictor(images)[:, 0]  # noqa: E731 - [N, K, h, w]
            run_tiles(interval, pair_probs, tmp_path / f"pair{index}.tif", 2, 128, 16)
        np.testing.assert_array_equal(bands[index], _read(tmp_path / f"pair{index}.tif")[0][0])
    counts = write_first_change(tmp_path / "changes.tif", tmp_path / "when.tif", {"DATES": "a,b,c"})
    when, profile, when_tags, _ = _read(tmp_path / "when.tif")
    assert profile["dtype"] == "uint8" and profile["nodata"] == 255 and when_tags["DATES"] == "a,b,c"
    assert (when[0, 101:109, 151:161] == 1).all() and (when[0, 151:157, 41:48] == 2).all()
    assert counts.tolist() == [int((when == v).sum()) for v in range(3)] and counts[1:].sum() == 120 + 72


def test_first_change_keeps_nodata_and_counts(tmp_path):
    classes = np.zeros((3, 40, 50), np.uint8)
    classes[1, 5:10, 5:10] = 2  # first seen in interval 2
    classes[2, 5:20, 5:20] = 1  # interval 3, where interval 2 did not change
    classes[:, 30:, :] = 255
    mg.write_geotiff(tmp_path / "c.tif", classes, "EPSG:32633", mg.a_grid("EPSG:32633"), nodata=255)
    counts = write_first_change(tmp_path / "c.tif", tmp_path / "w.tif")
    when = _read(tmp_path / "w.tif")[0][0]
    assert (when[30:] == 255).all() and (when[5:10, 5:10] == 2).all() and when[15, 15] == 3
    assert counts.tolist() == [30 * 50 - 15 * 15, 0, 25, 15 * 15 - 25]


def test_dates_that_do_not_all_overlap_are_refused(tmp_path):
    right = mg.make_pair(tmp_path, b_shift=(200, 0), name="right")
    left = mg.make_pair(tmp_path, b_shift=(-200, 0), name="left")
    with pytest.raises(DataError, match="does not overlap the area that right_a.tif, right_b.tif have"):
        aligned_stack([right.a, right.b, left.b])


# dates: --dates, metadata, names --------------------------------------------------------------------
def test_dates_come_from_tags_names_or_the_caller(tmp_path):
    plain = mg.make_pair(tmp_path, name="plain")  # no date tags, no date in the names
    named = [shutil.copy(plain.a, tmp_path / n) for n in ("S2A_20170102T1030.tif", "site_2019-03-04.tif")]
    found = stack_dates(named)
    assert [(d.text, d.source) for d in found] == [("2017-01-02", "file name"), ("2019-03-04", "file name")]
    with rasterio.open(named[1], "r+") as dataset:
        dataset.update_tags(ns="IMAGERY", ACQUISITIONDATETIME="2018-07-08T10:11:12Z")
    assert (
        stack_dates(named)[1].text == "2018-07-08" and stack_dates(named)[1].source == "ACQUISITIONDATETIME"
    )
    given = stack_dates([plain.a, plain.b], ["2015", "20160203"])
    assert [(d.text, d.source) for d in given] == [("2015", "--dates"), ("2016-02-03", "--dates")]
    assert name_date("LC08_L1TP_044034_20200101_20200113_01_T1.tif").text == "2020-01-01"
    assert name_date("tile_1024px_0512.tif") is None
    with pytest.raises(DataError, match="plain_a.tif: has no date .* pass --dates"):
        stack_dates([plain.a, *named])
    with pytest.raises(DataError, match="is dated 2016 .--dates., not after plain_a.tif's 2017"):
        stack_dates([plain.a, plain.b], ["2017", "2016"])
    with pytest.raises(ChangescopeError, match="--dates has 1 dates for 2 files"):
        stack_dates([plain.a, plain.b], ["2017"])
    with pytest.raises(ChangescopeError, match="'2017-13-01' is not a date"):
        stack_dates([plain.a, plain.b], ["2016", "2017-13-01"])


# the shipped model, end to end -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shipped():
    config = DEFAULT_MODEL / "config.json"
    if not config.is_file() or not json.loads(config.read_text()).get("classes"):
        pytest.skip("the shipped model has no change-mask head in this checkout")
    from changescope.tasks.inference import load

    return load("default")


@pytest.fixture(scope="module")
def synth_stack(tmp_path_factory):
    """512 px, three dates tagged with TIFFTAG_DATETIME; date 2 warped into EPSG:4326."""
    folder = tmp_path_factory.mktemp("stack")
    return write_synth_stack(folder, DATES, Grid(size=512), seed=1, reproject={1: "EPSG:4326"})


@pytest.fixture(scope="module")
def mapped(tmp_path_factory, shipped, synth_stack):
    from changescope.tasks.scene import SceneOptions, run_scene_stack

    out = tmp_path_factory.mktemp("mapped") / "out"
    options = SceneOptions(max_captions=2)
    summary = run_scene_stack(synth_stack["dates"], out, shipped, options, progress=False)
    return out, summary


def test_stack_outputs_lie_on_the_first_dates_grid(mapped, synth_stack):
    out, summary = mapped
    assert (
        sorted(p.name for p in out.iterdir())
        == sorted(summary["outputs"])
        == [
            "changes.geojson",
            "changes.tif",
            "date_of_change.tif",
            "report.html",
            "summary.json",
        ]
    )
    with rasterio.open(synth_stack["dates"][0]) as first, rasterio.open(synth_stack["dates"][1]) as second:
        grid = (first.crs, first.transform, first.shape)
        assert second.crs == "EPSG:4326"  # co-registered from another CRS
    intervals = ("2016-05-01/2018-05-01", "2018-05-01/2020-05-01")
    for name, count in (("changes.tif", 2), ("date_of_change.tif", 1)):
        with rasterio.open(out / name) as dataset:
            assert (dataset.crs, dataset.transform, dataset.shape) == grid
            assert dataset.count == count and dataset.dtypes[0] == "uint8" and dataset.nodata == 255
            tags = dataset.tags()
            assert tags["DATES"] == ",".join(DATES)
            assert (tags["INTERVAL_1"], tags["INTERVAL_2"]) == intervals
    with rasterio.open(out / "changes.tif") as dataset:
        assert dataset.descriptions == tuple(f"interval {i}: {n}" for i, n in enumerate(intervals, 1))
    assert "first change in interval i" in _read(out / "date_of_change.tif")[2]["VALUES"]


def test_date_of_change_is_the_first_changed_interval_and_finds_the_truth(mapped, synth_stack):
    out, summary = mapped
    changes, when = _read(out / "changes.tif")[0], _read(out / "date_of_change.tif")[0][0]
    valid = when != 255
    assert set(np.unique(when)) <= {0, 1, 2, 255}
    assert valid.mean() > 0.98  # measured 1.0: the date warped into EPSG:4326 covers the first one
    assert ((changes == 255).any(axis=0) == ~valid).all()
    expected = first_change_map(changes, ignore_index=255) + 1
    np.testing.assert_array_equal(when[valid], expected[valid])
    truth = _read(synth_stack["first_change"])[0][0]
    changed = valid & (truth > 0)
    # measured 0.94 of the truly changed pixels dated to their interval (the model also over-predicts)
    assert (when[changed] == truth[changed]).mean() > 0.8
    pixels = summary["date_of_change"]["pixels"]
    assert [pixels[str(v)] for v in range(3)] == [int((when == v).sum()) for v in range(3)]
    assert summary["date_of_change"]["intervals"] == {
        "1": "2016-05-01/2018-05-01",
        "2": "2018-05-01/2020-05-01",
    }


def test_stack_polygons_and_summary_name_their_interval(mapped, synth_stack):
    out, summary = mapped
    features = json.loads((out / "changes.geojson").read_text())["features"]
    assert len(features) == summary["regions_total"] > 0
    for feature in features:
        props = feature["properties"]
        interval = props["interval"]
        assert (props["date_from"], props["date_to"]) == (DATES[interval - 1], DATES[interval])
        assert props["area_m2"] == pytest.approx(props["pixels"] * 0.25, rel=1e-6)  # 0.5 m UTM pixels
        assert props["class"] in ("road", "building", "tree", "water")
    assert [d["source"] for d in summary["dates"]] == ["TIFFTAG_DATETIME"] * 3
    assert [d["date"] for d in summary["dates"]] == list(DATES)
    assert summary["files"] == [str(p) for p in synth_stack["dates"]]
    assert summary["crs"] == "EPSG:32633" and summary["stretch"]["rule"].startswith("identity")
    for row in summary["intervals"]:
        mine = [f["properties"] for f in features if f["properties"]["interval"] == row["interval"]]
        assert row["regions_total"] == len(mine) and row["file_to"] == str(
            synth_stack["dates"][row["interval"]]
        )
        assert row["changed_area_m2"] == pytest.approx(sum(p["area_m2"] for p in mine), abs=0.1)
        assert row["regions_captioned"] == sum(bool(p["caption"]) for p in mine) == min(2, len(mine))
        for name, totals in row["classes"].items():
            assert totals["regions"] == sum(p["class"] == name for p in mine)
    assert summary == json.loads((out / "summary.json").read_text())
    report = (out / "report.html").read_text()
    assert report.count("<img") == 3 and "Timeline" in report and "2018-05-01 to 2020-05-01" in report


# the command and the Python API --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
    """256 px, three dates without date tags and without dates in their names."""
    folder = tmp_path_factory.mktemp("small")
    return write_synth_stack(folder, DATES, Grid(size=256), seed=2, tag_dates=False)["dates"]


def test_cli_stack_prints_a_line_per_interval(tmp_path, capsys, shipped, small_stack):
    out = tmp_path / "out"
    args = ["scene", *map(str, small_stack), "--out", str(out), "--dates", "2016,2018-06-01,20200101"]
    assert main([*args, "--max-captions", "0"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3].split()[:4] == ["1", "2016", "->", "2018-06-01"]
    assert printed[-2].split()[:4] == ["2", "2018-06-01", "->", "2020-01-01"]
    assert "over 2 intervals" in printed[-1] and "date_of_change.tif" in printed[-1]
    summary = json.loads((out / "summary.json").read_text())
    assert [d["source"] for d in summary["dates"]] == ["--dates"] * 3


def test_api_scene_takes_a_stack(tmp_path, shipped, small_stack):
    from changescope.api import ChangePipeline

    pipe = ChangePipeline(*shipped)
    summary = pipe.scene(*small_stack, out=tmp_path / "out", dates=list(DATES), max_captions=0)
    assert len(summary["intervals"]) == 2 and summary["regions_captioned"] == 0
    with pytest.raises(ChangescopeError, match="2 or more rasters"):
        pipe.scene(small_stack[0], tmp_path / "other")


@pytest.mark.parametrize(
    "how, fragment",
    [
        ("no-dates", "t0.tif: has no date in its metadata"),
        ("dates-count", "--dates has 2 dates for 3 files"),
        ("dates-type", "'May' is not a date"),
        ("dates-order", "not after t0.tif's 2018"),
        ("one-file", "give 2 or more files"),
        ("not-geotiff", "notes_2019.tif: cannot be read as a raster"),
        ("not-geotiff-undated", "notes_2019.tif: cannot be read as a raster"),
    ],
)
def test_stack_refusals_are_one_line_and_leave_nothing(tmp_path, capsys, small_stack, how, fragment):
    text = tmp_path / "notes_2019.tif"
    text.write_text("not a raster\n")
    files = [str(p) for p in small_stack]
    argv = {
        "no-dates": files,
        "dates-count": [*files, "--dates", "2016,2018"],
        "dates-type": [*files, "--dates", "2016,May,2020"],
        "dates-order": [*files, "--dates", "2018,2017,2020"],
        "one-file": files[:1],
        "not-geotiff": [*files[:2], str(text), "--dates", "2016,2017,2018"],
        "not-geotiff-undated": [str(text), *files[1:]],
    }[how]
    out = tmp_path / "out"
    code = main(["scene", *argv, "--out", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["notes_2019.tif"]
