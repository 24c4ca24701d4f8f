"""Cut a scene into overlapping tiles and blend the per-tile predictions into a class-map GeoTIFF.

Memory stays flat in scene size: tiles are read one batch at a time, and :class:`StripMosaic` keeps float
accumulators for one tile row only (``tile`` rows of the processing window's width), writing each finished
band of rows to the GeoTIFF as soon as no later tile can touch it. Overlapping predictions are blended with
weights that ramp down towards each tile's edges, where a network sees the least context, so tile seams do
not show in the class map.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from changescope.data.mix import tile_starts
from changescope.errors import require
from changescope.fileio import atomic_path

if TYPE_CHECKING:
    from rasterio.windows import Window

    from changescope.geo.raster import AlignedPair

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


class _BlockWriter:
    """Collects finished uint8 rows and writes them ``BLOCK`` rows at a time, aligned to the GeoTIFF tiles.

    Writing whole rows of tiles once each keeps deflate-compressed tiles from being rewritten (which would
    leave dead space in the file) and bounds this buffer to ``BLOCK x width`` bytes.
    """

    def __init__(self, dataset: Any, width: int, nodata: int):
        self.dataset = dataset
        self.buffer = np.full((BLOCK, width), nodata, np.uint8)
        self.row0 = 0  # first row of the buffer in the output
        self.filled = 0

    def push(self, rows: np.ndarray) -> None:
        start = 0
        while start < len(rows):
            take = min(len(rows) - start, BLOCK - self.filled)
            self.buffer[self.filled : self.filled + take] = rows[start : start + take]
            self.filled += take
            start += take
            if self.filled == BLOCK:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            window = _windows().Window(0, self.row0, self.buffer.shape[1], self.filled)
            self.dataset.write(self.buffer[: self.filled], 1, window=window)
            self.row0 += self.filled
            self.filled = 0


class StripMosaic:
    """Blend overlapping tile predictions into a uint8 class-map GeoTIFF, one tile row in memory at a time.

    Tiles must arrive in row-major order (as :func:`tile_windows` gives them). The accumulators, sum of
    weight x probability per class and sum of weight, cover ``tile`` rows of the processing window's width:
    when a tile starting at a lower row arrives, every row above it is final and is written (argmax -> class
    id; ``nodata`` where no valid pixel was predicted or outside ``window``) and the rest of the buffer moves
    up. Memory is ``(num_classes + 1) x tile x window width`` floats, whatever the scene height.

    The GeoTIFF (uint8, 1 band, 256 x 256 deflate tiles, ``nodata``; ``crs`` / ``transform`` as given, none
    when ``crs`` is None) is written to a temporary file beside ``path`` and renamed onto it by
    :meth:`close`; an error or Ctrl-C inside a ``with`` block, or :meth:`abort`, removes the temporary file.
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
    ):
        if not 1 <= num_classes <= nodata:
            raise ValueError(f"num_classes must be in 1..{nodata} (class ids must stay below nodata)")
        self.path, self.width, self.height = Path(path), int(width), int(height)
        self.num_classes, self.tile, self.overlap, self.nodata = num_classes, tile, overlap, nodata
        self.region = self._region(window)
        cols = self.region[3] - self.region[2]
        self.sums = np.zeros((num_classes, tile, cols), np.float32)
        self.weights = np.zeros((tile, cols), np.float32)
        self.next_row = 0  # first row not yet written; buffer row 0 is this row
        self._ramps: dict[tuple[int, int], np.ndarray] = {}
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        try:
            self._dataset = self._open(crs, transform)
        except BaseException:
            self._discard()
            raise
        self._writer = _BlockWriter(self._dataset, self.width, nodata)
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
        profile = {
            "driver": "GTiff",
            "width": self.width,
            "height": self.height,
            "count": 1,
            "dtype": "uint8",
            "nodata": self.nodata,
            "tiled": True,
            "blockxsize": BLOCK,
            "blockysize": BLOCK,
            "compress": "deflate",
            "BIGTIFF": "IF_SAFER",
        }
        if crs is not None:
            profile.update(crs=crs, transform=transform)
        with warnings.catch_warnings():  # no CRS is intended for inputs without georeference
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
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
        classes = np.argmax(self.sums[:, :n], axis=0).astype(np.uint8)
        classes[self.weights[:n] <= 0] = self.nodata
        rows = np.full((n, self.width), self.nodata, np.uint8)  # columns outside the window stay nodata
        rows[:, self.region[2] : self.region[3]] = classes  # rows outside it have no weight: nodata too
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
        """Accumulate one tile: ``probs`` float ``[K, h, w]``, ``valid`` bool ``[h, w]`` (False: ignored)."""
        if self.closed:
            raise ValueError("the mosaic is closed")
        row_off, col_off = int(window.row_off), int(window.col_off)
        h, w = int(window.height), int(window.width)
        probs = np.asarray(probs, np.float32)
        if probs.shape != (self.num_classes, h, w) or np.shape(valid) != (h, w):
            raise ValueError(
                f"tile {window}: probs {probs.shape} / valid {np.shape(valid)} do not fit the window"
            )
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
    pair: AlignedPair,
    predict: Callable[[torch.Tensor], Any],
    out_path: str | Path,
    num_classes: int,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int = 8,
    progress: Callable[[int, int], Any] | None = None,
) -> Path:
    """Predict ``pair.window`` tile by tile and write the blended class map to ``out_path`` (atomically).

    ``predict(images float32 [N, 2, 3, tile, tile] in [0, 1])`` returns class probabilities ``[N, K, tile,
    tile]`` (numpy or tensor); it runs under ``torch.no_grad``. Tiles without a single valid pixel are not
    predicted. Pixels of A's grid outside ``pair.window`` are nodata. ``progress(done, total)`` is called
    after every batch, in tiles.
    """
    windows = tile_windows(pair.window, tile, overlap)
    grid = (pair.width, pair.height, pair.crs, pair.transform)
    with StripMosaic(out_path, *grid, num_classes, tile, overlap, window=pair.window) as mosaic:
        for start in range(0, len(windows), batch_size):
            batch = windows[start : start + batch_size]
            reads = [(window, *pair.read(window)) for window in batch]
            reads = [(window, image, valid) for window, image, valid in reads if valid.any()]
            if reads:
                with torch.no_grad():
                    probs = _as_numpy(predict(torch.stack([image for _, image, _ in reads])))
                expected = (len(reads), num_classes, tile, tile)
                if probs.shape != expected:
                    raise ValueError(f"predict returned shape {probs.shape}, expected {expected}")
                for (window, _, valid), tile_probs in zip(reads, probs, strict=True):
                    mosaic.add(window, tile_probs, valid)
            if progress is not None:
                progress(start + len(batch), len(windows))
    return Path(out_path)
