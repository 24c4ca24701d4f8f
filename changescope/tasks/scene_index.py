"""A scene pair in a search index: two co-registered scenes cut into tiles, one index row per tile.

The scenes are read as ``changescope scene`` reads them (``geo.raster.aligned_pair``: B on A's grid, one
stretch rule for both dates, window by window so memory stays flat in scene size) and cut into
non-overlapping ``tile`` x ``tile`` windows of the overlap (``geo.tiling.tile_windows``; the last row and
column are snapped to end at the overlap's edge). Each tile that holds valid pixels is embedded by the
retrieval head and stored with:

* ``id``: ``tile_<row>_<col>``, the tile's row and column in the grid of tiles;
* ``window``: ``[x, y, w, h]`` in A's pixels (as read: a scene smaller than one tile is read padded);
* ``footprint``: the window's part inside A as an RFC 7946 GeoJSON Polygon in WGS 84 longitude /
  latitude (exterior ring anticlockwise, 7 decimals), or None when the scenes have no georeference or
  PROJ cannot reach longitude / latitude from their CRS;
* ``before`` / ``after``: the scene paths; ``tile``: the tile size; ``crs``: A's CRS.

Tile ids name grid positions, so an index holds the tiles of one scene pair at one tile size: another
pair, or another ``tile``, on the same index is refused in one line (give another ``--out``).

With ``clip=`` (a ``models.clip_encoders.ClipEncoder``) the tiles are embedded by that CLIP instead, as
``tasks.search`` embeds pairs with one; a tile whose dates embed identically is counted as ``unchanged``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changescope.errors import ChangescopeError, DataError, require

#: the rows of a scene tile carry this key (what tells them from pairs of files)
TILE_KEY = "window"


def _scene_path(path: str | Path) -> str:
    text = str(path)
    return text if "://" in text or text.startswith("/vsi") else str(Path(text).resolve())


def tile_rows(pair, a: str | Path, b: str | Path, tile: int) -> list[tuple[dict[str, Any], Any]]:
    """``(row, window)`` for every tile of ``pair.window`` (an ``AlignedPair``), row-major; rows as the
    module docstring says (nothing is read here)."""
    from changescope.geo.tiling import tile_windows
    from changescope.tasks.scene import _crs_text

    windows = tile_windows(pair.window, tile, 0)
    row_index = {r: i for i, r in enumerate(sorted({int(w.row_off) for w in windows}))}
    col_index = {c: i for i, c in enumerate(sorted({int(w.col_off) for w in windows}))}
    to_lonlat = _lonlat_transformer(pair)
    crs = _crs_text(pair.crs) if pair.georeferenced else None
    paths = {"before": _scene_path(a), "after": _scene_path(b)}
    rows = []
    for window in windows:
        x, y, w, h = (int(v) for v in (window.col_off, window.row_off, window.width, window.height))
        row = {
            "id": f"tile_{row_index[y]}_{col_index[x]}",
            **paths,
            "window": [x, y, w, h],
            "footprint": _footprint(pair, (x, y, w, h), to_lonlat),
            "tile": tile,
            "crs": crs,
        }
        rows.append((row, window))
    return rows


def _lonlat_transformer(pair):
    if not pair.georeferenced:
        return None
    from changescope.geo.vectors import _to_lonlat_or_none

    return _to_lonlat_or_none(pair.crs)


def _footprint(pair, window: tuple[int, int, int, int], to_lonlat) -> dict[str, Any] | None:
    """The window's part inside A, as a GeoJSON Polygon in lon/lat (None without a way to lon/lat)."""
    if to_lonlat is None:
        return None
    shapely = require("shapely", "geo", "scene tile footprints")
    from changescope.geo.vectors import _apply, _geojson_geometry

    x, y, w, h = window
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, pair.width), min(y + h, pair.height)
    corners = [_apply(pair.transform, cx, cy) for cx, cy in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    return _geojson_geometry(shapely.Polygon(corners), to_lonlat)


def iter_tile_embeddings(
    model, processor, pair, rows: list[tuple[dict, Any]], batch_size: int = 8, clip=None
) -> Iterator[tuple[dict, np.ndarray]]:
    """``(row, unit embedding)`` for every tile that holds valid pixels (tiles without are skipped),
    ``batch_size`` tiles read and embedded at a time. With ``clip`` (a ``ClipEncoder``; ``model`` and
    ``processor`` unused) each tile is ``clip.embed_pairs(before, after)``: zero when nothing changed."""
    if clip is not None:
        yield from _clip_tile_embeddings(clip, pair, rows, batch_size)
        return
    model.require("retrieval")
    remaining = iter(rows)
    with torch.inference_mode():
        while chunk := list(itertools.islice(remaining, batch_size)):
            reads = [(row, *pair.read(window)) for row, window in chunk]
            reads = [(row, image) for row, image, valid in reads if valid.any()]
            if not reads:
                continue
            images = processor.resize(torch.stack([image for _, image in reads]))
            vectors = model.embed_pairs(model(images, masks=False).memory).numpy()
            yield from zip((row for row, _ in reads), vectors, strict=True)


def _clip_tile_embeddings(clip, pair, rows, batch_size: int) -> Iterator[tuple[dict, np.ndarray]]:
    remaining = iter(rows)
    while chunk := list(itertools.islice(remaining, batch_size)):
        reads = [(row, *pair.read(window)) for row, window in chunk]
        reads = [(row, image) for row, image, valid in reads if valid.any()]
        if not reads:
            continue
        images = clip.resize(torch.stack([image for _, image in reads]))  # [B, 2, 3, S, S]
        vectors = clip.embed_pairs(images[:, 0], images[:, 1]).numpy()
        yield from zip((row for row, _ in reads), vectors, strict=True)


def _held_tile(out: Path) -> dict[str, Any] | None:
    """The first scene-tile row of the index saved in ``out`` (its ``items.jsonl``), or None."""
    import json

    from changescope.retrieval.index import ITEMS

    items = out / ITEMS
    if not items.is_file():
        return None
    try:
        with items.open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                if isinstance(row, dict) and TILE_KEY in row:
                    return row
    except (OSError, ValueError):  # a damaged index: PairIndex.load says what is wrong with it
        return None
    return None


def _check_same_scene(out: Path, wanted: dict[str, Any]) -> None:
    """Refuse the tiles of another scene pair, or another tile size, on an index that holds tiles."""
    held = _held_tile(out)
    keys = ("before", "after", "tile")
    if held is not None and tuple(held.get(k) for k in keys) != tuple(wanted[k] for k in keys):
        raise DataError(
            out,
            f"holds the {held.get('tile')} px tiles of {held.get('before')} and {held.get('after')}: tile "
            "ids name grid positions, so an index holds one scene pair at one tile size (give another --out)",
        )


def build_scene_index(
    spec: str | Path,
    a: str | Path,
    b: str | Path,
    out: str | Path,
    tile: int = 256,
    batch_size: int = 8,
    precision: str | None = None,
    progress: Callable[[int, int], Any] | None = None,
    bands: tuple[int, int, int] | None = None,
    stretch: str = "auto",
    clip=None,
) -> dict[str, Any]:
    """Add the tiles of scenes ``a`` and ``b`` to the index folder ``out`` (created when absent); tiles
    the index holds already are skipped. Returns ``{"added", "kept", "total", "index", "tiles", "skipped",
    "unchanged"}`` (``skipped``: tiles without a valid pixel in both dates; ``unchanged``: with ``clip``, a
    ``ClipEncoder`` that then embeds the tiles instead of ``spec``'s model, tiles whose dates embed
    identically). ``progress(done, total)`` counts tiles."""
    from changescope.geo.raster import aligned_pair
    from changescope.tasks.inference import load
    from changescope.tasks.scene import GDAL_CACHE_MB
    from changescope.tasks.search import model_identity, open_index

    rasterio = require("rasterio", "geo", "scene indexes")
    if tile < 32:
        raise ChangescopeError(f"--tile must be >= 32, got {tile}")
    out = Path(out)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), aligned_pair(a, b, bands, stretch=stretch) as pair:
        rows = tile_rows(pair, a, b, tile)
        if rows:  # before the model loads: a refusal costs nothing
            _check_same_scene(out, rows[0][0])
        if clip is None:
            model, processor, path = load(spec, precision)
            model.require("retrieval")
            identity = model_identity(model, path)
        else:
            model = processor = None
            identity = clip.identity()
        index = open_index(out, identity)
        known = set(index.ids())
        pending = [(row, window) for row, window in rows if row["id"] not in known]
        done, added, unchanged = 0, 0, 0
        vectors, batch = [], []
        if progress is not None:
            progress(0, len(pending))
        try:
            for start in range(0, len(pending), batch_size):
                chunk = pending[start : start + batch_size]
                for row, vector in iter_tile_embeddings(model, processor, pair, chunk, batch_size, clip):
                    if not vector.any():  # a CLIP's tile without change: no direction to store
                        unchanged += 1
                        continue
                    batch.append(row)
                    vectors.append(vector)
                if batch:
                    added += index.add(np.stack(vectors), batch)
                    vectors, batch = [], []
                done += len(chunk)
                if progress is not None:
                    progress(done, len(pending))
        except BaseException:  # Ctrl-C, a read error: keep the tiles embedded so far, a rerun goes on
            if added:
                index.save(out)
            raise
        index.save(out)
    return {
        "added": added,
        "kept": len(rows) - len(pending),
        "skipped": len(pending) - added - unchanged,
        "unchanged": unchanged,
        "tiles": len(rows),
        "total": len(index),
        "index": str(out),
    }
