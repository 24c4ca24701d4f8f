"""Painted objects: roads, buildings, tree groups, ponds, and the scars their removal leaves.

Each builder works in three steps on a small local window: geometry (footprint, keep-out zone, cast
shadow), an occupancy check against everything placed so far (objects never overlap, which keeps the
change mask exact and lets both dates be painted in any order), then colour. A builder returns ``None``
when the object does not fit; otherwise it marks its keep-out zone as occupied and returns a
:class:`Painted`.

Colours are planar float32 ``[3, h, w]`` in 0..255 (planar because numpy is much faster on contiguous
channel planes than on interleaved pixels), before the per-date illumination and season of ``scene.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from changescope.data.synth.classes import (
    BUILDING,
    LC_BARE,
    LC_BUILDING,
    LC_ROAD,
    LC_TREE,
    LC_WATER,
    ROAD,
    TREE,
    WATER,
)
from changescope.data.synth.geometry import Grid, polyline_distance, rect_coords, sweep

ROOF_COLORS = np.array(
    [
        (128, 128, 130),  # grey shingle
        (96, 98, 102),  # dark grey
        (124, 104, 90),  # brown
        (164, 104, 80),  # terracotta
        (204, 202, 196),  # light / metal
        (112, 122, 136),  # blue-grey
        (146, 92, 80),  # red-brown
        (176, 166, 146),  # beige
    ],
    np.float32,
)
ROOF_WEIGHTS = np.array([3, 3, 3, 2, 1, 2, 2, 1], np.float64) / 17
_ROOF_CDF = np.cumsum(ROOF_WEIGHTS)
CROWN_COLORS = np.array([(58, 78, 44), (50, 70, 42), (70, 88, 52), (58, 74, 50), (78, 88, 56)], np.float32)
#: how much light a cast shadow takes away, per channel (shadows are lit by the blue sky)
SHADOW_LOSS = np.array([0.58, 0.55, 0.46], np.float32)


@dataclass(eq=False)
class Painted:
    """One object as drawn: a footprint and its colours in an image window, plus its cast shadow."""

    kind: str  # road | building | trees | pond | rubble | cleared | dry_bed
    mask_class: int  # the change-mask class its footprint takes when it changes
    land_cover: int
    elevated: bool  # roofs and crowns: painted over cast shadows instead of under them
    rows: slice
    cols: slice
    mask: np.ndarray  # bool [h, w] footprint inside the image
    color: np.ndarray  # float32 [3, h, w]
    shadow: tuple[slice, slice, np.ndarray] | None = None
    count: int = 1  # trees: number of crowns
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def full_mask(self, size: int) -> np.ndarray:
        out = np.zeros((size, size), bool)
        out[self.rows, self.cols] = self.mask
        return out

    def points(self) -> np.ndarray:
        """``[N, 2]`` (row, col) image coordinates of the footprint's outline pixels."""
        ys, xs = np.nonzero(outline(self.mask))
        return np.stack([ys + self.rows.start, xs + self.cols.start], axis=1)

    def moments(self) -> tuple[int, float, float]:
        """(pixel count, sum of row centres, sum of column centres) of the footprint, image coordinates."""
        per_row = np.count_nonzero(self.mask, axis=1)
        per_col = np.count_nonzero(self.mask, axis=0)
        n = int(per_row.sum())
        sy = float(per_row @ (np.arange(len(per_row)) + self.rows.start + 0.5))
        sx = float(per_col @ (np.arange(len(per_col)) + self.cols.start + 0.5))
        return n, sy, sx

    def centroid(self) -> tuple[float, float]:
        n, sy, sx = self.moments()
        return sy / n, sx / n


