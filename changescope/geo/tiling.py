"""Cut a scene into overlapping tiles and blend the per-tile predictions into a class-map GeoTIFF.

Memory stays flat in scene size: tiles are read one batch at a time, and :class:`StripMosaic` keeps float
accumulators for one tile row only (``tile`` rows of the processing window's width), writing each finished
band of rows to the GeoTIFF as soon as no later tile can touch it. Overlapping predictions are blended with
weights that ramp down towards each tile's edges, where a network sees the least context, so tile seams do
not show in the class map. A stack of T dates gives one class map per interval (date t -> t + 1), blended
side by side as the bands of one GeoTIFF (memory linear in T), and :func:`write_first_change` turns them
into the date-of-change map, again a block of rows at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from changescope.data.mix import tile_starts
from changescope.errors import require
from changescope.fileio import atomic_path
from changescope.geo.raster import _quiet
from changescope.metrics.temporal import first_change_map

if TYPE_CHECKING:
    from rasterio.windows import Window

    from changescope.geo.raster import AlignedStack

_EXTRA = "geo"
_FEATURE = "tiled scene inference"
BLOCK = 256  # GeoTIFF tile size of the output, and the number of rows written at once
MIN_WEIGHT = 1e-3  # weights never reach 0, so a pixel only one tile covers still gets a prediction


def _windows():
    return require("rasterio.windows", _EXTRA, _FEATURE)


def _starts(offset: int, length: int, tile: int, stride: int) -> list[int]:
    """Tile starts along one axis: every ``stride``, the last one snapped to end at ``offset + length``."""
    return [offset + start for start in tile_starts(length, tile, stride)]


def tile_windows(window: Window, tile: int = 256, overlap: int = 32) -> list[Window]:
    """Full-size ``tile`` x ``tile`` windows covering ``window`` with stride ``tile - overlap``, row-major.

    The last row and column are snapped to end exactly at the window's edge, so every pixel is covered and
    no tile hangs outside the window, except along an axis where the window is shorter than one tile: there
    a single tile starts at the window's origin and reads past it (the reads pad).
    """
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    Window = _windows().Window
    col0, row0 = int(window.col_off), int(window.row_off)
    width, height = int(window.width), int(window.height)
    stride = tile - overlap
    return [
        Window(col, row, tile, tile)
        for row in _starts(row0, height, tile, stride)
        for col in _starts(col0, width, tile, stride)
    ]


def _ramp(length: int, overlap: int) -> np.ndarray:
    """1-D weights rising linearly over ``overlap`` pixels from each end, 1 in between, floored above 0."""
    if overlap <= 0:
        return np.ones(length, np.float32)
    index = np.arange(length, dtype=np.float64) + 0.5
    ramp = np.minimum(1.0, np.minimum(index, length - index) / overlap)
    return np.maximum(ramp, MIN_WEIGHT).astype(np.float32)


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """float32 ``[tile, tile]`` blending weights: the outer product of two edge ramps over ``overlap``.

    Blending divides the weighted sum of predictions by the sum of weights, so any positive weights give a
    partition of unity; ramps make the hand-over between neighbouring tiles gradual instead of a seam.
    """
    ramp = _ramp(tile, overlap)
    return np.outer(ramp, ramp)


def geotiff_profile(width: int, height: int, crs: Any, transform: Any, count: int, dtype: str, nodata: int):
    """The outputs' GeoTIFF profile: 256 x 256 deflate tiles, ``nodata``; no CRS when ``crs`` is None."""
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": BLOCK,
        "blockysize": BLOCK,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    if crs is not None:
        profile.update(crs=crs, transform=transform)
    return profile


def _label(dataset: Any, descriptions: Sequence[str] | None, tags: dict[str, str] | None) -> None:
    """Band descriptions and dataset tags, written with the file: a reader finds what the bands mean."""
    for band, text in enumerate(descriptions or (), start=1):
        dataset.set_band_description(band, text)
    if tags:
        dataset.update_tags(**tags)


