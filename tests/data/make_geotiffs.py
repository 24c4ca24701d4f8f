#!/usr/bin/env python3
"""Small GeoTIFF pairs of one synthetic place, with a painted change at a known spot.

The ground is a function of position in date A's pixel grid, so date B can be written on any grid (another
CRS, resolution or extent) by evaluating the same function at B's pixel centres, with no resampling in the
fixture: whatever resampling the code under test does is the only one. The ground has a dark strip
("water", left), a bright strip ("sand", top) and a gentle texture between them; the change is a very bright
rectangle in B, given in A's pixels. A percentile stretch keeps the texture mid-grey because the water and
the sand hold the 2nd and 98th percentiles, as in a real scene.

Import ``make_pair``, ``make_png_pair`` and ``paint_copy`` from tests, or look at the files::

    python tests/data/make_geotiffs.py OUT

Nothing here imports changescope: a fixture must not be shaped by the code it tests.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from PIL import Image
from rasterio.warp import calculate_default_transform
from rasterio.warp import transform as transform_points

#: origin (x, y of the top-left corner) and pixel size of A's grid per CRS, all near 45.1 N 15 E
GRIDS: dict[str, tuple[tuple[float, float], float]] = {
    "EPSG:32633": ((500_000.0, 4_995_000.0), 10.0),  # UTM 33N, metres
    "EPSG:4326": ((15.0, 45.1), 0.0001),  # degrees (about 8 x 11 m)
    "EPSG:3857": ((1_669_792.0, 5_636_000.0), 10.0),  # Web Mercator, metres (about 7 m on the ground)
}
WATER, SAND, CHANGE = 0.03, 0.9, 1.0  # reflectance-like levels in [0, 1]
SCALE = {"uint8": 255.0, "uint16": 10_000.0, "int16": 10_000.0, "float32": 1.0, "float64": 1.0}


def apply_affine(transform: Affine, x, y):
    """``transform`` applied to points (scalars or arrays), spelled out: affine 3 deprecates ``*``."""
    t = transform
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


@dataclass(frozen=True)
class Change:
    """A rectangle in A's pixels: columns [col, col + width), rows [row, row + height)."""

    col: int
    row: int
    width: int
    height: int

    @property
    def centre(self) -> tuple[float, float]:
        """(x, y) = (column, row) of the rectangle's centre, in A's continuous pixel coordinates."""
        return self.col + self.width / 2, self.row + self.height / 2

    def contains(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return (u >= self.col) & (u < self.col + self.width) & (v >= self.row) & (v < self.row + self.height)


@dataclass
class Pair:
    """What ``make_pair`` wrote: both paths, A's grid, and the change in A's pixels."""

    a: Path
    b: Path
    crs: str
    transform: Affine
    width: int
    height: int
    change: Change | None


def ground(u: np.ndarray, v: np.ndarray, bands: int, size: tuple[int, int]) -> np.ndarray:
    """Reflectance ``[bands, ...]`` at A-pixel coordinates (u = column, v = row; pixel centres at .5)."""
    width, height = size
    out = np.empty((bands, *u.shape), np.float64)
    for band in range(bands):
        texture = (
            0.35 + 0.06 * np.sin(u / 9.0 + band) * np.cos(v / 13.0 - band) + 0.03 * np.sin((u + v) / 6.0)
        )
        out[band] = texture
        out[band][u < 0.1 * width] = WATER + 0.01 * band
        out[band][v < 0.08 * height] = SAND - 0.02 * band
    return out


def to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    scaled = values * SCALE[dtype]
    return scaled.astype(dtype) if dtype.startswith("float") else np.rint(scaled).astype(dtype)


def a_grid(crs: str, pixel: float | None = None, origin: tuple[float, float] | None = None) -> Affine:
    """A's transform in ``crs``: north-up, top-left corner at ``origin``, square ``pixel`` (see GRIDS)."""
    default_origin, default_pixel = GRIDS[crs]
    x0, y0 = origin or default_origin
    size = pixel or default_pixel
    return Affine(size, 0.0, x0, 0.0, -size, y0)


def _b_grid(pair_crs: str, a_transform: Affine, size, b_crs, b_pixel, b_shift) -> tuple[Affine, int, int]:
    """B's grid: A's footprint moved by ``b_shift`` A-pixels, in ``b_crs`` at ``b_pixel`` (None: A's)."""
    width, height = size
    dx, dy = b_shift
    left, top = apply_affine(a_transform, dx, dy)
    right, bottom = apply_affine(a_transform, dx + width, dy + height)
    if b_crs == pair_crs and b_pixel is None:
        return Affine(a_transform.a, 0.0, left, 0.0, a_transform.e, top), width, height
    bounds = (min(left, right), min(top, bottom), max(left, right), max(top, bottom))
    kwargs = {"resolution": b_pixel} if b_pixel is not None else {}
    transform, w, h = calculate_default_transform(pair_crs, b_crs, width, height, *bounds, **kwargs)
    return transform, w, h


def _a_pixels_of(grid: Affine, w: int, h: int, crs: str, a_crs: str, a_transform: Affine):
    """A-pixel coordinates (u, v) of the centres of a ``w`` x ``h`` grid in ``crs``."""
    cols, rows = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    xs, ys = apply_affine(grid, cols.ravel(), rows.ravel())
    if crs != a_crs:
        xs, ys = transform_points(crs, a_crs, xs, ys)
    u, v = apply_affine(~a_transform, np.asarray(xs), np.asarray(ys))
    return np.asarray(u).reshape(h, w), np.asarray(v).reshape(h, w)


def write_geotiff(path: Path, data: np.ndarray, crs: str | None, transform: Affine, nodata=None) -> Path:
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1], "count": data.shape[0]}
    profile.update(dtype=str(data.dtype), crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(data)
    return path


def _date(u, v, *, bands, size, dtype, nodata, change, nodata_box) -> np.ndarray:
    values = ground(u, v, bands, size)
    if change is not None:
        values[:, change.contains(u, v)] = CHANGE
    data = to_dtype(values, dtype)
    if nodata_box is not None and nodata is not None:
        data[:, nodata_box.contains(u, v)] = nodata
    return data


def make_pair(
    directory: str | Path,
    *,
    crs: str = "EPSG:32633",
    size: tuple[int, int] = (300, 200),
    pixel: float | None = None,
    origin: tuple[float, float] | None = None,
    dtype: str = "uint8",
    bands: int = 3,
    nodata: float | None = None,
    change: Change | None = Change(150, 100, 12, 10),
    nodata_box_a: Change | None = None,
    nodata_box_b: Change | None = None,
    b_crs: str | None = None,
    b_pixel: float | None = None,
    b_shift: tuple[float, float] = (0, 0),
    name: str = "scene",
) -> Pair:
    """Write ``{name}_a.tif`` and ``{name}_b.tif`` (``size`` = width, height of A) and say what they hold.

    ``change`` and the nodata boxes are rectangles in A's pixels; nodata boxes are written only when
    ``nodata`` is set. B sits on A's grid unless ``b_crs``, ``b_pixel`` (in B's CRS units) or ``b_shift``
    (in A pixels, moves B's extent) say otherwise.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    a_transform = a_grid(crs, pixel, origin)
    width, height = size
    common = {"bands": bands, "size": size, "dtype": dtype, "nodata": nodata}
    u, v = _a_pixels_of(a_transform, width, height, crs, crs, a_transform)
    a_data = _date(u, v, change=None, nodata_box=nodata_box_a, **common)
    path_a = write_geotiff(directory / f"{name}_a.tif", a_data, crs, a_transform, nodata)
    b_crs = b_crs or crs
    b_transform, b_w, b_h = _b_grid(crs, a_transform, size, b_crs, b_pixel, b_shift)
    u, v = _a_pixels_of(b_transform, b_w, b_h, b_crs, crs, a_transform)
    b_data = _date(u, v, change=change, nodata_box=nodata_box_b, **common)
    path_b = write_geotiff(directory / f"{name}_b.tif", b_data, b_crs, b_transform, nodata)
    return Pair(path_a, path_b, crs, a_transform, width, height, change)


def make_png_pair(
    directory: str | Path, size: tuple[int, int] = (120, 90), change: Change = Change(60, 40, 10, 8)
):
    """Two RGB PNGs without georeference, the change painted into B; returns (path_a, path_b, change)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    width, height = size
    u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    paths = []
    for name, painted in (("a", None), ("b", change)):
        data = _date(u, v, bands=3, size=size, dtype="uint8", nodata=None, change=painted, nodata_box=None)
        path = directory / f"plain_{name}.png"
        Image.fromarray(np.moveaxis(data, 0, -1)).save(path)
        paths.append(path)
    return paths[0], paths[1], change


def paint_copy(src: str | Path, dst: str | Path, change: Change, value: float = 255) -> Path:
    """Copy a real raster and paint ``value`` into ``change`` (its pixels) in every band."""
    shutil.copyfile(src, dst)
    with rasterio.open(dst, "r+") as dataset:
        window = rasterio.windows.Window(change.col, change.row, change.width, change.height)
        block = np.full((dataset.count, change.height, change.width), value, dtype=dataset.dtypes[0])
        dataset.write(block, window=window)
    return Path(dst)


def main(out: str) -> None:
    for crs in GRIDS:
        tag = crs.replace(":", "")
        make_pair(out, crs=crs, name=f"{tag}_uint8")
        make_pair(
            out, crs=crs, dtype="uint16", nodata=0, nodata_box_a=Change(250, 150, 40, 40), name=f"{tag}_u16"
        )
    make_pair(out, b_crs="EPSG:4326", name="utm_vs_4326")
    make_pair(
        out, dtype="float32", nodata=-9999.0, b_pixel=20.0, b_shift=(40, 30), name="float_coarser_shifted"
    )
    make_png_pair(out)
    print(f"wrote {len(list(Path(out).iterdir()))} files to {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "geotiff_fixtures")