@dataclass
class Context:
    """What every builder needs: image size, textures, the sun and the occupancy raster."""

    size: int
    tex: dict[str, np.ndarray]  # [S, S] noise crops (noise.FIELDS)
    occupied: np.ndarray  # bool [S, S]
    shadow_dir: tuple[float, float]  # unit (dy, dx) in which shadows fall
    cache: dict = field(default_factory=dict)  # per-scene sprites (they depend on the sun)

    @property
    def scale(self) -> float:
        return self.size / 256.0

    @property
    def light(self) -> tuple[float, float]:
        return -self.shadow_dir[0], -self.shadow_dir[1]

    def fits(self, grid: Grid, keepout: np.ndarray, inside: bool) -> tuple | None:
        """The image crop of ``grid`` if ``keepout`` hits nothing placed (and, if ``inside``, stays in)."""
        crop = grid.crop(self.size)
        if crop is None:
            return None
        ly, lx, iy, ix = crop
        keep = keepout[ly, lx]
        if inside and keep.shape != keepout.shape and keep.sum() < keepout.sum():
            return None
        if (self.occupied[iy, ix] & keep).any():
            return None
        return crop

    def taken(self, y: float, x: float) -> bool:
        """Whether the pixel at (y, x) is occupied (points outside the image are free)."""
        iy, ix = int(y), int(x)
        return 0 <= iy < self.size and 0 <= ix < self.size and bool(self.occupied[iy, ix])

    def occupy(self, crop: tuple, keepout: np.ndarray) -> None:
        ly, lx, iy, ix = crop
        self.occupied[iy, ix] |= keepout[ly, lx]

    def texture(self, name: str, rows: slice, cols: slice) -> np.ndarray:
        return self.tex[name][rows, cols]


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _planar(color: tuple[float, float, float] | np.ndarray, shade: np.ndarray) -> np.ndarray:
    """``[3, h, w]`` colour = an RGB triple times a brightness map."""
    out = np.empty((3, *shade.shape), np.float32)
    for c in range(3):
        np.multiply(shade, np.float32(color[c]), out=out[c])
    return out


def _shadow_crop(ctx: Context, crop: tuple, footprint: np.ndarray, length: float):
    sdy, sdx = ctx.shadow_dir
    shade = sweep(footprint, sdy * length, sdx * length) & ~footprint
    ly, lx, iy, ix = crop
    shade = shade[ly, lx]
    return (iy, ix, shade) if shade.any() else None


# ---------------------------------------------------------------------------------------------- roads
def road(
    ctx: Context,
    points: np.ndarray,
    half_width: float,
    style: str,
    sidewalk: float,
    margin: float,
) -> Painted | None:
    """A road along a polyline; ``style`` is ``marked`` (lane lines), ``plain`` or ``concrete``.

    The distance to the centre line is computed segment by segment in each segment's bounding box,
    so a road costs about one image-sized pass however many bends it has.
    """
    s = ctx.size
    outer = half_width + sidewalk
    reach = outer + margin + 1
    dist = np.full((s, s), np.inf, np.float32)
    arc = np.zeros((s, s), np.float32)
    start = 0.0
    for p, q in zip(points[:-1], points[1:], strict=True):
        lo = np.floor(np.minimum(p, q) - reach).astype(int)
        hi = np.ceil(np.maximum(p, q) + reach).astype(int) + 1
        grid = Grid(int(lo[0]), int(lo[1]), int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        crop = grid.crop(s)
        if crop is not None:
            ly, lx, iy, ix = crop
            sub = Grid(iy.start, ix.start, iy.stop - iy.start, ix.stop - ix.start)
            d, a = polyline_distance(np.stack([p, q]), sub)
            closer = d < dist[iy, ix]
            np.copyto(dist[iy, ix], d, where=closer)
            np.copyto(arc[iy, ix], a + np.float32(start), where=closer)
        start += float(np.hypot(*(q - p)))
    keepout = dist < outer + margin
    if not keepout.any():
        return None
    ys = np.flatnonzero(keepout.any(axis=1))
    xs = np.flatnonzero(keepout.any(axis=0))
    iy, ix = slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)
    if (ctx.occupied[iy, ix] & keepout[iy, ix]).any():
        return None
    ctx.occupied[iy, ix] |= keepout[iy, ix]
    dist, arc = dist[iy, ix], arc[iy, ix]
    footprint = dist < outer
    sc = ctx.scale
    grain, fine = ctx.texture("grain", iy, ix), ctx.texture("fine", iy, ix)
    if style == "concrete":
        gray = 150 + 5 * fine + 5 * grain
        joints = arc * np.float32(1 / (12 * sc))
        gray -= 16 * ((joints - np.floor(joints)) < 0.08)  # expansion joints across the slabs
    else:
        gray = 92 + 5 * fine + 7 * grain
        gray += 10 * np.maximum(1 - dist / np.float32(max(half_width, 1)), 0)  # worn, lighter middle
    if style == "marked":
        line = max(0.7 * sc, 0.55)
        dash = arc * np.float32(1 / (16 * sc))
        centre = (dist < line) & ((dash - np.floor(dash)) < 0.5)
        edge = np.abs(dist - (half_width - 1.6 * sc)) < line * 0.8
        gray = np.where(centre | edge, np.float32(218), gray)
    if sidewalk > 0:
        walk = dist >= half_width
        gray = np.where(walk, 170 + 4 * grain, gray)
        gray *= 1 - 0.2 * (np.abs(dist - half_width) < 0.6)  # curb line
    color = _planar((1.0, 1.0, 1.0), gray)
    return Painted(
        kind="road",
        mask_class=ROAD,
        land_cover=LC_ROAD,
        elevated=False,
        rows=iy,
        cols=ix,
        mask=footprint,
        color=color,
        meta={"half_width": outer, "points": points, "bent": len(points) > 2},
    )