class _BlockWriter:
    """Collects finished uint8 rows (every band) and writes them ``BLOCK`` rows at a time, aligned to the
    GeoTIFF tiles.

    Writing whole rows of tiles once each keeps deflate-compressed tiles from being rewritten (which would
    leave dead space in the file) and bounds this buffer to ``bands x BLOCK x width`` bytes.
    """

    def __init__(self, dataset: Any, width: int, nodata: int, bands: int = 1):
        self.dataset = dataset
        self.buffer = np.full((bands, BLOCK, width), nodata, np.uint8)
        self.row0 = 0  # first row of the buffer in the output
        self.filled = 0

    def push(self, rows: np.ndarray) -> None:
        """``rows`` ``[bands, n, width]``."""
        start, count = 0, rows.shape[1]
        while start < count:
            take = min(count - start, BLOCK - self.filled)
            self.buffer[:, self.filled : self.filled + take] = rows[:, start : start + take]
            self.filled += take
            start += take
            if self.filled == BLOCK:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            window = _windows().Window(0, self.row0, self.buffer.shape[2], self.filled)
            self.dataset.write(self.buffer[:, : self.filled], window=window)
            self.row0 += self.filled
            self.filled = 0


class StripMosaic:
    """Blend overlapping tile predictions into a uint8 class-map GeoTIFF, one tile row in memory at a time.

    Tiles must arrive in row-major order (as :func:`tile_windows` gives them). The accumulators, sum of
    weight x probability per class and sum of weight, cover ``tile`` rows of the processing window's width:
    when a tile starting at a lower row arrives, every row above it is final and is written (argmax -> class
    id; ``nodata`` where no valid pixel was predicted or outside ``window``) and the rest of the buffer moves
    up. Memory is ``(layers x num_classes + 1) x tile x window width`` floats, whatever the scene height.

    ``layers`` class maps (a stack's intervals) are blended side by side with one weight per pixel, each
    into its own band. The GeoTIFF (uint8, ``layers`` bands with ``descriptions``, ``tags``, 256 x 256
    deflate tiles, ``nodata``; ``crs`` / ``transform`` as given, none when ``crs`` is None) is written to a
    temporary file beside ``path`` and renamed onto it by :meth:`close`; an error or Ctrl-C inside a
    ``with`` block, or :meth:`abort`, removes the temporary file.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        crs: Any,
        transform: Any,
        num_classes: int,
        tile: int,
        overlap: int,
        nodata: int = 255,
        window: Window | None = None,
        layers: int = 1,
        descriptions: Sequence[str] | None = None,
        tags: dict[str, str] | None = None,
    ):
        if not 1 <= num_classes <= nodata:
            raise ValueError(f"num_classes must be in 1..{nodata} (class ids must stay below nodata)")
        self.path, self.width, self.height = Path(path), int(width), int(height)
        self.num_classes, self.tile, self.overlap, self.nodata = num_classes, tile, overlap, nodata
        self.layers = layers
        self.region = self._region(window)
        cols = self.region[3] - self.region[2]
        self.sums = np.zeros((layers * num_classes, tile, cols), np.float32)  # layer-major
        self.weights = np.zeros((tile, cols), np.float32)
        self.next_row = 0  # first row not yet written; buffer row 0 is this row
        self._ramps: dict[tuple[int, int], np.ndarray] = {}
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        try:
            self._dataset = self._open(crs, transform)
            _label(self._dataset, descriptions, tags)
        except BaseException:
            if hasattr(self, "_dataset"):
                self._dataset.close()
            self._discard()
            raise
        self._writer = _BlockWriter(self._dataset, self.width, nodata, layers)
        self.closed = False

    def _region(self, window: Window | None) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1) of the processing window clipped to the raster."""
        if window is None:
            return 0, self.height, 0, self.width
        row0, col0 = max(0, int(window.row_off)), max(0, int(window.col_off))
        row1 = min(self.height, int(window.row_off + window.height))
        col1 = min(self.width, int(window.col_off + window.width))
        return row0, max(row0, row1), col0, max(col0, col1)

    def _open(self, crs: Any, transform: Any) -> Any:
        rasterio = require("rasterio", _EXTRA, _FEATURE)
        profile = geotiff_profile(self.width, self.height, crs, transform, self.layers, "uint8", self.nodata)
        with _quiet():  # no CRS is intended for inputs without georeference
            return rasterio.open(self._tmp, "w", **profile)

    def __enter__(self) -> StripMosaic:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _weights_for(self, h: int, w: int) -> np.ndarray:
        if (h, w) not in self._ramps:
            self._ramps[(h, w)] = np.outer(_ramp(h, self.overlap), _ramp(w, self.overlap))
        return self._ramps[(h, w)]

    def _finish(self, n: int) -> None:
        """Write buffer rows ``[0, n)`` and move the remaining rows up."""
        sums = self.sums[:, :n].reshape(self.layers, self.num_classes, n, -1)
        classes = np.argmax(sums, axis=1).astype(np.uint8)
        classes[:, self.weights[:n] <= 0] = self.nodata
        rows = np.full((self.layers, n, self.width), self.nodata, np.uint8)  # outside the window: nodata
        rows[:, :, self.region[2] : self.region[3]] = classes  # rows outside it have no weight: nodata too
        self._writer.push(rows)
        self.sums[:, : self.tile - n] = self.sums[:, n:]
        self.sums[:, self.tile - n :] = 0
        self.weights[: self.tile - n] = self.weights[n:]
        self.weights[self.tile - n :] = 0
        self.next_row += n

    def _advance(self, row: int) -> None:
        """Make every row above ``row`` final and write it."""
        while self.next_row < min(row, self.height):
            self._finish(min(row - self.next_row, self.tile, self.height - self.next_row))

    def add(self, window: Window, probs: np.ndarray, valid: np.ndarray) -> None:
        """Accumulate one tile: ``probs`` float ``[layers, K, h, w]`` (``[K, h, w]`` for one layer), ``valid``
        bool ``[h, w]`` (False: ignored)."""
        if self.closed:
            raise ValueError("the mosaic is closed")
        row_off, col_off = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        probs = np.asarray(probs, np.float32)
        if self.layers == 1 and probs.ndim == 3:
            probs = probs[None]
        if probs.shape != (self.layers, self.num_classes, h, w) or np.shape(valid) != (h, w):
            raise ValueError(
                f"tile {window}: probs {probs.shape} / valid {np.shape(valid)} do not fit the window"
            )
        probs = probs.reshape(self.layers * self.num_classes, h, w)
        row0, row1, col0, col1 = self.region
        r0, r1 = max(row_off, row0), min(row_off + h, row1)
        c0, c1 = max(col_off, col0), min(col_off + w, col1)
        if r0 < self.next_row:
            raise ValueError(
                f"tile {window} arrived after rows below its top were written: keep row-major order"
            )
        self._advance(r0)
        if r1 - self.next_row > self.tile:
            raise ValueError(f"tile {window} is taller than the mosaic's tile size {self.tile}")
        if r0 >= r1 or c0 >= c1:
            return
        src = (slice(r0 - row_off, r1 - row_off), slice(c0 - col_off, c1 - col_off))
        dst = (slice(r0 - self.next_row, r1 - self.next_row), slice(c0 - col0, c1 - col0))
        weight = self._weights_for(h, w)[src] * np.asarray(valid, bool)[src]
        self.sums[(slice(None), *dst)] += probs[(slice(None), *src)] * weight
        self.weights[dst] += weight

    def close(self) -> Path:
        """Write the remaining rows and rename the finished GeoTIFF onto ``path``."""
        if self.closed:
            return self.path
        try:
            self._advance(self.height)
            self._writer.flush()
            self._dataset.close()
        except BaseException:
            self.abort()
            raise
        self.closed = True
        self._stack.close()  # renames the temporary file onto path
        return self.path

    def abort(self) -> None:
        """Drop the output: close the dataset and remove the temporary file."""
        if self.closed:
            return
        self.closed = True
        self._dataset.close()
        self._discard()

    def _discard(self) -> None:
        """Leave atomic_path as if its block failed: it removes the temporary file and renames nothing."""
        self._stack.__exit__(_Aborted, _Aborted(), None)


