"""Ground: warped Voronoi parcels of lawn, meadow, dry grass, soil and ploughed land, textured by noise."""

from __future__ import annotations

import numpy as np

from changescope.data.synth.classes import LC_BARE, LC_GRASS

#: name, land cover, base colour, patch colour (mixed in by mid-scale noise), furrow amplitude
GROUND_TYPES = (
    ("lawn", LC_GRASS, (88, 108, 62), (112, 118, 74), 0.0),
    ("meadow", LC_GRASS, (108, 116, 74), (134, 130, 90), 0.0),
    ("dry_grass", LC_GRASS, (146, 138, 102), (124, 122, 86), 0.0),
    ("mown", LC_GRASS, (100, 114, 70), (120, 124, 80), 0.05),
    ("soil", LC_BARE, (172, 154, 126), (152, 134, 108), 0.0),
    ("dark_soil", LC_BARE, (134, 114, 92), (118, 102, 84), 0.0),
    ("ploughed", LC_BARE, (152, 128, 100), (130, 108, 86), 0.12),
)
GROUND_WEIGHTS = np.array([3, 3, 2, 1, 2, 1, 1], np.float64)


def parcels(rng: np.random.Generator, tex: dict[str, np.ndarray], size: int, count: int) -> np.ndarray:
    """``[S, S]`` parcel ids: a Voronoi partition warped by coarse noise so borders wander like field edges.

    The nearest seed is found with one running ``minimum`` over int32 keys: a non-negative float32
    orders like its bit pattern, so the squared distance's bits with the seed id in the 4 lowest
    mantissa bits sort by distance and carry the id. numpy does this far faster than an ``argmin``
    over a stack of distance maps.
    """
    seeds = rng.uniform(-0.1, 1.1, size=(count, 2)).astype(np.float32) * size
    warp = np.float32(0.07 * size)
    ys = np.arange(size, dtype=np.float32)[:, None] + warp * tex["coarse"]
    xs = np.arange(size, dtype=np.float32)[None, :] + warp * tex["coarse"].T
    best = np.full((size, size), np.iinfo(np.int32).max, np.int32)
    d2 = np.empty((size, size), np.float32)
    dx2 = np.empty((size, size), np.float32)
    key = d2.view(np.int32)
    for i, (sy, sx) in enumerate(seeds.tolist()):
        np.subtract(ys, np.float32(sy), out=d2)
        np.multiply(d2, d2, out=d2)
        np.subtract(xs, np.float32(sx), out=dx2)
        np.multiply(dx2, dx2, out=dx2)
        np.add(d2, dx2, out=d2)
        np.bitwise_and(key, np.int32(~15), out=key)
        np.bitwise_or(key, np.int32(i), out=key)
        np.minimum(best, key, out=best)
    return (best & 15).astype(np.int16)


def ground(rng: np.random.Generator, tex: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(planar rgb float32 [3, S, S], land cover uint8 [S, S])`` of the bare terrain of one scene."""
    count = int(rng.integers(4, 9))
    parcel = parcels(rng, tex, size, count)
    kinds = rng.choice(len(GROUND_TYPES), size=count, p=GROUND_WEIGHTS / GROUND_WEIGHTS.sum())
    jitter = rng.uniform(0.9, 1.08, size=(count, 1)).astype(np.float32)
    base = np.array([GROUND_TYPES[k][2] for k in kinds], np.float32) * jitter
    patch = np.array([GROUND_TYPES[k][3] for k in kinds], np.float32) * jitter
    shade = tex["ground_shade"]
    furrows = np.array([GROUND_TYPES[k][4] for k in kinds], np.float32)
    if furrows.any():
        angle = rng.uniform(0, np.pi)
        freq = np.float32(2 * np.pi / (rng.uniform(3.0, 5.0) * size / 256))
        axis = np.arange(size, dtype=np.float32)
        phase = axis[:, None] * np.float32(np.sin(angle) * freq)
        phase = phase + axis[None, :] * np.float32(np.cos(angle) * freq)
        shade = shade + np.take(furrows, parcel) * np.sin(phase)
    border = np.zeros((size, size), bool)
    border[1:] |= parcel[1:] != parcel[:-1]
    border[:, 1:] |= parcel[:, 1:] != parcel[:, :-1]
    shade = shade * (1 - np.float32(0.07) * border)
    # one lookup per channel: a palette of (parcel, 16 levels of patchiness) colours
    levels = np.linspace(0, 1, 16, dtype=np.float32)[None, :, None]
    palette = (base[:, None, :] + (patch - base)[:, None, :] * levels).reshape(-1, 3)
    index = parcel * 16 + tex["ground_mix"]
    rgb = np.empty((3, size, size), np.float32)
    for c in range(3):
        np.multiply(np.take(palette[:, c], index), shade, out=rgb[c])
    land_cover = np.take(np.array([GROUND_TYPES[k][1] for k in kinds], np.uint8), parcel)
    return rgb, land_cover
