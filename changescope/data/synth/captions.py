"""LEVIR-CC style captions and retrieval queries for a generated pair.

Every change sentence names what changed, how many (``count_word``), where (the 3 x 3 grid cell of the
change's centroid, ``geometry.POSITIONS``), and sometimes a relation to an unchanged neighbour ("along
the road", "near the trees", "beside the lake", "near the houses") that holds in the painted scene:
the changed objects lie within a few metres of such a neighbour. Unchanged pairs carry exactly the
five LEVIR-CC no-change sentences.
"""

from __future__ import annotations

import numpy as np

from changescope.data.readers.levir import LEVIR_NO_CHANGE
from changescope.data.synth.geometry import POSITIONS, grid_cell, point_gap, polyline_gap
from changescope.data.synth.sampling import pick
from changescope.data.synth.scene import Event, SynthPair

#: relation key -> phrases; a relation is offered only when it holds (see ``relations``)
RELATIONS = {
    "road": ("along the road", "beside the road", "by the road"),
    "trees": ("near the trees", "next to the trees", "close to the trees"),
    "water": ("beside the lake", "next to the pond", "near the water"),
    "buildings": ("near the houses", "next to the buildings", "close to the houses"),
}
#: which relations make sense for each change type
RELATION_KEYS = {
    "buildings_built": ("road", "trees", "water"),
    "buildings_demolished": ("road", "trees", "water"),
    "roads_built": ("trees", "water"),
    "trees_cleared": ("road", "water", "buildings"),
    "water_appeared": ("trees", "buildings"),
    "water_dried": ("trees", "buildings"),
}
ROAD_NEAR = 12.0  # pixels at 256 x 256 (6 m) between an object and the road's edge
NEAR = 16.0  # pixels at 256 x 256 (8 m) between two objects' outlines


def count_word(n: int) -> str:
    """LEVIR-style count: a, two, three, several (4-6), many (7 or more)."""
    if n < 1:
        raise ValueError("count_word needs n >= 1")
    return {1: "a", 2: "two", 3: "three"}.get(n, "several" if n <= 6 else "many")


def event_cell(event: Event, size: int) -> tuple[int, int]:
    """Grid cell of the centroid of all the pixels an event changed."""
    return grid_cell(*event.centroid(), size)


def _bbox_gap(a, b) -> float:
    """Gap between the bounding windows of two painted objects (a lower bound of their distance)."""
    dy = max(a.rows.start - b.rows.stop, b.rows.start - a.rows.stop, 0)
    dx = max(a.cols.start - b.cols.stop, b.cols.start - a.cols.stop, 0)
    return float(np.hypot(dy, dx))


def relations(pair: SynthPair, event: Event) -> list[str]:
    """Relation keys (see ``RELATIONS``) that hold for every object of ``event``."""
    scale = pair.size / 256
    changed = {id(o) for e in pair.events for o in e.objects}
    unchanged = [o for o in pair.objects_b if id(o) not in changed]
    roads = [o for o in pair.objects_b if o.kind == "road" and id(o) not in {id(x) for x in event.objects}]
    outlines = {id(o): o.points() for o in event.objects}
    found = []
    for key in RELATION_KEYS[event.kind]:
        if key == "road":
            limit = ROAD_NEAR * scale
            ok = bool(roads) and all(
                any(
                    polyline_gap(outlines[id(o)], r.meta["points"]) - r.meta["half_width"] <= limit
                    for r in roads
                )
                for o in event.objects
            )
        else:
            kind = {"trees": "trees", "water": "pond", "buildings": "building"}[key]
            limit = NEAR * scale
            ok = all(
                any(
                    _bbox_gap(o, ref) <= limit and point_gap(outlines[id(o)], ref.points()) <= limit
                    for ref in unchanged
                    if ref.kind == kind
                )
                for o in event.objects
            )
        if ok:
            found.append(key)
    return found


def _noun(n: int, singular: str, plural: str, new: bool = False) -> str:
    """``count word [new] noun``: "a new house", "two buildings", "many trees"."""
    return f"{count_word(n)} {'new ' if new else ''}{singular if n == 1 else plural}"


def _buildings(n: int, rng: np.random.Generator, new: bool = False) -> str:
    return _noun(n, *pick(rng, (("building", "buildings"), ("house", "houses"))), new)


def _verbs(n: int) -> dict[str, str]:
    return {"be": "is" if n == 1 else "are", "have": "has" if n == 1 else "have", "s": "s" if n == 1 else ""}


_BUILT = (
    "{subj} {be} built {where}",
    "{subj} {be} constructed {where}",
    "{subj} {have} been built {where}",
    "{subj} appear{s} {where}",
    "{where} {subj} {be} built",
)
_DEMOLISHED = (
    "{subj} {be} demolished {where}",
    "{subj} {be} torn down {where}",
    "{subj} {have} been removed {where}",
    "{subj} disappear{s} {where}",
    "{where} {subj} {be} knocked down",
)
_TREES = (
    "{subj} {be} cut down {where}",
    "{subj} {have} been removed {where}",
    "{subj} {be} cleared {where}",
    "{subj} disappear{s} {where}",
    "{where} {subj} {be} cut down",
)
_ROAD = (
    "{subj} is built {where}",
    "{subj} is constructed {where}",
    "{subj} has been built {where}",
    "{subj} appears {where}",
    "{where} {subj} is paved",
)
_ROAD_WITH_BUILDINGS = (
    "{subj} is built {where} with {bsubj} along it",
    "{subj} and {bsubj} are built {where}",
    "{subj} appears {where} and {bsubj} {be} built along it",
    "{bsubj} {be} built along {subj} that appears {where}",
)
_POND = (
    "a pond appears {where}",
    "a new pond is dug {where}",
    "a small lake is formed {where}",
    "water appears {where}",
    "{where} a pond is built",
)
_DRIED = (
    "the pond {where} dries up",
    "the pond {where} has dried up",
    "the water {where} disappears",
    "the lake {where} is drained",
    "a pond {where} is gone",
)


