"""SynthChange sequences: T co-registered dates of one scene, with change events at known intervals.

A sequence is planned like a pair (``scene._plan``: layout, change events, objects both dates share)
and then scheduled: every event is given an interval ``i`` (between date ``i`` and date ``i + 1``),
some multi-object events are split into pieces that happen in different intervals (a street built up
in two stages, a wood cleared twice), and buildings put up along a new road never come before the road.
Date ``t`` shows every event whose interval is ``< t`` as "after" and the others as "before", so the
objects of an interval's events are the only footprints that differ between its two dates. Footprints
never overlap (the occupancy raster of the layout), so the per-interval masks are exact and every pixel
changes at most once.

Draws: pixels and dates from ``np.random.default_rng([seed, index, SEQUENCE_STREAM])``, text (captions,
questions) from ``[seed, index, SEQUENCE_STREAM, 1]``; pairs use ``[seed, index]`` and
``[seed, index, 1]``, so sequence ``i`` and pair ``i`` of one seed are unrelated scenes. The same
``(seed, index, size, dates)`` gives byte-identical arrays and text.

Nuisance, as for pairs: every date has its own illumination; dates after the first get an
illumination and season change relative to the first (each drawn afresh, so appearance varies around
the first date instead of drifting away from it). Sequences without any change have each later date
misregistered by 1-2 px with probability 1/2; sequences with change are never shifted by this step.
Then, unless ``weather=False``, transient nuisance from ``weather.py`` on its own stream
``[seed, index, SEQUENCE_STREAM, 2]``: clouds with shadows (a date in four), haze, and with probability
0.35 one later date misregistered by 1-3 px (change or not: its masks stay on the ground grid, so they
are exact to within that shift at object edges). None of it is change.

On-disk layout written by :func:`write_sequences` (docs/SYNTHCHANGE.md, "Sequences")::

    out/
      sequences/<split>/<split>_NNNNNN/
        t00.png ... t<T-1>.png                   RGB dates, oldest first
        interval_00.png ... interval_<T-2>.png   change between date i and i + 1, RGB label colours
        first_change.png                         8-bit grey: first interval that changed, 255 = never
      sequences.jsonl                            one row per sequence (ids, dates, paths, text, events)
      synthchange_sequences.json                 manifest: format version, arguments, counts

``first_change.png`` is an 8-bit PNG, not uint16 or ``.npy``: there are at most 15 intervals, so
every value fits a byte, and the project's encoder (``png.py``) writes 8-bit images only.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from changescope.data.synth.captions import captions as pair_captions
from changescope.data.synth.captions import event_cell
from changescope.data.synth.classes import CHANGE_MASK_CLASS, CHANGE_TYPES, LABEL_COLORS, MASK_CLASSES
from changescope.data.synth.noise import noise_bank
from changescope.data.synth.objects import Context, Painted
from changescope.data.synth.png import PHOTO, encode_png
from changescope.data.synth.sampling import pick
from changescope.data.synth.scene import (
    KIND_WEIGHTS,
    Event,
    SynthPair,
    _Layout,
    _look,
    _nuisance,
    _plan,
    apply_look,
    change_mask,
    render_pair,
    shift,
)
from changescope.data.synth.terrain import ground
from changescope.data.synth.weather import apply_weather
from changescope.data.synth.writer import (
    GENERATOR_VERSION,
    SPLITS,
    assign_splits,
    check_arguments,
    label_rgb,
    publish,
)

#: third seed word of a sequence's RNG: keeps sequence streams apart from the pairs' ``[seed, index]``
SEQUENCE_STREAM = 0x5E9
FORMAT_VERSION = "1.1"  # 1.1: clouds, haze and a misregistered date ("weather")
MIN_DATES, MAX_DATES = 2, 16
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
#: first_change.png value of a pixel that never changed
NEVER = 255
#: how many change types a sequence plans (0 = a sequence without change)
_KIND_COUNTS, _KIND_COUNT_P = (0, 1, 2, 3, 4), (0.15, 0.3, 0.3, 0.17, 0.08)
SPLIT_PROBABILITY = 0.4  # a multi-object event happens in stages
TEMPORAL_QTYPES = ("count_changes", "first_change", "last_change", "when", "change_between")


# ------------------------------------------------------------------------------------------ sequence
@dataclass(eq=False)
class SynthSequence:
    """A rendered sequence with everything its labels, captions and questions are derived from."""

    seed: int
    index: int
    size: int
    dates: list[str]  # ISO dates, one year each, increasing
    images: np.ndarray  # uint8 [T, S, S, 3]
    interval_masks: np.ndarray  # uint8 [T-1, S, S], classes.MASK_CLASSES ids, 0 = no change
    first_change: np.ndarray  # int16 [S, S], first interval a pixel changed in, -1 = never
    events: list[tuple[int, Event]]  # (interval, event), sorted by interval
    land_cover: np.ndarray  # uint8 [T, S, S], classes.LAND_COVER ids
    clean: np.ndarray  # float32 planar [T, 3, S, S] renders before illumination / season / shift
    shadows: np.ndarray  # bool [T, S, S] cast shadows of each date
    shared: list[Painted]  # objects every date shows
    nuisance: list[dict]  # per date: season name, (dy, dx) shift, whether a brightness ramp was used
    caption: str = ""
    captions: list[str] = field(default_factory=list)
    questions: list[dict[str, str]] = field(default_factory=list)

    @property
    def length(self) -> int:
        """T, the number of dates."""
        return len(self.dates)

    @property
    def changed_intervals(self) -> list[int]:
        """Intervals with at least one event, in order."""
        return sorted({i for i, _ in self.events})

    def year(self, t: int) -> str:
        return self.dates[t][:4]

    def interval_phrase(self, i: int) -> str:
        """How captions and answers name interval ``i``: "between 2016 and 2018"."""
        return f"between {self.year(i)} and {self.year(i + 1)}"

    def objects_at(self, t: int) -> list[Painted]:
        """What date ``t`` shows besides the shared objects: events before it as after, others as before."""
        return _objects_at(self.events, t)

    def pair(self, i: int, j: int) -> SynthPair:
        """Dates ``i < j`` as a :class:`SynthPair`: the events of intervals ``i .. j-1`` (one per change
        type, pieces of a staged event merged), their mask, both land-cover maps and renders. The pair
        captioner and question generator work on it unchanged."""
        if not 0 <= i < j < self.length:
            raise ValueError(f"need 0 <= i < j < {self.length}, got i={i}, j={j}")
        events = _merge_by_kind([e for k, e in self.events if i <= k < j])
        dy = self.nuisance[j]["shift"][0] - self.nuisance[i]["shift"][0]
        dx = self.nuisance[j]["shift"][1] - self.nuisance[i]["shift"][1]
        return SynthPair(
            seed=self.seed,
            index=self.index,
            size=self.size,
            changed=bool(events),
            image_a=self.images[i],
            image_b=self.images[j],
            mask=change_mask(events, self.size),
            land_cover_a=self.land_cover[i],
            land_cover_b=self.land_cover[j],
            objects_a=self.shared + self.objects_at(i),
            objects_b=self.shared + self.objects_at(j),
            events=events,
            clean_a=self.clean[i],
            clean_b=self.clean[j],
            shadow_a=self.shadows[i],
            shadow_b=self.shadows[j],
            nuisance={**self.nuisance[j], "shift": (dy, dx)},
        )


def _objects_at(events: list[tuple[int, Event]], t: int) -> list[Painted]:
    """The event objects date ``t`` shows: what events before it added (and the scars of what they
    removed), and what later events will remove."""
    return [o for i, e in events for o in (e.added + e.scars if i < t else e.removed)]


def _merge_by_kind(events: list[Event]) -> list[Event]:
    """One event per change type (in ``CHANGE_TYPES`` order), as a pair has."""
    merged: dict[str, Event] = {}
    for e in events:
        if e.kind not in merged:
            merged[e.kind] = e
            continue
        first = merged[e.kind]
        merged[e.kind] = Event(
            e.kind, first.removed + e.removed, first.added + e.added, first.scars + e.scars, dict(first.meta)
        )
    return [merged[k] for k in CHANGE_TYPES if k in merged]


# ------------------------------------------------------------------------------------------ planning
def _draw_dates(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` acquisition dates in distinct, increasing years: yearly or biennial on a fixed day, or
    irregular gaps of 1-3 years on varying days of the leaf-on season (April to October)."""
    regular = rng.random() < 0.5
    if regular:
        gaps = np.full(count - 1, pick(rng, [1, 1, 2]))
        days = [(int(rng.integers(4, 11)), int(rng.integers(1, 29)))] * count
    else:
        gaps = rng.integers(1, 4, size=count - 1)
        days = [
            (int(m), int(d))
            for m, d in zip(rng.integers(4, 11, count), rng.integers(1, 29, count), strict=True)
        ]
    last = int(rng.integers(2016, 2025))
    years = last - int(gaps.sum()) + np.concatenate([[0], np.cumsum(gaps)])
    return [f"{int(y):04d}-{m:02d}-{d:02d}" for y, (m, d) in zip(years, days, strict=True)]


