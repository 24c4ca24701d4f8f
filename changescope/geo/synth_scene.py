"""Large SynthChange scenes: mosaics of SynthChange pairs (or sequences) written as georeferenced GeoTIFFs.

Each ``tile`` x ``tile`` block of the scene is one SynthChange pair (``make_pair(seed, index)``) or, for a
stack of dates, one SynthChange sequence (``render_sequence(seed, index, tile, dates)``), so the truth is
exact: ``truth.tif`` holds a pair's change classes; a stack's ``intervals.tif`` holds the classes of each
interval (one band per interval) and ``first_change.tif`` the first interval that changed (1-based, 0 =
never), as ``changescope scene`` writes them. Blocks are rendered and written one row of blocks at a time,
so writing an 8192 x 8192 scene needs memory for one row of blocks only. The mosaic has seams at block
edges (each block is its own little world); that is fine for speed, memory and location tests, and it is
not meant to look like one real place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from changescope.errors import require
from changescope.fileio import atomic_path

_FEATURE = "synthetic scenes"


@dataclass(frozen=True)
class Grid:
    """A synthetic scene's grid: ``size`` x ``size`` pixels of ``pixel`` m, north-up, its top-left corner
    at ``origin`` in ``crs``, made of ``tile`` x ``tile`` blocks (one SynthChange pair or sequence each)."""

    size: int = 1024
    tile: int = 256
    crs: str = "EPSG:32633"
    pixel: float = 0.5
    origin: tuple[float, float] = (500000.0, 5000000.0)

    def profile(self) -> dict[str, Any]:
        from affine import Affine

        if self.size % self.tile:
            raise ValueError(f"size {self.size} must be a multiple of the block size {self.tile}")
        x0, y0 = self.origin
        return {
            "driver": "GTiff",
            "width": self.size,
            "height": self.size,
            "crs": self.crs,
            "transform": Affine(self.pixel, 0.0, x0, 0.0, -self.pixel, y0),
            "dtype": "uint8",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "deflate",
        }


def _write_blocks(
    paths: dict[str, Path],
    bands: dict[str, int],
    grid: Grid,
    render: Callable[[int], dict[str, np.ndarray]],
    tags: dict[str, dict[str, str]] | None = None,
) -> None:
    """Write every file of ``paths`` block by block: ``render(index)`` gives each file's ``[bands, tile,
    tile]`` uint8 block, row-major; ``tags[name]`` are written into that file."""
    rasterio = require("rasterio", "geo", _FEATURE)
    from rasterio.windows import Window

    profile, tile, blocks = grid.profile(), grid.tile, grid.size // grid.tile
    # LIFO: the datasets close before atomic_path renames (or, on an error, removes) their files
    with contextlib.ExitStack() as stack:
        temps = {name: stack.enter_context(atomic_path(path)) for name, path in paths.items()}
        sinks = {
            name: stack.enter_context(rasterio.open(temps[name], "w", count=bands[name], **profile))
            for name in paths
        }
        for name, values in (tags or {}).items():
            sinks[name].update_tags(**values)
        for row in range(blocks):
            for col in range(blocks):
                window = Window(col * tile, row * tile, tile, tile)
                for name, block in render(row * blocks + col).items():
                    sinks[name].write(block, window=window)


def write_synth_scene(
    out: str | Path,
    size: int = 1024,
    tile: int = 256,
    seed: int = 0,
    crs: str = "EPSG:32633",
    pixel: float = 0.5,
    origin: tuple[float, float] = (500000.0, 5000000.0),
    changed: bool | None = None,
) -> dict[str, Path]:
    """Write ``A.tif``, ``B.tif`` and ``truth.tif`` (``size`` x ``size``, north-up ``pixel`` m grid at
    ``origin`` in ``crs``) into ``out``; ``changed`` forces every block to change (None: as drawn)."""
    from changescope.data.synth.scene import make_pair

    grid = Grid(size, tile, crs, pixel, origin)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bands = {"A": 3, "B": 3, "truth": 1}
    paths = {name: out / f"{name}.tif" for name in bands}

    def render(index: int) -> dict[str, np.ndarray]:
        pair = make_pair(seed, index, size=tile, changed=changed)
        return {
            "A": pair.image_a.transpose(2, 0, 1),
            "B": pair.image_b.transpose(2, 0, 1),
            "truth": pair.mask[None].astype(np.uint8),
        }

    _write_blocks(paths, bands, grid, render)
    return paths


def write_synth_stack(
    out: str | Path,
    dates: Sequence[str] = ("2016-05-01", "2018-05-01", "2020-05-01"),
    grid: Grid = Grid(size=512),
    seed: int = 0,
    tag_dates: bool = True,
    reproject: dict[int, str] | None = None,
) -> dict[str, Any]:
    """Write a stack of ``len(dates)`` dates of one place on ``grid``: ``t0.tif`` ... (RGB),
    ``intervals.tif`` (the change classes of each interval, one band per interval) and ``first_change.tif``
    (the first interval that changed, 1-based, 0 = never) into ``out``. ``tag_dates`` writes each date's
    ``TIFFTAG_DATETIME``; ``reproject`` maps a date's index to another CRS that date is then warped into
    (bilinear; outside its footprint masked). Returns the paths: ``"dates"`` (a list), ``"intervals"``,
    ``"first_change"``."""
    from changescope.data.synth.sequence import render_sequence

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = len(dates)
    bands = {f"t{t}": 3 for t in range(count)} | {"intervals": count - 1, "first_change": 1}
    paths = {name: out / f"{name}.tif" for name in bands}
    tags = {f"t{t}": {"TIFFTAG_DATETIME": f"{d.replace('-', ':')} 10:00:00"} for t, d in enumerate(dates)}

    def render(index: int) -> dict[str, np.ndarray]:
        sequence = render_sequence(seed, index, size=grid.tile, dates=count)
        blocks = {f"t{t}": image.transpose(2, 0, 1) for t, image in enumerate(sequence.images)}
        blocks["intervals"] = sequence.interval_masks.astype(np.uint8)
        blocks["first_change"] = (sequence.first_change + 1).astype(np.uint8)[None]
        return blocks

    _write_blocks(paths, bands, grid, render, tags if tag_dates else None)
    for index, target in (reproject or {}).items():
        warp_to_crs(paths[f"t{index}"], target)
    return {
        "dates": [paths[f"t{t}"] for t in range(count)],
        "intervals": paths["intervals"],
        "first_change": paths["first_change"],
    }


def warp_to_crs(path: str | Path, crs: str) -> Path:
    """Rewrite an RGB GeoTIFF in another CRS (same resolution at its centre, bilinear), its tags kept and
    the pixels outside its old footprint masked (GDAL's per-dataset mask), in place and atomically. The
    whole raster is held in memory: this is for test and benchmark inputs."""
    rasterio = require("rasterio", "geo", _FEATURE)
    from rasterio.warp import Resampling, calculate_default_transform
    from rasterio.warp import reproject as warp

    with rasterio.open(path) as src:
        profile, tags, data = src.profile, src.tags(), src.read()
        transform, width, height = calculate_default_transform(
            src.crs, crs, src.width, src.height, *src.bounds
        )
        footprint = np.full((1, src.height, src.width), 255, np.uint8)
        grids = {
            "src_transform": src.transform,
            "src_crs": src.crs,
            "dst_transform": transform,
            "dst_crs": crs,
        }
    values = np.zeros((data.shape[0], height, width), np.uint8)
    inside = np.zeros((1, height, width), np.uint8)
    warp(data, values, resampling=Resampling.bilinear, **grids)
    warp(footprint, inside, resampling=Resampling.nearest, dst_nodata=0, **grids)
    profile.update(crs=crs, transform=transform, width=width, height=height)
    with atomic_path(path) as tmp:
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(tmp, "w", **profile) as dst:
            dst.write(values)
            dst.write_mask(inside[0])
            dst.update_tags(**tags)
    return Path(path)
