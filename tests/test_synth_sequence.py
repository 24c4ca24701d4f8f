"""SynthChange sequences: determinism, exact per-interval masks, captions and temporal answers that agree
with the events, and the on-disk round trip."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from changescope.data.synth import sequence as sequence_module
from changescope.data.synth.classes import CHANGE_MASK_CLASS, LABEL_COLORS
from changescope.data.synth.sequence import NEVER, SynthSequence, render_sequence, write_sequences
from changescope.data.synth.writer import split_counts
from changescope.errors import DataError
from changescope.metrics.temporal import first_change_map, temporal_localisation

SIZE = 64


@pytest.fixture(scope="module")
def batch() -> list[SynthSequence]:
    """Forty five-date sequences: enough to see every situation the generator produces."""
    return [render_sequence(4, i, SIZE, 5) for i in range(40)]


def _arrays(seq: SynthSequence) -> list[np.ndarray]:
    return [seq.images, seq.interval_masks, seq.first_change]


def _phrase(seq: SynthSequence, i: int) -> str:
    """Interval i named from the dates alone (not through the generator's helper)."""
    return f"between {seq.dates[i][:4]} and {seq.dates[i + 1][:4]}"


def _nonempty(seq: SynthSequence) -> list[int]:
    return [i for i, m in enumerate(seq.interval_masks) if m.any()]


# ---------------------------------------------------------------------------------------- determinism
def test_same_arguments_give_identical_sequences_and_another_seed_differs():
    a, b = render_sequence(3, 2, SIZE, 5), render_sequence(3, 2, SIZE, 5)
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    assert (a.dates, a.caption, a.captions, a.questions) == (b.dates, b.caption, b.captions, b.questions)
    other = render_sequence(4, 2, SIZE, 5)
    assert other.images.tobytes() != a.images.tobytes()
    assert render_sequence(3, 3, SIZE, 5).images.tobytes() != a.images.tobytes()


def test_sequences_do_not_depend_on_each_other_and_differ_from_pairs():
    from changescope.data.synth import make_pair

    alone = render_sequence(11, 5, SIZE, 4)
    after_others = [render_sequence(11, i, SIZE, 4) for i in range(6)][5]
    assert alone.images.tobytes() == after_others.images.tobytes()
    assert not np.array_equal(alone.images[0], make_pair(11, 5, SIZE).image_a)


# --------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("dates", [2, 3, 8, 16])
def test_shapes_dtypes_and_dates(dates):
    seq = render_sequence(1, dates, SIZE, dates)
    assert seq.images.shape == (dates, SIZE, SIZE, 3) and seq.images.dtype == np.uint8
    assert seq.interval_masks.shape == (dates - 1, SIZE, SIZE) and seq.interval_masks.dtype == np.uint8
    assert seq.first_change.shape == (SIZE, SIZE) and seq.first_change.dtype == np.int16
    assert seq.land_cover.shape == (dates, SIZE, SIZE)
    parsed = [datetime.date.fromisoformat(d) for d in seq.dates]
    assert len(parsed) == dates
    years = [d.year for d in parsed]
    assert years == sorted(set(years)), "one date per year, increasing"
    assert all(0 <= i < dates - 1 for i, _ in seq.events)
    assert len(seq.captions) == 5 and seq.caption == seq.captions[0]


@pytest.mark.parametrize("dates", [1, 17, 2.5, "5"])
def test_dates_out_of_range_are_refused(dates):
    with pytest.raises(ValueError, match="dates must be"):
        render_sequence(0, 0, SIZE, dates)


# ---------------------------------------------------------------------------------------- exact masks
def test_interval_masks_are_exactly_what_changed_between_consecutive_dates(batch):
    for seq in batch:
        for i, mask in enumerate(seq.interval_masks):
            changed = mask != 0
            # land cover differs between the two dates exactly on the interval's mask
            assert np.array_equal(changed, seq.land_cover[i] != seq.land_cover[i + 1]), (seq.index, i)
            # clean renders differ only on the mask and where a cast shadow appeared or vanished
            differs = np.abs(seq.clean[i] - seq.clean[i + 1]).max(axis=0) > 1e-3
            assert not (differs & ~changed & ~(seq.shadows[i] | seq.shadows[i + 1])).any(), (seq.index, i)
            if changed.any():
                assert differs[changed].mean() > 0.98


def test_events_match_non_empty_masks_and_carry_their_class(batch):
    for seq in batch:
        assert sorted({i for i, _ in seq.events}) == _nonempty(seq)
        for i, event in seq.events:
            footprint = event.footprint(SIZE)
            assert footprint.any()
            assert (seq.interval_masks[i][footprint] == CHANGE_MASK_CLASS[event.kind]).all()
        covered = np.zeros((seq.length - 1, SIZE, SIZE), bool)
        for i, event in seq.events:
            covered[i] |= event.footprint(SIZE)
        assert np.array_equal(covered, seq.interval_masks != 0), "masks hold exactly the events' footprints"


def test_first_change_is_the_first_non_empty_interval(batch):
    for seq in batch:
        changed = seq.interval_masks != 0
        assert changed.sum(axis=0).max() <= 1, "footprints never overlap, so a pixel changes once"
        assert np.array_equal(changed.any(axis=0), seq.first_change >= 0)
        for i in range(seq.length - 1):
            assert (seq.first_change[changed[i]] == i).all()
        assert np.array_equal(first_change_map(seq.interval_masks), seq.first_change)
        perfect = temporal_localisation(seq.first_change, seq.first_change)
        assert perfect["false_change"] in (0.0, None)
        assert perfect["exact"] in (1.0, None)


def test_any_two_dates_form_a_pair_whose_mask_is_the_union_of_their_intervals(batch):
    seq = next(s for s in batch if len(_nonempty(s)) >= 2)
    pair = seq.pair(0, seq.length - 1)
    assert np.array_equal(pair.mask, seq.interval_masks.max(axis=0))
    assert np.array_equal(pair.land_cover_a != pair.land_cover_b, pair.mask != 0)
    assert pair.changed and len({e.kind for e in pair.events}) == len(pair.events)
    with pytest.raises(ValueError):
        seq.pair(2, 2)


def test_the_batch_covers_every_situation(batch):
    changed_counts = [len(_nonempty(s)) for s in batch]
    assert 0 in changed_counts and 1 in changed_counts and max(changed_counts) >= 3
    two_in_one = any(len([e for i, e in s.events if i == k]) >= 2 for s in batch for k in range(4))
    staged = any(len([e for _, e in s.events if e.kind == k]) >= 2 for s in batch for k in CHANGE_MASK_CLASS)
    assert two_in_one and staged


def test_houses_along_a_new_road_never_come_before_it():
    found = 0
    for index in range(60):
        seq = render_sequence(8, index, SIZE, 6)
        road = [i for i, e in seq.events if e.kind == "roads_built"]
        along = [i for i, e in seq.events if e.kind == "buildings_built" and e.meta.get("along_new_road")]
        if road and along:
            found += 1
            assert min(along) >= road[0], index
    assert found >= 2


def test_misregistration_without_weather_only_on_unchanged_sequences():
    clean = [render_sequence(4, i, SIZE, 5, weather=False) for i in range(40)]
    shifts = [(bool(s.events), n["shift"]) for s in clean for n in s.nuisance]
    assert all(shift == (0, 0) for changed, shift in shifts if changed)
    moved = [shift for changed, shift in shifts if not changed and shift != (0, 0)]
    assert moved and all(max(abs(v) for v in shift) <= 2 for shift in moved)


def test_weather_is_transient_and_leaves_the_labels_alone(batch):
    clean = [render_sequence(4, i, SIZE, 5, weather=False) for i in range(len(batch))]
    for seq, plain in zip(batch, clean, strict=True):
        # weather draws from its own stream: masks, events, dates and text are those of the clean render
        assert np.array_equal(seq.interval_masks, plain.interval_masks)
        assert seq.dates == plain.dates and seq.captions == plain.captions
        assert seq.nuisance[0]["shift"] == (0, 0)  # the first date is the reference grid
        for t, look in enumerate(seq.nuisance):
            if not (look["clouds"] or look["haze"] or look["shift"] != plain.nuisance[t]["shift"]):
                assert np.array_equal(seq.images[t], plain.images[t]), t
    looks = [n for s in batch for n in s.nuisance]
    assert any(n["clouds"] > 0 for n in looks) and any(n["haze"] > 0 for n in looks)
    moved = [s for s in batch if s.events and any(n["shift"] != (0, 0) for n in s.nuisance)]
    assert moved  # with weather, a changed sequence can have one misregistered date
    assert all(max(abs(v) for n in s.nuisance for v in n["shift"]) <= 3 for s in moved)


def test_clouds_brighten_what_they_cover():
    from changescope.data.synth.weather import add_clouds

    image = np.full((64, 64, 3), 60, np.uint8)
    cloudy, cover = add_clouds(np.random.default_rng(0), image)
    assert 0.02 < cover < 0.6
    assert cloudy.max() > 180 and cloudy.min() <= 60  # bright cloud; ground (or shadow) elsewhere


# ------------------------------------------------------------------------------------------- captions
def test_captions_name_the_dates_of_every_changed_interval(batch):
    for seq in batch:
        changed = _nonempty(seq)
        if not changed:
            assert "no change" in seq.caption
            first, last = seq.dates[0][:4], seq.dates[-1][:4]
            assert all(first in c and last in c for c in seq.captions)
            continue
        assert "no change between" not in seq.caption
        assert [_phrase(seq, i) for i in changed] == re.findall(r"between \d{4} and \d{4}", seq.caption)
        for caption in seq.captions:
            for i in changed:
                assert seq.dates[i][:4] in caption and seq.dates[i + 1][:4] in caption, caption
            for i in set(range(seq.length - 1)) - set(changed):  # an interval named must have changed
                assert _phrase(seq, i) not in caption, caption


# ------------------------------------------------------------------------------------------ questions
def _years(text: str) -> list[str]:
    return re.findall(r"\d{4}", text)


def test_answers_agree_with_the_masks(batch):
    seen = set()
    for seq in batch:
        changed = _nonempty(seq)
        year_index = {d[:4]: t for t, d in enumerate(seq.dates)}
        for q in seq.questions:
            qtype, answer = q["qtype"], q["answer"]
            seen.add((qtype, answer if answer in ("yes", "no", "never") else "interval"))
            if qtype == "count_changes":
                assert answer == str(len(changed))
            elif qtype == "first_change":
                assert answer == (_phrase(seq, changed[0]) if changed else "never")
            elif qtype == "last_change":
                assert answer == (_phrase(seq, changed[-1]) if changed else "never")
            elif qtype == "change_between":
                a, b = (year_index[y] for y in _years(q["question"]))
                assert a < b
                if q["question"].startswith("did anything change"):
                    assert answer == ("yes" if seq.interval_masks[a:b].any() else "no")
                else:
                    kinds = _kind_of(q["question"])
                    hit = any(a <= i < b and e.kind in kinds for i, e in seq.events)
                    assert answer == ("yes" if hit else "no"), q
            elif qtype == "when":
                kinds = _kind_of(q["question"])
                intervals = [i for i, e in seq.events if e.kind in kinds]
                assert answer == (_phrase(seq, min(intervals)) if intervals else "never"), q
            else:
                raise AssertionError(f"unknown qtype {qtype}")
    assert {("change_between", "yes"), ("change_between", "no"), ("when", "never")} <= seen
    assert {("first_change", "interval"), ("first_change", "never")} <= seen


def _kind_of(question: str) -> set[str]:
    """The change type a question asks about, read from its words."""
    if "building" in question:
        return {"buildings_built"} if "built" in question else {"buildings_demolished"}
    if "road" in question:
        return {"roads_built"}
    if "trees" in question:
        return {"trees_cleared"}
    return {"water_dried"} if "dry" in question else {"water_appeared"}


# ------------------------------------------------------------------------------------- files on disk
def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _decode_label(path: Path) -> np.ndarray:
    rgb = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
    out = np.full(rgb.shape[:2], 99, np.uint8)
    for cls, color in LABEL_COLORS.items():
        out[(rgb == color).all(axis=-1)] = cls
    return out


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seq") / "ds"
    assert write_sequences(out, 7, size=SIZE, seed=2, dates=4) == out
    return out


def test_written_files_decode_to_the_rendered_arrays(written):
    rows = [json.loads(line) for line in (written / "sequences.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and len({r["id"] for r in rows}) == 7
    counts = split_counts(7, (0.7, 0.15, 0.15))
    assert {s: sum(r["split"] == s for r in rows) for s in counts} == counts
    for row in rows:
        seq = render_sequence(2, row["index"], SIZE, 4)
        assert row["dates"] == seq.dates and row["caption"] == seq.caption
        assert row["captions"] == seq.captions and row["questions"] == seq.questions
        assert [e["interval"] for e in row["events"]] == [i for i, _ in seq.events]
        assert row["changed_intervals"] == _nonempty(seq)
        assert len(row["images"]) == 4 and len(row["interval_masks"]) == 3
        for t, rel in enumerate(row["images"]):
            assert rel.startswith(f"sequences/{row['split']}/{row['id']}/")
            assert np.array_equal(np.asarray(Image.open(written / rel)), seq.images[t])
        for i, rel in enumerate(row["interval_masks"]):
            assert np.array_equal(_decode_label(written / rel), seq.interval_masks[i])
        first = np.asarray(Image.open(written / row["first_change"])).astype(np.int16)
        first[first == NEVER] = -1
        assert np.array_equal(first, seq.first_change)
    manifest = json.loads((written / "synthchange_sequences.json").read_text())
    assert manifest["format"] == "synthchange_sequences" and manifest["format_version"]
    assert (manifest["seed"], manifest["size"], manifest["dates"], manifest["sequences"]) == (2, SIZE, 4, 7)
    assert sum(c["sequences"] for c in manifest["counts"].values()) == 7


def test_rewriting_gives_identical_files_and_never_overwrites(written, tmp_path):
    again = tmp_path / "again"
    write_sequences(again, 7, size=SIZE, seed=2, dates=4)
    before = _digest(written)
    assert _digest(again) == before and len(before) == 7 * 8 + 2
    with pytest.raises(DataError, match="refusing to overwrite") as err:
        write_sequences(written, 7, size=SIZE, seed=2, dates=4)
    assert "\n" not in str(err.value)
    assert _digest(written) == before
    assert not [p for p in written.parent.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sequences": 0},
        {"sequences": 2, "size": 32},
        {"sequences": 2, "dates": 1},
        {"sequences": 2, "seed": -1},
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs):
    with pytest.raises(ValueError):
        write_sequences(tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_run_leaves_no_output(tmp_path, monkeypatch):
    real = sequence_module.render_sequence

    def failing(seed: int, index: int, size: int, dates: int, weather: bool = True) -> SynthSequence:
        if index == 2:
            raise KeyboardInterrupt
        return real(seed, index, size, dates, weather)

    monkeypatch.setattr(sequence_module, "render_sequence", failing)
    with pytest.raises(KeyboardInterrupt):
        write_sequences(tmp_path / "out", 5, size=SIZE, dates=3)
    assert list(tmp_path.iterdir()) == []


def test_the_synth_command_writes_sequences_with_dates(tmp_path, capsys):
    from changescope.cli import main

    out = tmp_path / "seq"
    code = main(
        [
            "synth",
            "--out",
            str(out),
            "--pairs",
            "10",
            "--size",
            "64",
            "--dates",
            "3",
            "--splits",
            "0.5,0.3,0.2",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "wrote 10 sequences of 3 dates" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "sequences.jsonl").read_text().splitlines()]
    assert len(rows) == 10 and all(len(r["images"]) == 3 and len(r["interval_masks"]) == 2 for r in rows)
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [5, 3, 2]
    manifest = json.loads((out / "synthchange_sequences.json").read_text())
    assert manifest["dates"] == 3 and manifest["split_fractions"] == [0.5, 0.3, 0.2]
    assert main(["synth", "--out", str(out), "--pairs", "2", "--dates", "3"]) == 1  # not empty: refused
    assert "not empty" in capsys.readouterr().err


def test_bad_split_fractions_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="split_fractions"):
        write_sequences(tmp_path / "s", 4, size=64, split_fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="sequences must be a positive integer"):
        write_sequences(tmp_path / "s", 0, size=64)
    assert list(tmp_path.iterdir()) == []
