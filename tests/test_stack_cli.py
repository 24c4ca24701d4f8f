"""`describe` / `detect` / `ask` on three or more dates of one place, through the command line.

The stack is a SynthChange sequence of a seed no model saw, written as PNG files named by year and passed
in shuffled order: the commands must sort the dates, map each interval and answer when it changed. The
commands run in this process (``cli.main``); tests/test_cli.py runs the same entry point as a subprocess.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from changescope.cli import main
from changescope.data.synth.sequence import render_sequence
from changescope.errors import ChangescopeError, DataError
from changescope.geo.dates import image_dates
from changescope.metrics.temporal import interval_scores


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """(the sequence, its files oldest first) for the first sequence whose change starts after date 1."""
    for index in range(50):
        seq = render_sequence(2027, index, 256, 4)
        if seq.changed_intervals and seq.changed_intervals[0] > 0:
            break
    folder = tmp_path_factory.mktemp("stack")
    files = []
    for image, date in zip(seq.images, seq.dates, strict=True):
        files.append(folder / f"site_{date[:4]}.png")
        Image.fromarray(image).save(files[-1])
    return seq, files


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_detect_sorts_the_dates_and_maps_each_interval(stack, tmp_path, capsys):
    seq, files = stack
    shuffled = [files[2], files[0], files[3], files[1]]
    out = tmp_path / "when"
    _run(["detect", *shuffled, "--out", out], capsys)
    names = sorted(p.name for p in out.iterdir())
    intervals = [f"interval_{i}.png" for i in (1, 2, 3)]
    assert names == ["date_of_change.png", *intervals, "overlay.png", "result.json"]
    result = json.loads((out / "result.json").read_text())
    years = [d[:4] for d in seq.dates]
    assert result["dates"] == years and result["files"] == [str(f) for f in files]
    assert result["method"] == "temporal"  # the shipped model has a temporal head
    assert [(r["from"], r["to"]) for r in result["intervals"]] == list(zip(years, years[1:], strict=False))
    masks = np.stack([np.array(Image.open(out / f"interval_{i}.png")) for i in (1, 2, 3)])
    assert interval_scores(masks, seq.interval_masks)["IoU"] > 0.5
    when = np.array(Image.open(out / "date_of_change.png"))
    changed = masks != 0
    assert np.array_equal(when, np.where(changed.any(0), changed.argmax(0) + 1, 0))
    counts = result["date_of_change"]["first_changed_pixels"]
    assert counts == [int((when == i + 1).sum()) for i in range(3)]
    first = seq.changed_intervals[0]
    assert np.argmax(counts) == first or counts[first] > 0


def test_describe_and_ask_answer_when(stack, capsys):
    seq, files = stack
    years = [d[:4] for d in seq.dates]
    first = seq.changed_intervals[0]
    said = _run(["describe", *reversed(files)], capsys).strip()
    assert f"between {years[first]} and {years[first + 1]}" in said
    reply = json.loads(_run(["ask", *files, "when did the scene first change?", "--json"], capsys))
    assert reply["type"] == "first_change" and reply["intervals"] == [first]
    assert reply["answer"] == f"between {years[first]} and {years[first + 1]}"
    count = json.loads(_run(["ask", *files, "how many times did it change?", "--json"], capsys))
    assert count["answer"] == str(len(count["intervals"])) and first in count["intervals"]
    other = json.loads(_run(["ask", *files, "what changed?", "--json"], capsys))
    assert other["source"] == f"the pair {years[0]} -> {years[-1]}"


def test_dates_come_from_the_option_the_tags_or_the_names(stack, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    _, files = stack
    order, dates = image_dates(files[::-1])
    assert order == [3, 2, 1, 0] and [d.source for d in dates] == ["file name"] * 4
    order, dates = image_dates(files, ["2020", "2016-05-01", "20180101", "2022"])
    assert order == [1, 2, 0, 3] and [d.text for d in dates] == ["2016-05-01", "2018-01-01", "2020", "2022"]
    undated = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(undated)
    assert image_dates([undated, undated, undated]) == ([0, 1, 2], None)  # kept as given: date 1, 2, 3
    with pytest.raises(DataError, match="no date in its metadata or name"):
        image_dates([files[0], undated, files[1]])
    tagged = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 3, "dtype": "uint8"}
    with rasterio.open(tagged, "w", **profile) as dst:
        dst.write(np.zeros((3, 8, 8), np.uint8))
        dst.update_tags(ACQUISITIONDATETIME="2017-03-04T10:00:00Z")
    order, dates = image_dates([files[1], tagged, files[0]])
    assert [d.key for d in dates] == sorted(d.key for d in dates)
    read = dates[order.index(1)]
    assert (read.text, read.source) == ("2017-03-04", "ACQUISITIONDATETIME")
    with pytest.raises(ChangescopeError, match="not a date"):
        image_dates(files[:3], ["2016", "soon", "2020"])