# ------------------------------------------------------------------------------------------ buildings
def building(
    ctx: Context,
    rng: np.random.Generator,
    cy: float,
    cx: float,
    length: float,
    width: float,
    angle: float,
    height: float,
    margin: float,
    inside: bool = False,
    wing: tuple[float, float, int, int] | None = None,
    roof: str | None = None,
) -> Painted | None:
    """A building with a gable, hip or flat roof, optionally L-shaped (``wing`` = (width, length, su, sv))."""
    if ctx.taken(cy, cx):  # cheap early rejection before any raster work
        return None
    reach = 0.5 * np.hypot(length, width) + (wing[1] if wing else 0.0) + margin + height + 2
    grid = Grid.around(cy, cx, reach, reach)
    u, v = rect_coords(grid, cy, cx, angle)
    au, av = np.abs(u), np.abs(v)
    half_l, half_w = length / 2, width / 2
    main = (au < half_l) & (av < half_w)
    keepout = (au < half_l + margin) & (av < half_w + margin)
    footprint = main
    if wing is not None:
        wing_w, wing_l, su, sv = wing
        wu = u - np.float32(su * (half_l - wing_w / 2))
        wv = v - np.float32(sv * (half_w + wing_l) / 2)
        wing_half = (half_w + wing_l) / 2
        in_wing = (np.abs(wu) < wing_w / 2) & (np.abs(wv) < wing_half)
        footprint = main | in_wing
        keepout |= (np.abs(wu) < wing_w / 2 + margin) & (np.abs(wv) < wing_half + margin)
    crop = ctx.fits(grid, keepout, inside)
    if crop is None:
        return None
    ly, lx, iy, ix = crop
    mask = footprint[ly, lx]
    if not mask.any():
        return None
    ctx.occupy(crop, keepout)
    shadow = _shadow_crop(ctx, crop, footprint, height)

    roof = roof or ("gable", "hip", "hip", "flat")[int(rng.integers(4))]
    light = np.asarray(ctx.light, np.float32)
    ca, sa = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    along = np.array([sa, ca], np.float32)  # (dy, dx) of +u
    across = np.array([ca, -sa], np.float32)  # (dy, dx) of +v
    u, v = u[ly, lx], v[ly, lx]

    def facets(pu, pv, half_a, half_b, ax_a, ax_b):
        """Roof brightness over a rectangle whose ridge runs along axis a (half-lengths a >= b)."""
        if roof == "flat":
            return np.full(pu.shape, 1.0, np.float32)
        side = np.where(pv >= 0, np.float32(1), np.float32(-1)) * np.float32(ax_b @ light)
        if roof == "hip":
            end = np.where(pu >= 0, np.float32(1), np.float32(-1)) * np.float32(ax_a @ light)
            side = np.where((half_a - np.abs(pu)) < (half_b - np.abs(pv)), end, side)
        return 1.0 + 0.3 * side

    if half_l >= half_w:
        bright = facets(u, v, half_l, half_w, along, across)
    else:
        bright = facets(v, u, half_w, half_l, across, along)
    if wing is not None:
        bright = np.where(
            main[ly, lx], bright, facets(wv[ly, lx], wu[ly, lx], wing_half, wing_w / 2, across, along)
        )
    pick = min(int(np.searchsorted(_ROOF_CDF, rng.random())), len(ROOF_COLORS) - 1)
    base = ROOF_COLORS[pick] * np.float32(rng.uniform(0.88, 1.1))
    shade = bright * (1 + 0.05 * ctx.texture("grain", iy, ix) + 0.03 * ctx.texture("fine", iy, ix))
    if roof != "flat":  # shingle courses run along the ridge
        shade *= 1 + 0.04 * np.sin(v * np.float32(2.4 / max(ctx.scale, 0.5)))
    edge = outline(mask)
    shade[edge] *= 0.75 if roof != "flat" else 1.15
    if roof == "flat":
        _rooftop_units(ctx, rng, shade, mask, u, v, half_l, half_w)
    return Painted(
        kind="building",
        mask_class=BUILDING,
        land_cover=LC_BUILDING,
        elevated=True,
        rows=iy,
        cols=ix,
        mask=mask,
        color=_planar(base, shade),
        shadow=shadow,
        meta={"center": (cy, cx), "angle": angle, "roof": roof},
    )


