"""One bi-temporal pair: layout, change events, rendering of both dates, nuisance, and the exact mask.

Order of work for a pair (all draws from ``np.random.default_rng([seed, index])``):

1. decide whether the pair changes and which change types happen;
2. lay out the objects the *after* image adds (new road, new buildings, new pond) first, so the
   before scene is built around the space they need;
3. place the objects the *before* image loses (buildings to demolish, trees to clear, a pond that
   dries), then fill the scene with context objects that both dates share;
4. render both dates from the same ground and the same object rasters, so outside the changed
   footprints the clean renders differ only where a cast shadow appeared or vanished;
5. apply per-date illumination and season, and on unchanged pairs a 1-2 px shift of B.

The change mask is the union of the footprints of every removed and added object, each with its class
(overlaps resolved by ``classes.MASK_PRIORITY``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from changescope.data.synth import objects as obj
from changescope.data.synth.classes import (
    CHANGE_TYPES,
    LC_GRASS,
    LC_TREE,
    MASK_PRIORITY,
)
from changescope.data.synth.noise import noise_bank
from changescope.data.synth.objects import Context, Painted
from changescope.data.synth.sampling import pick
from changescope.data.synth.terrain import ground

#: most buildings one event builds or demolishes (the "count" answers run from 0 to this)
MAX_GROUP = 10
KIND_WEIGHTS = np.array([0.34, 0.14, 0.14, 0.16, 0.11, 0.11])  # in CHANGE_TYPES order


@dataclass(eq=False)
class Event:
    """One change type in a pair, with the objects it removed from A and added to B."""

    kind: str
    removed: list[Painted] = field(default_factory=list)
    added: list[Painted] = field(default_factory=list)
    scars: list[Painted] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # "along_new_road": buildings put up along the new road

    @property
    def objects(self) -> list[Painted]:
        """The objects whose footprints changed (removed ones, or added ones)."""
        return self.removed + self.added

    @property
    def count(self) -> int:
        """How many things changed: buildings, roads or ponds; for trees, crowns."""
        return sum(o.count for o in self.objects)

    def centroid(self) -> tuple[float, float]:
        """Centroid (row, col) of all changed pixels (footprints never overlap, so moments add up)."""
        moments = np.array([o.moments() for o in self.objects])
        n, sy, sx = moments.sum(axis=0)
        return float(sy / n), float(sx / n)

    def footprint(self, size: int) -> np.ndarray:
        out = np.zeros((size, size), bool)
        for o in self.objects:
            out[o.rows, o.cols] |= o.mask
        return out


@dataclass(eq=False)
class SynthPair:
    """A rendered pair with everything needed to derive captions, questions and grounding targets."""

    seed: int
    index: int
    size: int
    changed: bool
    image_a: np.ndarray  # uint8 [S, S, 3]
    image_b: np.ndarray
    mask: np.ndarray  # uint8 [S, S], classes.MASK_CLASSES ids
    land_cover_a: np.ndarray  # uint8 [S, S], classes.LAND_COVER ids
    land_cover_b: np.ndarray
    objects_a: list[Painted]
    objects_b: list[Painted]
    events: list[Event]
    clean_a: np.ndarray  # planar float32 [3, S, S] renders before illumination / season / shift
    clean_b: np.ndarray
    shadow_a: np.ndarray  # bool, cast shadows of each date
    shadow_b: np.ndarray
    nuisance: dict  # the after date's season name, B's (dy, dx) shift, whether a brightness ramp was used

    def event(self, kind: str) -> Event | None:
        return next((e for e in self.events if e.kind == kind), None)


# ------------------------------------------------------------------------------------------- layout
class _Layout:
    """Places objects for one pair; knows the scale of things in pixels."""

    def __init__(self, ctx: Context, rng: np.random.Generator):
        self.ctx, self.rng = ctx, rng
        self.sc = ctx.scale
        self.size = ctx.size

    def free_point(self, lo: float = 0.1, hi: float = 0.9, tries: int = 12) -> np.ndarray:
        """A random point in ``[lo, hi] * size`` that nothing occupies yet (the last try if none is)."""
        for _ in range(tries):
            point = self.rng.uniform(lo, hi, size=2) * self.size
            if not self.ctx.occupied[int(point[0]), int(point[1])]:
                break
        return point

    # --- roads
    def road_points(self) -> np.ndarray:
        rng, s = self.rng, self.size
        entry = int(rng.integers(4))
        exit_ = (entry + 2) % 4 if rng.random() < 0.65 else (entry + pick(rng, [1, 3])) % 4
        p, q = self._edge_point(entry), self._edge_point(exit_)
        if rng.random() < 0.5:
            return np.array([p, q], np.float32)
        mid = (p + q) / 2
        direction = (q - p) / (np.linalg.norm(q - p) + 1e-6)
        normal = np.array([direction[1], -direction[0]], np.float32)
        ctrl = mid + normal * rng.uniform(0.15, 0.35) * s * pick(rng, [-1, 1])
        t = np.linspace(0, 1, 7, dtype=np.float32)[:, None]
        return ((1 - t) ** 2 * p + 2 * (1 - t) * t * ctrl + t**2 * q).astype(np.float32)

    def _edge_point(self, side: int) -> np.ndarray:
        s = self.size
        t = self.rng.uniform(0.12, 0.88) * s
        out = -0.08 * s
        return np.array([(out, t), (t, s - out), (s - out, t), (t, out)][side], np.float32)

    def road(self, attempts: int = 8) -> Painted | None:
        sc = self.sc
        for _ in range(attempts):
            style = pick(self.rng, ["marked", "marked", "plain", "concrete"])
            half_width = self.rng.uniform(5.5, 8.5) * sc
            sidewalk = self.rng.uniform(2.0, 3.5) * sc if self.rng.random() < 0.4 else 0.0
            placed = obj.road(self.ctx, self.road_points(), half_width, style, sidewalk, margin=3 * sc)
            if placed is not None:
                return placed
        return None

    # --- buildings
    def _house(self, cy, cx, angle, inside, large: bool | None = None) -> Painted | None:
        rng, sc = self.rng, self.sc
        large = rng.random() < 0.18 if large is None else large
        if large:
            length, width = rng.uniform(24, 40) * sc, rng.uniform(16, 26) * sc
            height, roof = rng.uniform(5, 9) * sc, "flat"
        else:
            length, width = rng.uniform(14, 25) * sc, rng.uniform(10, 15) * sc
            height, roof = rng.uniform(3, 6) * sc, None
        wing = None
        if not large and rng.random() < 0.3:
            wing = (
                rng.uniform(0.4, 0.55) * length,
                rng.uniform(0.35, 0.7) * width,
                pick(rng, [-1, 1]),
                pick(rng, [-1, 1]),
            )
        return obj.building(
            self.ctx, rng, cy, cx, max(length, 3), max(width, 3), angle, height,
            margin=max(2.5 * sc, 1.5), inside=inside, wing=wing, roof=roof,
        )  # fmt: skip

    def buildings_along(self, road: Painted, n: int, inside: bool) -> list[Painted]:
        """Up to ``n`` houses facing a road, on one or both sides, evenly spaced along it."""
        rng, sc = self.rng, self.sc
        points = road.meta["points"]
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        total = float(seg.sum())
        spacing = rng.uniform(26, 34) * sc
        sides = [pick(rng, [-1, 1])] if rng.random() < 0.45 else [-1, 1]
        start = rng.uniform(0, total - spacing * max(n, 1) / len(sides)) if total > spacing * n else 0.0
        placed: list[Painted] = []
        for k in range(4 * n):
            if len(placed) >= n:
                break
            arc = start + (k // len(sides)) * spacing
            if arc > total:
                break
            side = sides[k % len(sides)]
            pos, tangent = _at_arc(points, seg, arc)
            normal = np.array([tangent[1], -tangent[0]]) * side
            offset = road.meta["half_width"] + rng.uniform(5, 9) * sc + 8 * sc
            cy, cx = pos + normal * offset
            angle = float(np.arctan2(tangent[0], tangent[1]))
            house = self._house(cy, cx, angle, inside, large=False)
            if house is not None:
                placed.append(house)
        return placed

    def building_block(self, n: int, inside: bool, attempts: int = 6) -> list[Painted]:
        """Up to ``n`` buildings on a small jittered grid with one orientation (a subdivision)."""
        rng, sc = self.rng, self.sc
        placed: list[Painted] = []
        for _ in range(attempts):
            cy, cx = self.free_point(0.15, 0.85)
            angle = rng.uniform(0, np.pi) if rng.random() < 0.5 else pick(rng, [0.0, np.pi / 2])
            step_u, step_v = rng.uniform(28, 36) * sc, rng.uniform(22, 30) * sc
            ca, sa = np.cos(angle), np.sin(angle)
            cols = int(np.ceil(np.sqrt(n)))
            for k in range(n * 2):
                if len(placed) >= n:
                    break
                i, j = k % cols - (cols - 1) / 2, k // cols - (cols - 1) / 2
                du, dv = i * step_u + rng.normal(0, 2) * sc, j * step_v + rng.normal(0, 2) * sc
                house = self._house(cy + du * sa + dv * ca, cx + du * ca - dv * sa, angle, inside)
                if house is not None:
                    placed.append(house)
            if placed:
                break
        return placed

    # --- trees and water
    def tree_group(self, inside: bool, attempts: int = 6) -> Painted | None:
        """A grove of 3-14 overlapping crowns around a free point."""
        rng, sc = self.rng, self.sc
        for _ in range(attempts):
            n = int(rng.integers(3, 15))
            centre = self.free_point()
            spread = (2 + 2.2 * np.sqrt(n)) * sc
            centers = (centre + rng.normal(0, 1, size=(n, 2)) * spread).astype(np.float32)
            radii = (rng.uniform(3.5, 7.5, size=n) * sc + 0.6).astype(np.float32)
            group = obj.trees(self.ctx, rng, centers, radii, margin=2 * sc, inside=inside)
            if group is not None:
                return group
        return None

    def street_trees(self, road: Painted) -> Painted | None:
        rng, sc = self.rng, self.sc
        points = road.meta["points"]
        seg = np.linalg.norm(np.diff(points, axis=0), axis=1)
        n = int(rng.integers(4, 10))
        side = pick(rng, [-1, 1])
        spacing = rng.uniform(11, 16) * sc
        start = rng.uniform(0, max(float(seg.sum()) - spacing * n, 1.0))
        radius = rng.uniform(4, 6) * sc + 0.5
        centers = []
        for k in range(n):
            pos, tangent = _at_arc(points, seg, start + k * spacing)
            normal = np.array([tangent[1], -tangent[0]]) * side
            centers.append(pos + normal * (road.meta["half_width"] + radius + 3.5 * sc))
        radii = (radius * rng.uniform(0.85, 1.15, size=n)).astype(np.float32)
        return obj.trees(self.ctx, rng, np.array(centers, np.float32), radii, margin=1.5 * sc)

    def pond(self, inside: bool, attempts: int = 6) -> Painted | None:
        rng, sc, s = self.rng, self.sc, self.size
        for _ in range(attempts):
            cy, cx = self.free_point(0.15, 0.85)
            # a pond that must lie inside the image is sized to the room left to the nearest edge
            room = (min(cy, cx, s - cy, s - cx) - 4 * sc - 1) / 1.35 if inside else 60 * sc
            ry = min(rng.uniform(12, 30) * sc, room)
            rx = min(ry * rng.uniform(0.8, 1.8), room)
            if ry < 8 * sc:
                continue
            placed = obj.pond(self.ctx, rng, cy, cx, ry, rx, rng.uniform(0, np.pi), 3 * sc, inside=inside)
            if placed is not None:
                return placed
        return None


def _at_arc(points: np.ndarray, seg: np.ndarray, arc: float) -> tuple[np.ndarray, np.ndarray]:
    """Position and unit tangent at arc length ``arc`` along a polyline with segment lengths ``seg``."""
    i, start = 0, 0.0
    last = len(seg) - 1
    while i < last and start + seg[i] < arc:
        start += float(seg[i])
        i += 1
    length = max(float(seg[i]), 1e-6)
    tangent = (points[i + 1] - points[i]) / length
    return points[i] + (arc - start) * tangent, tangent


def _count(rng: np.random.Generator) -> int:
    """How many buildings a building event involves: mostly few, sometimes several or many."""
    options = [1, 2, 3, int(rng.integers(4, 7)), int(rng.integers(7, MAX_GROUP + 1))]
    return options[int(rng.choice(len(options), p=[0.3, 0.22, 0.16, 0.2, 0.12]))]


def _choose_kinds(rng: np.random.Generator) -> list[str]:
    n = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
    picked = rng.choice(len(CHANGE_TYPES), size=n, replace=False, p=KIND_WEIGHTS / KIND_WEIGHTS.sum())
    return [CHANGE_TYPES[i] for i in sorted(picked)]


def _plan(layout: _Layout, kinds: list[str]) -> tuple[list[Event], list[Painted]]:
    """Place every object; return the events and the objects both dates share."""
    rng = layout.rng
    events: dict[str, Event] = {}
    shared: list[Painted] = []
    # additions first: they need free space that the before scene must leave open
    new_road = None
    if "roads_built" in kinds:
        new_road = layout.road()
        if new_road is not None:
            events["roads_built"] = Event("roads_built", added=[new_road])
    n_roads = pick(rng, [0, 1, 1, 1, 2])
    roads = [r for r in (layout.road() for _ in range(n_roads)) if r is not None]
    shared += roads
    wants_built = "buildings_built" in kinds or (new_road is not None and rng.random() < 0.6)
    if wants_built:
        n = _count(rng)
        along = new_road if new_road is not None and rng.random() < 0.8 else None
        if along is None and roads and rng.random() < 0.5:
            along = roads[int(rng.integers(len(roads)))]
        built = layout.buildings_along(along, n, inside=True) if along is not None else []
        meta = {"along_new_road": bool(built) and along is new_road}
        if not built:
            built = layout.building_block(n, inside=True)
        if built:
            events["buildings_built"] = Event("buildings_built", added=built, meta=meta)
    if "water_appeared" in kinds:
        pond = layout.pond(inside=True)
        if pond is not None:
            events["water_appeared"] = Event("water_appeared", added=[pond])
    # what the before scene loses
    if "buildings_demolished" in kinds:
        group = layout.building_block(int(rng.integers(1, 7)), inside=True)
        if group:
            k = int(rng.integers(1, len(group) + 1))
            order = rng.permutation(len(group))
            events["buildings_demolished"] = Event(
                "buildings_demolished", removed=[group[i] for i in sorted(order[:k])]
            )
            shared += [group[i] for i in sorted(order[k:])]
    if "trees_cleared" in kinds:
        groups = [layout.tree_group(inside=True) for _ in range(pick(rng, [1, 1, 2]))]
        groups = [g for g in groups if g is not None]
        if groups:
            events["trees_cleared"] = Event("trees_cleared", removed=groups)
    if "water_dried" in kinds:
        pond = layout.pond(inside=True)
        if pond is not None:
            events["water_dried"] = Event("water_dried", removed=[pond])
    # context that both dates share
    for road in roads:
        if rng.random() < 0.85:
            shared += layout.buildings_along(road, int(rng.integers(3, 10)), inside=False)
        if rng.random() < 0.4:
            shared.append(layout.street_trees(road))
    if rng.random() < (0.5 if roads else 0.8):
        shared += layout.building_block(int(rng.integers(2, 8)), inside=False)
    for _ in range(int(rng.integers(2, 6))):
        shared.append(layout.tree_group(inside=False))
    if rng.random() < 0.25:
        shared.append(layout.pond(inside=False))
    # an object clipped away to nothing would be captioned but absent from the mask: drop it
    for key, event in list(events.items()):
        event.added = [o for o in event.added if o.mask.any()]
        event.removed = [o for o in event.removed if o.mask.any()]
        if not event.objects:
            del events[key]
    for event in events.values():
        event.scars = [obj.scar(layout.ctx, rng, gone) for gone in event.removed]
    ordered = [events[k] for k in CHANGE_TYPES if k in events]
    return ordered, [o for o in shared if o is not None]


# ---------------------------------------------------------------------------------------- rendering
def paint(rgb: np.ndarray, lc: np.ndarray, o: Painted) -> None:
    """Copy an object's colours and land cover into planar ``rgb`` / ``lc`` on its footprint."""
    np.copyto(rgb[:, o.rows, o.cols], o.color, where=o.mask)
    lc[o.rows, o.cols][o.mask] = o.land_cover