def _choose_kinds(rng: np.random.Generator) -> list[str]:
    """Change types a sequence plans; none for about one sequence in seven."""
    n = int(rng.choice(_KIND_COUNTS, p=_KIND_COUNT_P))
    picked = rng.choice(len(CHANGE_TYPES), size=n, replace=False, p=KIND_WEIGHTS / KIND_WEIGHTS.sum())
    return [CHANGE_TYPES[i] for i in sorted(picked)]


def _split(event: Event, pieces: int, rng: np.random.Generator) -> list[Event]:
    """Cut an event's objects (in placement order, so a street is built up stretch by stretch) into
    ``pieces`` non-empty runs; a removed object keeps its scar."""
    n = len(event.objects)
    cuts = np.sort(rng.choice(np.arange(1, n), size=pieces - 1, replace=False)).tolist()
    bounds = [0, *cuts, n]
    return [
        Event(event.kind, event.removed[a:b], event.added[a:b], event.scars[a:b], dict(event.meta))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _schedule(events: list[Event], intervals: int, rng: np.random.Generator) -> list[tuple[int, Event]]:
    """Give each event (or each piece of a staged one) its interval; pieces of one event go to different
    intervals, and houses put up along a new road come in the road's interval or later."""
    road = next((e for e in events if e.kind == "roads_built"), None)
    road_at = int(rng.integers(intervals)) if road is not None else 0
    out: list[tuple[int, Event]] = []
    for event in events:
        if event is road:
            out.append((road_at, event))
            continue
        # an event either adds or removes objects (scene._plan), so its objects split cleanly
        assert not (event.added and event.removed), event.kind
        low = road_at if event.meta.get("along_new_road") and road is not None else 0
        room = intervals - low
        pieces = 1
        if len(event.objects) >= 2 and room >= 2 and rng.random() < SPLIT_PROBABILITY:
            pieces = min(len(event.objects), room, pick(rng, [2, 2, 3]))
        slots = (np.sort(rng.choice(room, size=pieces, replace=False)) + low).tolist()
        parts = _split(event, pieces, rng) if pieces > 1 else [event]
        out += list(zip(slots, parts, strict=True))
    out.sort(key=lambda item: (item[0], CHANGE_TYPES.index(item[1].kind)))
    return out


def _check_dates(dates: Any) -> int:
    if not isinstance(dates, Integral) or not MIN_DATES <= dates <= MAX_DATES:
        raise ValueError(f"dates must be an integer from {MIN_DATES} to {MAX_DATES}, got {dates!r}")
    return int(dates)


# ----------------------------------------------------------------------------------------- rendering
def render_sequence(
    seed: int, index: int, size: int = 256, dates: int = 5, weather: bool = True
) -> SynthSequence:
    """Sequence ``index`` of ``seed``: ``dates`` renders of one scene, per-interval masks, text.
    ``weather`` adds transient clouds, haze and one misregistered date (``weather.py``), drawn from their
    own stream so that everything else is the same with or without it."""
    count = _check_dates(dates)
    rng = np.random.default_rng([seed, index, SEQUENCE_STREAM])
    tex = noise_bank(seed, size).crops(rng)
    date_strings = _draw_dates(rng, count)
    kinds = _choose_kinds(rng)
    azimuth = rng.uniform(0, 2 * np.pi)
    ctx = Context(size, tex, np.zeros((size, size), bool), (float(np.sin(azimuth)), float(np.cos(azimuth))))
    ground_rgb, ground_lc = ground(rng, tex, size)
    planned, shared = _plan(_Layout(ctx, rng), kinds)
    events = _schedule(planned, count - 1, rng)
    own = tuple(_objects_at(events, t) for t in range(count))
    renders = render_pair(ground_rgb, ground_lc, shared, own)
    images, nuisance = _apply_nuisance(rng, renders, bool(events))
    if weather:
        images, transient = apply_weather(np.random.default_rng([seed, index, SEQUENCE_STREAM, 2]), images)
        for look, extra in zip(nuisance, transient, strict=True):
            look.update(clouds=extra["clouds"], haze=extra["haze"])
            look["shift"] = tuple(a + b for a, b in zip(look["shift"], extra["shift"], strict=True))
    masks = np.stack([change_mask([e for i, e in events if i == k], size) for k in range(count - 1)])
    changed = masks != 0
    sequence = SynthSequence(
        seed=seed,
        index=index,
        size=size,
        dates=date_strings,
        images=images,
        interval_masks=masks,
        first_change=np.where(changed.any(axis=0), changed.argmax(axis=0), -1).astype(np.int16),
        events=events,
        land_cover=np.stack([lc for _, lc, _ in renders]),
        clean=np.stack([rgb for rgb, _, _ in renders]),
        shadows=np.stack([sh for _, _, sh in renders]),
        shared=shared,
        nuisance=nuisance,
    )
    _add_text(sequence, np.random.default_rng([seed, index, SEQUENCE_STREAM, 1]))
    return sequence


def _apply_nuisance(
    rng: np.random.Generator, renders: list[tuple[np.ndarray, np.ndarray, np.ndarray]], changed: bool
) -> tuple[np.ndarray, list[dict]]:
    """Per-date looks (later dates vary around the first one) and, without change, misregistration."""
    first = _look(rng)
    looks = [first] + [_nuisance(rng, first) for _ in renders[1:]]
    images, info = [], []
    for t, ((rgb, lc, _), look) in enumerate(zip(renders, looks, strict=True)):
        image = apply_look(rgb, lc, look)
        offset = (0, 0)
        if t > 0 and not changed and rng.random() < 0.5:
            while offset == (0, 0):
                offset = tuple(int(v) for v in rng.integers(-2, 3, size=2))
            image = shift(image, *offset)
        images.append(image)
        season = look.get("season_name", "same")
        info.append({"season": season, "shift": offset, "ramp": bool(any(look["ramp"]))})
    return np.stack(images), info


# -------------------------------------------------------------------------------------------- text
_WHEN = ("between {a} and {b}", "from {a} to {b}", "between the {a} and {b} images")
_NO_CHANGE = (
    "there is no change between {a} and {b}",
    "nothing changes from {a} to {b}",
    "the scene stays the same from {a} to {b}",
    "no change is seen between the {a} and {b} images",
    "the scene is unchanged from {a} to {b}",
)


def _add_text(sequence: SynthSequence, rng: np.random.Generator) -> None:
    sequence.captions = _sequence_captions(sequence, rng)
    sequence.caption = sequence.captions[0]
    sequence.questions = _questions(sequence, rng)


def _sequence_captions(seq: SynthSequence, rng: np.random.Generator, count: int = 5) -> list[str]:
    """``count`` captions; the first names each changed interval "between A and B" and tells its
    changes with the pair captioner; the others vary the wording of the dates and sometimes say when
    nothing changed. A sequence without change gets five no-change sentences naming its time span."""
    changed = seq.changed_intervals
    if not changed:
        a, b = seq.year(0), seq.year(seq.length - 1)
        return [t.format(a=a, b=b) for t in _NO_CHANGE][:count]
    texts = {i: pair_captions(seq.pair(i, i + 1), rng, count) for i in changed}
    out = []
    for k in range(count):
        when = _WHEN[0] if k == 0 else pick(rng, _WHEN)
        parts = [f"{when.format(a=seq.year(i), b=seq.year(i + 1))} {texts[i][k]}" for i in changed]
        if k > 0 and changed[0] > 0 and rng.random() < 0.5:
            parts.insert(0, f"no change until {seq.year(changed[0])}")
        if k > 0 and changed[-1] < seq.length - 2 and rng.random() < 0.5:
            parts.append(f"no change after {seq.year(changed[-1] + 1)}")
        out.append("; ".join(parts))
    return out


#: change type -> (when did it happen, when did it first happen, did it happen between {a} and {b})
_KIND_QUESTIONS = {
    "buildings_built": (
        "when were buildings built?",
        "when were the first buildings built?",
        "were buildings built between {a} and {b}?",
    ),
    "buildings_demolished": (
        "when were buildings demolished?",
        "when were buildings first demolished?",
        "were buildings demolished between {a} and {b}?",
    ),
    "roads_built": (
        "when was the road built?",
        "when was the road built?",
        "was a road built between {a} and {b}?",
    ),
    "trees_cleared": (
        "when were the trees cut down?",
        "when were trees first cut down?",
        "were trees cut down between {a} and {b}?",
    ),
    "water_appeared": (
        "when did the pond appear?",
        "when did the pond appear?",
        "did a pond appear between {a} and {b}?",
    ),
    "water_dried": (
        "when did the pond dry up?",
        "when did the pond dry up?",
        "did a pond dry up between {a} and {b}?",
    ),
}


_GENERAL_QUESTIONS = {
    "count_changes": ("how many times did the scene change?", "in how many intervals did something change?"),
    "first_change": ("when did the scene first change?", "when was the first change?"),
    "last_change": ("when did the scene last change?", "when was the last change?"),
}
NEVER_ANSWER = "never"


def _questions(seq: SynthSequence, rng: np.random.Generator) -> list[dict[str, str]]:
    """Temporal questions (``TEMPORAL_QTYPES``). Interval answers read "between 2016 and 2018" (the
    dates on either side of the interval), "never" when it did not happen; counts are digits."""
    changed = seq.changed_intervals
    by_kind: dict[str, list[int]] = {}
    for i, e in seq.events:
        by_kind.setdefault(e.kind, []).append(i)
    first = seq.interval_phrase(changed[0]) if changed else NEVER_ANSWER
    last = seq.interval_phrase(changed[-1]) if changed else NEVER_ANSWER
    out = [
        ("count_changes", pick(rng, _GENERAL_QUESTIONS["count_changes"]), str(len(changed))),
        ("first_change", pick(rng, _GENERAL_QUESTIONS["first_change"]), first),
        ("last_change", pick(rng, _GENERAL_QUESTIONS["last_change"]), last),
    ]
    for kind, intervals in by_kind.items():
        wording = _KIND_QUESTIONS[kind][0 if len(intervals) == 1 else 1]
        out.append(("when", wording, seq.interval_phrase(intervals[0])))
    absent = [k for k in CHANGE_TYPES if k not in by_kind]
    if absent and rng.random() < 0.5:
        out.append(("when", _KIND_QUESTIONS[pick(rng, absent)][0], NEVER_ANSWER))
    a, b = sorted(rng.choice(seq.length, size=2, replace=False).tolist())
    span = {"a": seq.year(a), "b": seq.year(b)}
    any_change = any(a <= i < b for i in changed)
    out.append(
        ("change_between", "did anything change between {a} and {b}?".format(**span), _yes(any_change))
    )
    kind = pick(rng, list(by_kind)) if by_kind and rng.random() < 0.5 else pick(rng, CHANGE_TYPES)
    happened = any(a <= i < b for i in by_kind.get(kind, []))
    out.append(("change_between", _KIND_QUESTIONS[kind][2].format(**span), _yes(happened)))
    return [{"question": q, "answer": ans, "qtype": qtype} for qtype, q, ans in out]


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


# ------------------------------------------------------------------------------------------- writer
def _event_summary(seq: SynthSequence) -> list[dict[str, Any]]:
    return [
        {
            "interval": i,
            "from": seq.dates[i],
            "to": seq.dates[i + 1],
            "kind": e.kind,
            "mask_class": MASK_CLASSES[CHANGE_MASK_CLASS[e.kind]],
            "count": e.count,
            "pixels": int(e.footprint(seq.size).sum()),
            "cell": list(event_cell(e, seq.size)),
        }
        for i, e in seq.events
    ]


class _SequenceWriter:
    """Writes each sequence's PNGs and keeps its ``sequences.jsonl`` row; empty masks encoded once."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: list[dict[str, Any]] = []
        self._empty: dict[tuple[int, ...], bytes] = {}

    def add(self, seq: SynthSequence, split: str, number: int) -> None:
        name = f"{split}_{number:06d}"
        folder = Path("sequences") / split / name
        (self.root / folder).mkdir(parents=True)
        images = [(folder / f"t{t:02d}.png").as_posix() for t in range(seq.length)]
        masks = [(folder / f"interval_{i:02d}.png").as_posix() for i in range(seq.length - 1)]
        first = (folder / "first_change.png").as_posix()
        for path, image in zip(images, seq.images, strict=True):
            (self.root / path).write_bytes(encode_png(image, strategy=PHOTO))
        for path, mask in zip(masks, seq.interval_masks, strict=True):
            (self.root / path).write_bytes(self._mask_png(mask))
        (self.root / first).write_bytes(encode_png(first_change_png(seq.first_change)))
        self.rows.append(
            {
                "id": name,
                "split": split,
                "index": seq.index,
                "dates": seq.dates,
                "images": images,
                "interval_masks": masks,
                "first_change": first,
                "changed_intervals": seq.changed_intervals,
                "caption": seq.caption,
                "captions": seq.captions,
                "questions": seq.questions,
                "events": _event_summary(seq),
            }
        )

    def _mask_png(self, mask: np.ndarray) -> bytes:
        if mask.any():
            return encode_png(label_rgb(mask))
        if mask.shape not in self._empty:
            self._empty[mask.shape] = encode_png(np.zeros((*mask.shape, 3), np.uint8))
        return self._empty[mask.shape]


def first_change_png(first_change: np.ndarray) -> np.ndarray:
    """The uint8 image ``first_change.png`` holds: the interval index, ``NEVER`` (255) where -1."""
    return np.where(first_change < 0, NEVER, first_change).astype(np.uint8)


def _manifest(
    seed: int,
    size: int,
    dates: int,
    sequences: int,
    rows: list[dict[str, Any]],
    fractions=SPLIT_FRACTIONS,
    weather: bool = True,
) -> dict[str, Any]:
    counts = {}
    for split in SPLITS:
        mine = [r for r in rows if r["split"] == split]
        counts[split] = {
            "sequences": len(mine),
            "changed": sum(bool(r["events"]) for r in mine),
            "unchanged": sum(not r["events"] for r in mine),
            "changed_intervals": sum(len(r["changed_intervals"]) for r in mine),
            "events": {k: sum(e["kind"] == k for r in mine for e in r["events"]) for k in CHANGE_TYPES},
        }
    return {
        "format": "synthchange_sequences",
        "format_version": FORMAT_VERSION,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "dates": dates,
        "sequences": sequences,
        "weather": weather,
        "ground_sample_distance_m": 0.5 * 256 / size,
        "split_fractions": list(fractions),
        "mask_classes": [
            {"id": i, "name": n, "color": list(LABEL_COLORS[i])} for i, n in enumerate(MASK_CLASSES)
        ],
        "interval_mask_encoding": "RGB label colours, as the pair labels (mask_classes)",
        "first_change_encoding": f"8-bit grey PNG: first interval index that changed, {NEVER} = never",
        "change_types": list(CHANGE_TYPES),
        "question_types": list(TEMPORAL_QTYPES),
        "counts": counts,
    }


def write_sequences(
    out: str | Path,
    sequences: int,
    size: int = 256,
    seed: int = 0,
    dates: int = 5,
    split_fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
    progress=None,
    weather: bool = True,
) -> Path:
    """Write ``sequences`` sequences of ``dates`` dates into the new directory ``out``; return ``out``.

    As ``writer.generate`` does for pairs: an ``out`` that exists and is not empty is refused
    (``DataError``), everything is written into a hidden sibling directory renamed to ``out`` at the
    end, and sequence ``i`` depends only on ``(seed, i, size, dates)``. ``split_fractions``: train, val,
    test shares; ``progress(n)`` is called after each sequence.
    """
    out = Path(out)
    count = _check_dates(dates)
    check_arguments(out, sequences, size, seed, split_fractions, noun="sequences")
    sequences, size, seed = int(sequences), int(size), int(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        writer = _SequenceWriter(tmp)
        for index, (split, number) in enumerate(assign_splits(sequences, seed, tuple(split_fractions))):
            writer.add(render_sequence(seed, index, size, count, weather), split, number)
            if progress is not None:
                progress(index + 1)
        order = {s: i for i, s in enumerate(SPLITS)}
        writer.rows.sort(key=lambda r: (order[r["split"]], r["id"]))
        lines = "".join(json.dumps(row) + "\n" for row in writer.rows)
        (tmp / "sequences.jsonl").write_text(lines, encoding="utf-8")
        manifest = _manifest(seed, size, count, sequences, writer.rows, split_fractions, weather)
        (tmp / "synthchange_sequences.json").write_text(
            json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
        )
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
