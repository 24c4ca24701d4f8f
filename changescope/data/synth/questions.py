"""CDVQA-style questions and grounding queries computed from a pair's land-cover maps and change mask.

Definitions (docs/SYNTHCHANGE.md repeats them):

* changed pixels: ``mask != 0``; on those, and only those, the before and after land cover differ.
* changed area of a land-cover class c: changed pixels where c is the before *or* the after class.
* ratio bins: ``"0"`` for exactly zero, else ``"{10k}_to_{10k+10}"`` with k = ceil(percent / 10) - 1.
* increase / decrease: the class covers more / fewer pixels after than before.
* change_to_what: the most frequent after-class on the changed pixels whose before-class is c.
* largest / smallest change: the class with the largest / smallest non-zero changed area, asked only
  when it is unique and at least two classes changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from changescope.data.readers.cdvqa import CDVQA
from changescope.data.synth.classes import (
    BUILDING,
    CHANGE_TYPES,
    LAND_COVER,
    ROAD,
    TREE,
    WATER,
)
from changescope.data.synth.geometry import component_boxes
from changescope.data.synth.sampling import pick
from changescope.data.synth.scene import MAX_GROUP, SynthPair

RATIO_BINS = ("0",) + tuple(f"{10 * k}_to_{10 * k + 10}" for k in range(10))
#: CDVQA's eight types, plus "count" for counting heads
QUESTION_TYPES = (*CDVQA.QTYPES, "count")
ANSWERS: dict[str, tuple[str, ...]] = {
    "change_or_not": ("yes", "no"),
    "increase_or_not": ("yes", "no"),
    "decrease_or_not": ("yes", "no"),
    "change_to_what": LAND_COVER,
    "smallest_change": LAND_COVER,
    "largest_change": LAND_COVER,
    "change_ratio": RATIO_BINS,
    "change_ratio_types": RATIO_BINS,
    "count": tuple(str(n) for n in range(MAX_GROUP + 1)),
}

#: land-cover name -> (noun phrase, is it plural?) for question wording
_PHRASE = {
    "grass": ("the grass", False),
    "bare_ground": ("the bare ground", False),
    "roads": ("the roads", True),
    "buildings": ("the buildings", True),
    "trees": ("the trees", True),
    "water": ("the water", False),
}
_MASK_TO_LAND = {ROAD: "roads", BUILDING: "buildings", TREE: "trees", WATER: "water"}
_COUNTED = {
    "buildings_built": "how many buildings were built?",
    "buildings_demolished": "how many buildings were demolished?",
    "roads_built": "how many roads were built?",
}


def ratio_bin(part: int, total: int) -> str:
    """CDVQA ratio bin of ``part / total``."""
    if part <= 0:
        return "0"
    k = min(int(np.ceil(100.0 * part / total / 10.0)) - 1, 9)
    return RATIO_BINS[k + 1]


@dataclass
class Stats:
    """Per-class areas of one pair, the numbers every answer is computed from."""

    changed: np.ndarray  # bool [S, S]
    before: np.ndarray  # pixels per land-cover class, before
    after: np.ndarray
    changed_area: np.ndarray  # changed pixels per land-cover class (before or after)
    total: int

    joint: np.ndarray  # [before class, after class] -> changed pixels

    @classmethod
    def of(cls, pair: SynthPair) -> Stats:
        n = len(LAND_COVER)
        changed = pair.mask != 0
        lc_a, lc_b = pair.land_cover_a, pair.land_cover_b
        before = np.bincount(lc_a.ravel(), minlength=n)
        after = np.bincount(lc_b.ravel(), minlength=n)
        # one histogram of (before, after) class pairs over changed pixels; code 0 = unchanged pixel
        code = (lc_a * np.uint8(n) + lc_b + np.uint8(1)) * changed
        joint = np.bincount(code.ravel(), minlength=n * n + 1)[1:].reshape(n, n)
        # on changed pixels the classes differ, so "before or after is c" is a disjoint sum
        return cls(changed, before, after, joint.sum(axis=1) + joint.sum(axis=0), int(lc_a.size), joint)


def _has(plural: bool) -> str:
    return "have" if plural else "has"


def vqa(pair: SynthPair, rng: np.random.Generator) -> list[tuple[str, str, str]]:
    """``(qtype, question, answer)`` triples for one pair: several CDVQA types plus a count question."""
    st = Stats.of(pair)
    involved = [i for i in range(len(LAND_COVER)) if st.changed_area[i] > 0]
    out: list[tuple[str, str, str]] = []

    def pick_class(pool: list[int]) -> int:
        """Half the time a class that changed (when any did), so yes and no both occur."""
        if pool and rng.random() < 0.5:
            return pick(rng, pool)
        return int(rng.integers(len(LAND_COVER)))

    general = (
        "are there any changes?",
        "has anything changed?",
        "is there any change between the two images?",
    )
    out.append(("change_or_not", pick(rng, general), "yes" if st.changed.any() else "no"))

    mask_classes = [ROAD, BUILDING, TREE, WATER]
    changed_mask_classes = [c for c in mask_classes if (pair.mask == c).any()]
    cls = (
        pick(rng, changed_mask_classes)
        if changed_mask_classes and rng.random() < 0.5
        else pick(rng, mask_classes)
    )
    phrase, plural = _PHRASE[_MASK_TO_LAND[cls]]
    out.append(
        ("change_or_not", f"{_has(plural)} {phrase} changed?", "yes" if (pair.mask == cls).any() else "no")
    )

    c = pick_class([i for i in involved if st.after[i] > st.before[i]])
    phrase, plural = _PHRASE[LAND_COVER[c]]
    out.append(
        (
            "increase_or_not",
            f"{_has(plural)} {phrase} increased?",
            "yes" if st.after[c] > st.before[c] else "no",
        )
    )
    c = pick_class([i for i in involved if st.after[i] < st.before[i]])
    phrase, plural = _PHRASE[LAND_COVER[c]]
    out.append(
        (
            "decrease_or_not",
            f"{_has(plural)} {phrase} decreased?",
            "yes" if st.after[c] < st.before[c] else "no",
        )
    )

    sources = [i for i in range(len(LAND_COVER)) if st.joint[i].any()]
    if sources:
        c = pick(rng, sources)
        into = st.joint[c]
        phrase, plural = _PHRASE[LAND_COVER[c]]
        verb = "have" if plural else "has"
        question = pick(rng, [f"what {verb} {phrase} changed into?", f"what did {phrase} become?"])
        out.append(("change_to_what", question, LAND_COVER[int(np.argmax(into))]))

    areas = st.changed_area
    if len(involved) >= 2:
        nonzero = areas[involved]
        if (nonzero == nonzero.max()).sum() == 1:
            q = pick(rng, ["what is the largest change?", "which class changed the most?"])
            out.append(("largest_change", q, LAND_COVER[involved[int(np.argmax(nonzero))]]))
        if (nonzero == nonzero.min()).sum() == 1:
            q = pick(rng, ["what is the smallest change?", "which class changed the least?"])
            out.append(("smallest_change", q, LAND_COVER[involved[int(np.argmin(nonzero))]]))

    q = pick(rng, ["what is the ratio of the changed area?", "what percentage of the area has changed?"])
    out.append(("change_ratio", q, ratio_bin(int(st.changed.sum()), st.total)))
    c = pick_class(involved)
    out.append(
        (
            "change_ratio_types",
            f"what is the area ratio of the changed {LAND_COVER[c].replace('_', ' ')}?",
            ratio_bin(int(areas[c]), st.total),
        )
    )

    counted = [k for k in _COUNTED if pair.event(k) is not None]
    kind = pick(rng, counted) if counted and rng.random() < 0.7 else pick(rng, list(_COUNTED))
    event = pair.event(kind)
    n = 0 if event is None else len(event.objects)
    out.append(("count", _COUNTED[kind], str(n)))
    return out


@dataclass
class GroundingQuery:
    change: str  # a CHANGE_TYPES entry
    query: str
    mask: np.ndarray  # bool [S, S]; empty for a negative query
    boxes: list[list[float]]

    @property
    def negative(self) -> bool:
        return not self.boxes


GROUNDING_QUERIES = {
    "buildings_built": (
        "show the new buildings",
        "where were buildings built?",
        "find the newly built houses",
    ),
    "buildings_demolished": (
        "where were buildings demolished?",
        "show the demolished buildings",
        "find the houses that were torn down",
    ),
    "roads_built": ("where was a road built?", "show the new road", "find the newly built road"),
    "trees_cleared": (
        "where were trees cleared?",
        "show where trees were cut down",
        "find the removed trees",
    ),
    "water_appeared": ("where did water appear?", "show the new pond", "find the new water body"),
    "water_dried": (
        "where did the water dry up?",
        "show the pond that dried up",
        "find the water that disappeared",
    ),
}


def grounding(pair: SynthPair, rng: np.random.Generator) -> list[GroundingQuery]:
    """One query per change type that happened (target: its footprints) and one about a change that
    did not happen (empty target)."""
    out = []
    for event in pair.events:
        target = event.footprint(pair.size)
        out.append(
            GroundingQuery(
                event.kind, pick(rng, GROUNDING_QUERIES[event.kind]), target, component_boxes(target)
            )
        )
    absent = [k for k in CHANGE_TYPES if pair.event(k) is None]
    if absent:
        kind = pick(rng, absent)
        empty = np.zeros((pair.size, pair.size), bool)
        out.append(GroundingQuery(kind, pick(rng, GROUNDING_QUERIES[kind]), empty, []))
    return out