def _rooftop_units(ctx, rng, shade, mask, u, v, half_l, half_w) -> None:
    """Small bright boxes (air conditioners, skylights) with a dark side on flat roofs."""
    sc = ctx.scale
    for _ in range(int(rng.integers(0, 4))):
        pu = rng.uniform(-0.6, 0.6) * half_l
        pv = rng.uniform(-0.5, 0.5) * half_w
        r = rng.uniform(1.0, 2.2) * sc + 0.5
        unit = (np.abs(u - pu) < r) & (np.abs(v - pv) < r) & mask
        shade[unit] = shade[unit] * 0.6 + 0.45
        side = (np.abs(u - pu - r) < 0.8) & (np.abs(v - pv) < r) & mask
        shade[side] *= 0.6


# -------------------------------------------------------------------------------------------- trees
@lru_cache(maxsize=512)
def _disc(quarter_radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sprites of a disc of radius ``quarter_radius / 4``: inside mask, dome height (-1 outside), normal."""
    r = quarter_radius / 4
    half = int(np.ceil(r))
    off = np.arange(-half, half + 1, dtype=np.float32)
    ny, nx = off[:, None] / np.float32(r), off[None, :] / np.float32(r)
    d2 = ny * ny + nx * nx
    inside = d2 < 1
    dome = np.where(inside, np.sqrt(np.maximum(1 - d2, 0)), -1).astype(np.float32)
    ny, nx = np.broadcast_to(ny, d2.shape).copy(), np.broadcast_to(nx, d2.shape).copy()
    for array in (inside, dome, ny, nx):
        array.setflags(write=False)
    return inside, dome, ny, nx


def _lit_crown(ctx: Context, quarter_radius: int) -> tuple[np.ndarray, np.ndarray]:
    """(dome, brightness) of a crown sprite under this scene's sun, cached per scene."""
    key = ("crown", quarter_radius)
    if key not in ctx.cache:
        _, dome, ny, nx = _disc(quarter_radius)
        light_y, light_x = (np.float32(v) for v in ctx.light)
        lit = 0.5 + 0.34 * (ny * light_y + nx * light_x) + 0.32 * np.maximum(dome, 0)
        ctx.cache[key] = (dome, lit.astype(np.float32))
    return ctx.cache[key]


def trees(
    ctx: Context,
    rng: np.random.Generator,
    centers: np.ndarray,
    radii: np.ndarray,
    margin: float,
    inside: bool = False,
) -> Painted | None:
    """A group of round crowns: shaded domes from cached sprites, the highest dome wins on overlap."""
    if any(ctx.taken(cy, cx) for cy, cx in centers.tolist()):
        return None
    quarters = np.maximum(np.round(radii * 4), 4).astype(int).tolist()
    keep_quarters = np.round((radii + margin) * 4).astype(int).tolist()
    pad = (max(keep_quarters) + 3) // 4 + 1
    iy_c = np.round(centers[:, 0]).astype(int)
    ix_c = np.round(centers[:, 1]).astype(int)
    grid = Grid(
        int(iy_c.min()) - pad, int(ix_c.min()) - pad, int(iy_c.max() - iy_c.min()) + 2 * pad + 1,
        int(ix_c.max() - ix_c.min()) + 2 * pad + 1,
    )  # fmt: skip
    iy_c, ix_c = (iy_c - grid.y0).tolist(), (ix_c - grid.x0).tolist()
    # keep-out first: many candidate groups in a busy scene are rejected, so reject them cheaply
    keepout = np.zeros((grid.h, grid.w), bool)
    for cy, cx, kq in zip(iy_c, ix_c, keep_quarters, strict=True):
        disc = _disc(kq)[0]
        h = disc.shape[0] // 2
        keepout[cy - h : cy + h + 1, cx - h : cx + h + 1] |= disc
    crop = ctx.fits(grid, keepout, inside)
    if crop is None:
        return None
    top = np.full((grid.h, grid.w), -1e-3, np.float32)
    shade = np.zeros((grid.h, grid.w), np.float32)
    heights = (radii * rng.uniform(0.8, 1.25, len(radii))).tolist()
    tones = rng.uniform(0.85, 1.15, len(radii)).tolist()
    for cy, cx, q, height, tone in zip(iy_c, ix_c, quarters, heights, tones, strict=True):
        dome, lit = _lit_crown(ctx, q)
        h = dome.shape[0] // 2
        win = (slice(cy - h, cy + h + 1), slice(cx - h, cx + h + 1))
        z = dome * np.float32(height)
        higher = z > top[win]
        np.maximum(top[win], z, out=top[win])
        np.copyto(shade[win], lit * np.float32(tone), where=higher)
    ly, lx, iy, ix = crop
    footprint = top > 0
    mask = footprint[ly, lx]
    if not mask.any():
        return None
    ctx.occupy(crop, keepout)
    shadow = _shadow_crop(ctx, crop, footprint, float(np.mean(heights)) * 1.1)
    leaves = 1 + 0.22 * ctx.texture("grain", iy, ix) + 0.08 * ctx.texture("fine", iy, ix)
    shade = np.clip(shade[ly, lx] * leaves, 0.22, 1.6)
    tint = CROWN_COLORS[int(rng.integers(len(CROWN_COLORS)))]
    return Painted(
        kind="trees",
        mask_class=TREE,
        land_cover=LC_TREE,
        elevated=True,
        rows=iy,
        cols=ix,
        mask=mask,
        color=_planar(tint, shade),
        shadow=shadow,
        count=len(radii),
    )


# -------------------------------------------------------------------------------------------- water
def pond(
    ctx: Context,
    rng: np.random.Generator,
    cy: float,
    cx: float,
    ry: float,
    rx: float,
    angle: float,
    margin: float,
    inside: bool = False,
) -> Painted | None:
    """An irregular pond: a rotated ellipse whose radius is wobbled by noise; dark banks, deeper middle."""
    reach = max(ry, rx) * 1.35 + margin + 1
    grid = Grid.around(cy, cx, reach, reach)
    crop = grid.crop(ctx.size)
    if crop is None or (
        inside and (crop[2].stop - crop[2].start, crop[3].stop - crop[3].start) != (grid.h, grid.w)
    ):
        return None
    _, _, iy, ix = crop
    sub = Grid(iy.start, ix.start, iy.stop - iy.start, ix.stop - ix.start)
    u, v = rect_coords(sub, cy, cx, angle)
    radius = np.sqrt((u / np.float32(rx)) ** 2 + (v / np.float32(ry)) ** 2) + 0.22 * ctx.texture(
        "mid", iy, ix
    )
    mask = radius < 1
    keepout = radius < 1 + margin / min(rx, ry)
    if not mask.any() or (ctx.occupied[iy, ix] & keepout).any():
        return None
    ctx.occupied[iy, ix] |= keepout
    depth = np.clip((1 - radius) * 3.0, 0, 1)
    ripple = 1 + 0.03 * ctx.texture("grain", iy, ix) + 0.04 * ctx.texture("fine", iy, ix)
    bank = np.float32(1) - np.float32(0.32) * (radius > 0.88)
    shallow = np.array([80, 100, 88], np.float32)
    deep = np.array([40, 66, 80], np.float32)
    color = np.empty((3, *mask.shape), np.float32)
    for c in range(3):
        color[c] = (shallow[c] + (deep[c] - shallow[c]) * depth) * ripple * bank
    return Painted(
        kind="pond",
        mask_class=WATER,
        land_cover=LC_WATER,
        elevated=False,
        rows=iy,
        cols=ix,
        mask=mask,
        color=color,
        meta={"center": (cy, cx)},
    )


# -------------------------------------------------------------------------------------------- scars
def scar(ctx: Context, rng: np.random.Generator, gone: Painted) -> Painted:
    """What a removed object leaves on its exact footprint: rubble, cleared soil or a dry bed."""
    grain = ctx.texture("grain", gone.rows, gone.cols)
    fine = ctx.texture("fine", gone.rows, gone.cols)
    if gone.kind == "building":
        kind, base, shade = "rubble", (170, 160, 144), 1 + 0.14 * grain + 0.06 * fine
        shade = shade * (1 - 0.35 * (grain > 1.3))  # scattered debris
    elif gone.kind == "trees":  # churned light soil with dark stumps and debris
        kind, base, shade = "cleared", (176, 156, 124), 1 + 0.12 * grain + 0.08 * fine
        shade = shade * (1 - 0.4 * (grain > 1.6))
    else:
        kind, base, shade = "dry_bed", (128, 116, 94), 1 + 0.07 * grain + 0.1 * fine
        shade = shade * (1 + 0.15 * outline(gone.mask))
    base = np.asarray(base, np.float32) * np.float32(rng.uniform(0.92, 1.06))
    return Painted(
        kind=kind,
        mask_class=gone.mask_class,
        land_cover=LC_BARE,
        elevated=False,
        rows=gone.rows,
        cols=gone.cols,
        mask=gone.mask,
        color=_planar(base, shade.astype(np.float32)),
    )