def _where(pair: SynthPair, event: Event, rng: np.random.Generator, rels: list[str]) -> str:
    position = pick(rng, POSITIONS[event_cell(event, pair.size)])
    if rels and rng.random() < 0.4:
        return f"{pick(rng, RELATIONS[pick(rng, rels)])} {position}"
    return position


def _clause(
    pair: SynthPair, event: Event, rng: np.random.Generator, rels: list[str], along: Event | None
) -> str:
    n = event.count
    where = _where(pair, event, rng, rels)
    if event.kind == "buildings_built":
        subj = _buildings(n, rng, new=rng.random() < 0.5)
        return pick(rng, _BUILT).format(subj=subj, where=where, **_verbs(n))
    if event.kind == "buildings_demolished":
        return pick(rng, _DEMOLISHED).format(subj=_buildings(n, rng), where=where, **_verbs(n))
    if event.kind == "trees_cleared":
        return pick(rng, _TREES).format(subj=_noun(n, "tree", "trees"), where=where, **_verbs(n))
    if event.kind == "roads_built":
        shape = "curved " if event.added[0].meta.get("bent") else "straight "
        subj = "a " + pick(rng, ["", "new ", shape]) + "road"
        if along is not None:
            m = along.count
            bsubj = _buildings(m, rng)
            return pick(rng, _ROAD_WITH_BUILDINGS).format(subj=subj, bsubj=bsubj, where=where, **_verbs(m))
        return pick(rng, _ROAD).format(subj=subj, where=where)
    if event.kind == "water_appeared":
        return pick(rng, _POND).format(where=where)
    return pick(rng, _DRIED).format(where=where)


def _plan_clauses(pair: SynthPair) -> list[tuple[Event, Event | None]]:
    """Events to describe; buildings put up along a new road are told together with the road."""
    road = pair.event("roads_built")
    built = pair.event("buildings_built")
    merged = built if road is not None and built is not None and built.meta.get("along_new_road") else None
    return [(e, merged if e is road else None) for e in pair.events if e is not merged]


def captions(pair: SynthPair, rng: np.random.Generator, count: int = 5) -> list[str]:
    """``count`` different captions (the five LEVIR no-change sentences for an unchanged pair)."""
    if not pair.changed:
        return list(LEVIR_NO_CHANGE)
    plan = _plan_clauses(pair)
    rels = {id(e): relations(pair, e) for e, _ in plan}
    out: list[str] = []
    for _ in range(count * 8):
        order = rng.permutation(len(plan))
        text = " and ".join(_clause(pair, plan[i][0], rng, rels[id(plan[i][0])], plan[i][1]) for i in order)
        if text not in out:
            out.append(text)
        if len(out) == count:
            break
    while len(out) < count:  # tiny scenes can run out of distinct wordings; repeat rather than fail
        out.append(out[len(out) % max(len(out), 1)])
    return out


_QUERY = {
    "buildings_built": ("construction of {subj} {where}", "{subj} that did not exist before {where}"),
    "buildings_demolished": ("demolition of {subj} {where}", "{subj} missing in the later image {where}"),
    "trees_cleared": ("loss of {subj} {where}", "vegetation removed {where}"),
    "roads_built": ("a newly paved road {where}", "construction of a road {where}"),
    "water_appeared": ("a new body of water {where}", "a pond forming {where}"),
    "water_dried": ("a pond drying out {where}", "water vanishing {where}"),
}
_QUERY_NOUNS = {
    "buildings_built": ("building", "buildings"),
    "buildings_demolished": ("building", "buildings"),
    "trees_cleared": ("tree", "trees"),
}


def retrieval_query(pair: SynthPair, rng: np.random.Generator) -> str:
    """One description worded differently from the captions, to find this pair among others."""
    if not pair.changed:
        kinds = {o.kind for o in pair.objects_a}
        content = [
            name
            for kind, name in (
                ("road", "a road"),
                ("building", "houses"),
                ("trees", "trees"),
                ("pond", "a pond"),
            )
            if kind in kinds
        ]
        scene = (
            ", ".join(content[:-1]) + (" and " if len(content) > 1 else "") + (content[-1] if content else "")
        )
        return (
            f"no change between the two dates in a scene with {scene}"
            if content
            else "an unchanged open field"
        )
    parts = []
    for event in pair.events:
        nouns = _QUERY_NOUNS.get(event.kind)
        subj = _noun(event.count, *nouns) if nouns else ""
        where = pick(rng, POSITIONS[event_cell(event, pair.size)])
        parts.append(pick(rng, _QUERY[event.kind]).format(subj=subj, where=where))
    return " plus ".join(parts)
