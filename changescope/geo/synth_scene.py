"""A large SynthChange scene: a mosaic of SynthChange pairs written as a georeferenced GeoTIFF pair.

Each ``tile`` x ``tile`` block of the scene is one SynthChange pair (``make_pair(seed, index)``), so the
truth is exact: ``truth.tif`` holds the change classes. Blocks are rendered and written one row of blocks at a
time, so writing an 8192 x 8192 scene needs memory for one row of blocks only. The mosaic has seams at block
edges (each block is its own little world); that is fine for speed, memory and location tests, and it is not
meant to look like one real place.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from changescope.errors import require
from changescope.fileio import atomic_path


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
    rasterio = require("rasterio", "geo", "synthetic scenes")
    from affine import Affine
    from rasterio.windows import Window

    from changescope.data.synth.scene import make_pair

    if size % tile:
        raise ValueError(f"size {size} must be a multiple of the block size {tile}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    transform = Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1])
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": crs,
        "transform": transform,
        "dtype": "uint8",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    bands = {"A": 3, "B": 3, "truth": 1}
    paths = {name: out / f"{name}.tif" for name in bands}
    # LIFO: the datasets close before atomic_path renames (or, on an error, removes) their files
    with contextlib.ExitStack() as stack:
        temps = {name: stack.enter_context(atomic_path(path)) for name, path in paths.items()}
        sinks = {
            name: stack.enter_context(rasterio.open(temps[name], "w", count=count, **profile))
            for name, count in bands.items()
        }
        blocks = size // tile
        for row in range(blocks):
            for col in range(blocks):
                pair = make_pair(seed, row * blocks + col, size=tile, changed=changed)
                window = Window(col * tile, row * tile, tile, tile)
                sinks["A"].write(pair.image_a.transpose(2, 0, 1), window=window)
                sinks["B"].write(pair.image_b.transpose(2, 0, 1), window=window)
                sinks["truth"].write(pair.mask[None].astype(np.uint8), window=window)
    return paths