class _Aborted(Exception):
    """Thrown into atomic_path so that it removes the temporary file instead of renaming it."""


def _as_numpy(probs: Any) -> np.ndarray:
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().float().cpu().numpy()
    return np.asarray(probs, np.float32)


def run_tiles(
    stack: AlignedStack,
    predict: Callable[[torch.Tensor], Any],
    out_path: str | Path,
    num_classes: int,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    progress: Callable[[int, int], Any] | None = None,
    *,
    descriptions: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Predict ``stack.window`` tile by tile and write the blended class maps to ``out_path`` (atomically):
    one band per interval of the stack (date t -> t + 1), so a pair gives one band.

    ``predict(images float32 [N, T, 3, tile, tile] in [0, 1])`` returns class probabilities ``[N, T - 1, K,
    tile, tile]`` (``[N, K, tile, tile]`` for a pair; numpy or tensor); it runs under ``torch.no_grad``.
    Tiles without a single valid pixel (every date holding data) are not predicted. Pixels of the first
    date's grid outside ``stack.window`` are nodata. ``progress(done, total)`` is called after every batch,
    in tiles. ``descriptions`` (one per band) and ``tags`` label the GeoTIFF.
    """
    windows = tile_windows(stack.window, tile, overlap)
    grid = (stack.width, stack.height, stack.crs, stack.transform)
    layers = len(stack) - 1
    labels = {"layers": layers, "descriptions": descriptions, "tags": tags}
    with StripMosaic(out_path, *grid, num_classes, tile, overlap, window=stack.window, **labels) as mosaic:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            reads = [(window, *stack.read(window)) for window in batch]
            reads = [(window, image, valid) for window, image, valid in reads if valid.any()]
            if reads:
                with torch.no_grad():
                    probs = _as_numpy(predict(torch.stack([image for _, image, _ in reads])))
                if layers == 1 and probs.ndim == 4:
                    probs = probs[:, None]
                expected = (len(reads), layers, num_classes, tile, tile)
                if probs.shape != expected:
                    raise ValueError(f"predict returned shape {probs.shape}, expected {expected}")
                for (window, _, valid), tile_probs in zip(reads, probs, strict=True):
                    mosaic.add(window, tile_probs, valid)
            if progress is not None:
                progress(start + len(batch), len(windows))
    return Path(out_path)


def first_change_format(intervals: int) -> tuple[str, int]:
    """(dtype, nodata) of a date-of-change map: uint8 and 255, uint16 and 65535 beyond 254 intervals."""
    return ("uint8", 255) if intervals < 255 else ("uint16", 65535)


def write_first_change(class_maps: str | Path, out_path: str | Path, tags: dict[str, str] | None = None):
    """The date-of-change GeoTIFF of a stack's class maps (band i: the classes of interval i, as
    :func:`run_tiles` writes them): per pixel the 1-based index of the first band that is not class 0, 0
    where none is, nodata where the class maps have none; on the same grid, uint8 with nodata 255 (uint16,
    65535 beyond 254 intervals), written ``BLOCK`` rows at a time and atomically. ``tags`` label it.

    Returns the pixel count of every value ``0 .. bands`` (index 0: no change; nodata not counted).
    """
    rasterio = require("rasterio", _EXTRA, _FEATURE)
    with _quiet(), rasterio.open(class_maps) as source:
        intervals, nodata_in = source.count, source.nodata
        dtype, nodata = first_change_format(intervals)
        profile = geotiff_profile(source.width, source.height, source.crs, source.transform, 1, dtype, nodata)
        counts = np.zeros(intervals + 1, np.int64)
        with atomic_path(out_path) as tmp, rasterio.open(tmp, "w", **profile) as target:
            _label(target, ["first interval with change (0: none)"], tags)
            for row in range(0, source.height, BLOCK):
                window = _windows().Window(0, row, source.width, min(BLOCK, source.height - row))
                classes = source.read(window=window)
                first = first_change_map(classes, ignore_index=nodata_in).astype(np.int64) + 1
                missing = (classes == nodata_in).any(axis=0)
                counts += np.bincount(first[~missing], minlength=intervals + 1)
                target.write(np.where(missing, nodata, first).astype(dtype), 1, window=window)
    return counts
