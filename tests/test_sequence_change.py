"""Three or more dates with the shipped model: per-interval masks, first-change map, dated caption; read by
its temporal head, and by its pair heads alone (``baseline=True``, the baseline of issue 17)."""

from __future__ import annotations

import numpy as np
import pytest

from changescope.data.synth.sequence import render_sequence
from changescope.errors import ChangescopeError
from changescope.metrics.temporal import interval_scores
from changescope.tasks.inference import load
from changescope.tasks.sequence import detect_sequence, sequence_caption


@pytest.fixture(scope="module")
def default():
    model, processor, _ = load("default")
    return model, processor


def _changed_sequence(dates: int):
    """The first sequence of an unseen seed whose change falls in a later interval, not the first."""
    for index in range(50):
        seq = render_sequence(2027, index, 256, dates)
        if seq.changed_intervals and seq.changed_intervals[0] > 0:
            return seq
    raise AssertionError("no such sequence in 50")


@pytest.mark.parametrize("baseline", [False, True], ids=["temporal", "pairs"])
def test_the_shipped_model_finds_when_and_where(default, baseline):
    seq = _changed_sequence(4)
    found = detect_sequence(*default, list(seq.images), seq.dates, baseline=baseline)
    assert found.method == ("pairs" if baseline else "temporal")
    assert found.interval_masks.shape == seq.interval_masks.shape and found.interval_masks.dtype == np.uint8
    changed = found.interval_masks != 0
    expected = np.where(changed.any(0), changed.argmax(0), -1)
    assert np.array_equal(found.first_change, expected)
    scores = interval_scores(found.interval_masks, seq.interval_masks)
    assert scores["IoU"] > 0.5, scores  # SynthChange is the pair model's home ground
    first = seq.changed_intervals[0]
    truly = seq.first_change == first
    assert (found.first_change[truly] == first).mean() > 0.5
    assert f"between {seq.dates[first]} and {seq.dates[first + 1]}" in found.caption
    assert len(found.results) == 3 and all("caption" in r for r in found.results)


def test_sequence_caption_and_bad_input(default):
    dates = ["2016", "2018", "2020"]
    assert sequence_caption(["a road is built", None], [True, False], dates) == (
        "between 2016 and 2018 a road is built"
    )
    assert sequence_caption([None, None], [False, False], dates) == "there is no change between 2016 and 2020"
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ChangescopeError, match="at least 2"):
        detect_sequence(*default, [image])
    with pytest.raises(ChangescopeError, match="2 dates for 3 images"):
        detect_sequence(*default, [image] * 3, dates[:2])


def test_the_python_api_takes_a_stack_of_files(tmp_path):
    from PIL import Image

    import changescope

    seq = _changed_sequence(3)
    paths = []
    for t, image in enumerate(seq.images):
        paths.append(tmp_path / f"{seq.dates[t]}.png")
        Image.fromarray(image).save(paths[-1])
    found = changescope.load("default").sequence(paths, seq.dates)
    direct = detect_sequence(*load("default")[:2], list(seq.images), seq.dates)
    assert np.array_equal(found.interval_masks, direct.interval_masks) and found.caption == direct.caption