def render_pair(
    ground_rgb: np.ndarray,
    ground_lc: np.ndarray,
    shared: list[Painted],
    dates: tuple[list[Painted], ...],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Render each date as ``(planar rgb, land cover, shadow mask)``.

    Footprints never overlap (the occupancy raster sees to that), so paint order between objects does
    not matter; only cast shadows overlap other things. The objects both dates share are painted once;
    each date then adds its own objects and darkens ground-level pixels under any cast shadow (roofs
    and crowns are above the shadows of their neighbours).
    """
    base_rgb, base_lc = ground_rgb, ground_lc  # painted in place: the ground is not needed afterwards
    size = ground_lc.shape[0]
    base_shadow = np.zeros((size, size), bool)
    base_top = np.zeros((size, size), bool)
    for o in shared:
        paint(base_rgb, base_lc, o)
        _mark(base_shadow, base_top, o)
    out = []
    for n, own in enumerate(dates):
        last = n == len(dates) - 1  # the last date may take the shared base itself
        rgb, lc = (base_rgb, base_lc) if last else (base_rgb.copy(), base_lc.copy())
        shadow, top = base_shadow.copy(), base_top.copy()
        for o in own:
            paint(rgb, lc, o)
            _mark(shadow, top, o)
        shaded = (shadow & ~top).astype(np.float32)
        for c in range(3):
            rgb[c] *= 1 - obj.SHADOW_LOSS[c] * shaded
        out.append((rgb, lc, shadow))
    return out


def _mark(shadow: np.ndarray, top: np.ndarray, o: Painted) -> None:
    if o.shadow is not None:
        rows, cols, mask = o.shadow
        shadow[rows, cols] |= mask
    if o.elevated:
        top[o.rows, o.cols] |= o.mask


def change_mask(events: list[Event], size: int) -> np.ndarray:
    """Class of the object that changed at each pixel; lower-priority classes are painted first."""
    mask = np.zeros((size, size), np.uint8)
    for cls in reversed(MASK_PRIORITY):
        for event in events:
            for o in event.objects:
                if o.mask_class == cls:
                    mask[o.rows, o.cols][o.mask] = cls
    return mask


# ----------------------------------------------------------------------------------------- nuisance
def _look(rng: np.random.Generator) -> dict:
    """Per-date appearance: channel gains and offsets, vegetation (season) gains, brightness ramp."""
    return {
        "gain": rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, size=3),
        "offset": rng.uniform(-6, 6, size=3),
        "season": np.ones(3),
        "ramp": (0.0, 0.0),
    }


def _nuisance(rng: np.random.Generator, look: dict) -> dict:
    """The after date's look: the before look plus an illumination and a season change."""
    out = dict(look)
    out["gain"] = look["gain"] * rng.uniform(0.82, 1.18) * rng.uniform(0.95, 1.05, size=3)
    out["offset"] = look["offset"] + rng.uniform(-10, 10, size=3)
    season = pick(rng, ["drier", "greener", "autumn", "same"])
    out["season"] = {
        "drier": np.array([1.08, 1.02, 0.9]),
        "greener": np.array([0.9, 1.08, 0.95]),
        "autumn": np.array([1.14, 0.98, 0.84]),
        "same": np.ones(3),
    }[str(season)] * rng.uniform(0.96, 1.04)
    out["season_name"] = str(season)
    if rng.random() < 0.4:
        out["ramp"] = tuple(rng.uniform(-0.12, 0.12, size=2))
    return out


def apply_look(rgb: np.ndarray, lc: np.ndarray, look: dict) -> np.ndarray:
    """Illumination and season on a clean planar render -> interleaved uint8 ``[S, S, 3]``.

    The season scales the channels of grass and tree pixels only.
    """
    size = lc.shape[0]
    gain = np.asarray(look["gain"], np.float32)
    season = np.asarray(look["season"], np.float32)
    vegetation = None
    if not np.allclose(season, 1):
        vegetation = ((lc == LC_GRASS) | (lc == LC_TREE)).astype(np.float32)
    ry, rx = look["ramp"]
    ramp = None
    if ry or rx:
        axis = np.linspace(-0.5, 0.5, size, dtype=np.float32)
        ramp = 1 + np.float32(ry) * axis[:, None] + np.float32(rx) * axis[None, :]
    planes = []
    for c in range(3):
        plane = rgb[c] * gain[c]
        if vegetation is not None:
            plane *= 1 + (season[c] - 1) * vegetation
        if ramp is not None:
            plane *= ramp
        plane += np.float32(look["offset"][c] + 0.5)
        np.clip(plane, 0, 255, out=plane)
        planes.append(plane.astype(np.uint8))
    return np.stack(planes, axis=-1)


def shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Misregister by (dy, dx) pixels, repeating the edge rows / columns that shift into view."""
    pad = max(abs(dy), abs(dx))
    if pad == 0:
        return image
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    return np.ascontiguousarray(padded[pad - dy : pad - dy + h, pad - dx : pad - dx + w])


# -------------------------------------------------------------------------------------------- pair
def make_pair(
    seed: int,
    index: int,
    size: int = 256,
    changed: bool | None = None,
    kinds: list[str] | tuple[str, ...] | None = None,
) -> SynthPair:
    """Generate pair ``index`` of the dataset with ``seed``; ``changed`` / ``kinds`` force the draw."""
    rng = np.random.default_rng([seed, index])
    tex = noise_bank(seed, size).crops(rng)
    drawn_changed = bool(rng.random() < 0.5)
    drawn_kinds = _choose_kinds(rng)
    if kinds is not None:
        unknown = sorted(set(kinds) - set(CHANGE_TYPES))
        if unknown:
            raise ValueError(f"unknown change types {unknown} (known: {', '.join(CHANGE_TYPES)})")
        changed, drawn_kinds = True, list(kinds)
    changed = drawn_changed if changed is None else changed
    azimuth = rng.uniform(0, 2 * np.pi)
    ctx = Context(size, tex, np.zeros((size, size), bool), (float(np.sin(azimuth)), float(np.cos(azimuth))))
    ground_rgb, ground_lc = ground(rng, tex, size)
    layout = _Layout(ctx, rng)
    events, shared = _plan(layout, drawn_kinds if changed else [])
    changed = bool(events)
    only_a = [o for e in events for o in e.removed]
    only_b = [o for e in events for o in e.added + e.scars]
    (clean_a, lc_a, shadow_a), (clean_b, lc_b, shadow_b) = render_pair(
        ground_rgb, ground_lc, shared, (only_a, only_b)
    )
    look_a = _look(rng)
    look_b = _nuisance(rng, look_a)
    image_a = apply_look(clean_a, lc_a, look_a)
    image_b = apply_look(clean_b, lc_b, look_b)
    offset = (0, 0)
    if not changed and rng.random() < 0.8:
        while offset == (0, 0):
            offset = tuple(int(v) for v in rng.integers(-2, 3, size=2))
        image_b = shift(image_b, *offset)
    return SynthPair(
        seed=seed,
        index=index,
        size=size,
        changed=changed,
        image_a=image_a,
        image_b=image_b,
        mask=change_mask(events, size),
        land_cover_a=lc_a,
        land_cover_b=lc_b,
        objects_a=shared + only_a,
        objects_b=shared + only_b,
        events=events,
        clean_a=clean_a,
        clean_b=clean_b,
        shadow_a=shadow_a,
        shadow_b=shadow_b,
        nuisance={"season": look_b["season_name"], "shift": offset, "ramp": bool(any(look_b["ramp"]))},
    )
