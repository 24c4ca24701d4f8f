"""Open two dates of a scene, put B on A's grid and read both through one radiometric stretch.

A scene is read window by window, never whole, so memory depends on the tile size and not on the scene.
Date B is resampled onto date A's grid (CRS, transform, width, height) through a GDAL warped VRT whenever
the grids differ, so every reader downstream sees two rasters with one grid and can index both with the same
window. Both dates go through one :class:`StretchRule`, fitted on the two dates pooled: stretching each date
on its own would turn a real brightness change into no change.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from changescope.errors import DataError, require

if TYPE_CHECKING:
    from rasterio.windows import Window

_EXTRA = "geo"
_FEATURE = "reading GeoTIFF scenes"
_DEFAULT_BANDS = (1, 2, 3)


def _rasterio():
    return require("rasterio", _EXTRA, _FEATURE)


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence NotGeoreferencedWarning: a PNG without georeference is a supported input, not a problem."""
    errors = require("rasterio.errors", _EXTRA, _FEATURE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", errors.NotGeoreferencedWarning)
        yield


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _is_local(path: str | Path) -> bool:
    text = str(path)
    return "://" not in text and not text.startswith("/vsi")


def _pick_bands(path: Path, count: int, bands: Sequence[int] | None) -> tuple[int, int, int]:
    """1-based (R, G, B) band indices, checked against the raster's band count."""
    if bands is None:
        if count < 3:
            noun = "band" if count == 1 else "bands"
            raise DataError(path, f"has {count} {noun}; pass --bands with 3 band indices")
        return _DEFAULT_BANDS
    picked = tuple(int(b) for b in bands)
    if len(picked) != 3:
        raise DataError(path, f"--bands needs 3 band indices (R,G,B), got {len(picked)}: {picked}")
    for band in picked:
        if not 1 <= band <= count:
            raise DataError(path, f"band {band} does not exist: the raster has bands 1..{count}")
    return picked  # type: ignore[return-value]


class Scene:
    """One date: a rasterio dataset, the three bands read from it and its grid.

    ``crs`` is None and ``transform`` the identity when the raster has no georeference (a PNG, a JPEG, a
    TIFF without CRS): coordinates are then pixel (column, row) positions. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(
        self,
        path: str | Path,
        dataset: Any,
        bands: tuple[int, int, int],
        *,
        georeferenced: bool,
        owns: Sequence[Any] = (),
    ):
        affine = require("affine", _EXTRA, _FEATURE)
        self.path = Path(path)
        self.dataset = dataset
        self.bands = bands
        self.georeferenced = georeferenced
        self.crs = dataset.crs if georeferenced else None
        self.transform = dataset.transform if georeferenced else affine.Affine.identity()
        self.width = int(dataset.width)
        self.height = int(dataset.height)
        self.nodata = dataset.nodata
        self.dtype = np.result_type(*(np.dtype(dataset.dtypes[b - 1]) for b in bands))
        self._owns = [dataset, *owns]
        masks = require("rasterio.enums", _EXTRA, _FEATURE).MaskFlags
        self._all_valid = all(flags == [masks.all_valid] for flags in self._mask_flags(bands))

    def _mask_flags(self, bands: Sequence[int]) -> list[list[Any]]:
        return [list(self.dataset.mask_flag_enums[b - 1]) for b in bands]

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for dataset in self._owns:
            dataset.close()

    def _valid(self, data: np.ndarray, **read_args: Any) -> np.ndarray:
        """Pixels that hold data in every chosen band: not nodata, not masked, finite."""
        valid = np.isfinite(data).all(axis=0) if data.dtype.kind == "f" else np.ones(data.shape[1:], bool)
        if not self._all_valid:  # GDAL's masks cover nodata values, alpha bands and internal masks alike
            with _quiet():
                valid &= (self.dataset.read_masks(list(self.bands), **read_args) > 0).all(axis=0)
        return valid

    def read(self, window: Window, boundless: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(values float32 [3, h, w] in the raster's units, valid bool [h, w])`` of an integer window.

        With ``boundless`` the window may reach outside the raster: those pixels come back as 0 and invalid,
        so edge tiles keep their full size. The padding is done here rather than by rasterio's boundless
        read, which goes through an extra VRT per call.
        """
        row0, col0 = int(round(window.row_off)), int(round(window.col_off))
        h, w = int(round(window.height)), int(round(window.width))
        values = np.zeros((3, h, w), np.float32)
        valid = np.zeros((h, w), bool)
        r0, r1 = max(row0, 0), min(row0 + h, self.height)
        c0, c1 = max(col0, 0), min(col0 + w, self.width)
        if not boundless and (r0, r1, c0, c1) != (row0, row0 + h, col0, col0 + w):
            raise ValueError(f"window {window} reaches outside the {self.width} x {self.height} raster")
        if r0 >= r1 or c0 >= c1:
            return values, valid
        windows = require("rasterio.windows", _EXTRA, _FEATURE)
        inner = windows.Window(c0, r0, c1 - c0, r1 - r0)
        with _quiet():
            data = self.dataset.read(list(self.bands), window=inner)
        ok = self._valid(data, window=inner)
        target = (slice(r0 - row0, r1 - row0), slice(c0 - col0, c1 - col0))
        values[(slice(None), *target)] = np.where(ok, data, 0)
        valid[target] = ok
        return values, valid

    def sample(self, max_side: int = 1024) -> np.ndarray:
        """Valid pixel values ``float32 [3, n]`` of the whole raster read decimated to <= ``max_side``.

        rasterio reads at the reduced ``out_shape``, so memory is about ``max_side**2`` pixels whatever the
        scene size (GDAL reads overviews when the file has them, else it decimates while reading).
        """
        scale = min(1.0, max_side / max(self.width, self.height))
        shape = (3, max(1, round(self.height * scale)), max(1, round(self.width * scale)))
        with _quiet():
            data = self.dataset.read(list(self.bands), out_shape=shape)
        valid = self._valid(data, out_shape=shape)
        return data[:, valid].astype(np.float32)  # exact for 8- and 16-bit data, half float64's memory


def _georeferenced(path: Path, dataset: Any) -> bool:
    if dataset.crs is not None:
        return True
    gcps, _ = dataset.gcps
    if gcps:
        raise DataError(path, "is georeferenced by ground control points only; warp it to a map grid first")
    return False


def open_scene(path: str | Path, bands: Sequence[int] | None = None) -> Scene:
    """Open any raster rasterio reads and pick its (R, G, B) bands (1-based; default 1, 2, 3)."""
    rasterio = _rasterio()
    source, path = path, Path(path)  # open the caller's spelling: Path() would fold "s3://" into "s3:/"
    if _is_local(source) and not path.exists():
        raise DataError(path, "does not exist")
    with _quiet():
        try:
            dataset = rasterio.open(source)
        except rasterio.errors.RasterioIOError as err:
            raise DataError(path, f"cannot be read as a raster ({_one_line(err)})") from err
    try:
        picked = _pick_bands(path, dataset.count, bands)
        return Scene(path, dataset, picked, georeferenced=_georeferenced(path, dataset))
    except BaseException:
        dataset.close()
        raise


@dataclass
class StretchRule:
    """One linear stretch for both dates: band i's value v -> ``clip((v - low[i]) / (high[i] - low[i]))``.

    :meth:`fit` pools a decimated sample of both dates' valid pixels per band (nodata, masked and
    non-finite pixels ignored) and takes its ``percentiles`` (2nd and 98th): one rule for both dates, so a
    pixel that got brighter between the dates still reads brighter after the stretch. 8-bit data is already
    display-ready and is not stretched: the rule is then the identity (low 0, high 255), which is also what
    the model saw in training. A band with high == low maps to 0.
    """

    low: np.ndarray
    high: np.ndarray
    percentiles: tuple[float, float] = (2, 98)

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, np.float64).reshape(-1)
        self.high = np.asarray(self.high, np.float64).reshape(-1)

    @classmethod
    def identity(cls) -> StretchRule:
        """The rule for 8-bit data: 0..255 -> 0..1 unchanged (``percentiles`` keep their default)."""
        return cls(np.zeros(3), np.full(3, 255.0))

    @property
    def is_identity(self) -> bool:
        """True for the 8-bit rule: a report can say "no stretch" instead of quoting percentiles."""
        return bool((self.low == 0).all() and (self.high == 255).all())

    @classmethod
    def fit(
        cls, scene_a: Scene, scene_b: Scene, sample: int = 1024, percentiles: tuple[float, float] = (2, 98)
    ) -> StretchRule:
        if scene_a.dtype == np.uint8 and scene_b.dtype == np.uint8:
            return cls.identity()
        samples = []
        for scene in (scene_a, scene_b):
            values = scene.sample(sample)
            if values.shape[1] == 0:
                raise DataError(scene.path, f"has no valid pixels in bands {scene.bands} (all nodata?)")
            samples.append(values)
        low, high = np.percentile(np.concatenate(samples, axis=1), percentiles, axis=1)
        return cls(low, high, tuple(percentiles))

    def _broadcast(self) -> tuple[np.ndarray, np.ndarray]:
        shape = (3, 1, 1)  # band axis -3: broadcasts over [3, h, w] and [n, 3, h, w]
        span = np.where(self.high > self.low, self.high - self.low, np.inf)
        return self.low.astype(np.float32).reshape(shape), span.astype(np.float32).reshape(shape)

    def scale(self, array: np.ndarray) -> np.ndarray:
        """float32 in [0, 1] of an array with its 3 bands on axis -3: ``[3, h, w]`` or ``[n, 3, h, w]``."""
        low, span = self._broadcast()
        return np.clip((np.asarray(array, np.float32) - low) / span, 0.0, 1.0)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """uint8 of the stretched array (band axis -3), for display and 8-bit outputs."""
        return np.rint(self.scale(array) * 255.0).astype(np.uint8)


class AlignedPair:
    """Dates A and B on A's grid, and the window of that grid where both hold data.

    ``a`` and ``b`` are :class:`Scene` readers sharing ``crs``, ``transform``, ``width`` and ``height`` (B
    through a bilinear warped VRT when its grid differed). ``window`` is the overlap of the two footprints in
    A's pixels, from B's bounds transformed into A's CRS: it can include a rim of pixels that B does not
    cover when B's footprint is not axis-aligned in A's CRS; :meth:`read` marks those invalid.
    """

    def __init__(self, a: Scene, b: Scene, rule: StretchRule, window: Window):
        self.a, self.b, self.rule, self.window = a, b, rule, window
        self.crs, self.transform = a.crs, a.transform
        self.width, self.height = a.width, a.height
        self.georeferenced = a.georeferenced

    def __enter__(self) -> AlignedPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.b.close()
        self.a.close()

    def read(self, window: Window, boundless: bool = True) -> tuple[torch.Tensor, np.ndarray]:
        """``(image float32 [2, 3, h, w] in [0, 1], valid bool [h, w])``: both dates, stretched.

        A pixel is valid when both dates hold data there; invalid pixels (nodata in either date, or outside
        the raster) are 0 in both dates.
        """
        values_a, valid_a = self.a.read(window, boundless)
        values_b, valid_b = self.b.read(window, boundless)
        valid = valid_a & valid_b
        image = np.stack([self.rule.scale(values_a), self.rule.scale(values_b)])
        image[:, :, ~valid] = 0.0
        return torch.from_numpy(image), valid


def _same_grid(a: Scene, b: Scene) -> bool:
    if (a.crs != b.crs) or (a.width, a.height) != (b.width, b.height):
        return False
    tolerance = 1e-6 * max(abs(a.transform.a), abs(a.transform.e))
    return bool(np.allclose(tuple(a.transform)[:6], tuple(b.transform)[:6], rtol=0, atol=tolerance))


def _overlap_window(a: Scene, b: Scene) -> Window:
    """Window of A's grid covering the intersection of both footprints (B's bounds taken into A's CRS)."""
    windows = require("rasterio.windows", _EXTRA, _FEATURE)
    warp = require("rasterio.warp", _EXTRA, _FEATURE)
    try:
        b_bounds = warp.transform_bounds(b.crs, a.crs, *b.dataset.bounds, densify_pts=21)
    except Exception as err:  # PROJ raises several types; the user needs one line
        raise DataError(b.path, f"bounds cannot be transformed into {a.path.name}'s CRS ({err})") from err
    a_bounds = a.dataset.bounds
    left, bottom = max(a_bounds.left, b_bounds[0]), max(a_bounds.bottom, b_bounds[1])
    right, top = min(a_bounds.right, b_bounds[2]), min(a_bounds.top, b_bounds[3])
    if not (left < right and bottom < top):
        raise DataError(b.path, f"does not overlap {a.path.name}")
    t = a.transform
    if t.b != 0 or t.d != 0 or t.e > 0:  # rotated or south-up grid: take all of A, the masks do the rest
        return windows.Window(0, 0, a.width, a.height)
    win = windows.from_bounds(left, bottom, right, top, transform=t)
    col0 = max(0, math.floor(win.col_off + 1e-6))
    row0 = max(0, math.floor(win.row_off + 1e-6))
    col1 = min(a.width, math.ceil(win.col_off + win.width - 1e-6))
    row1 = min(a.height, math.ceil(win.row_off + win.height - 1e-6))
    if col1 <= col0 or row1 <= row0:
        raise DataError(b.path, f"does not overlap {a.path.name}")
    return windows.Window(col0, row0, col1 - col0, row1 - row0)


def _on_grid(a: Scene, b: Scene) -> Scene:
    """B itself when it already has A's grid, else B resampled (bilinear) onto A's grid."""
    if _same_grid(a, b):
        return b
    vrt_mod = require("rasterio.vrt", _EXTRA, _FEATURE)
    resampling = require("rasterio.enums", _EXTRA, _FEATURE).Resampling
    grid = {"crs": a.crs, "transform": a.transform, "width": a.width, "height": a.height}
    try:
        with _quiet():
            vrt = vrt_mod.WarpedVRT(
                b.dataset, resampling=resampling.bilinear, add_alpha=b.nodata is None, **grid
            )
    except Exception as err:  # GDAL/PROJ errors vary; the user needs one line
        raise DataError(b.path, f"cannot be resampled onto {a.path.name}'s grid ({_one_line(err)})") from err
    return Scene(b.path, vrt, b.bands, georeferenced=True, owns=[b.dataset])


def _check_plain_pair(a: Scene, b: Scene) -> None:
    if (a.width, a.height) != (b.width, b.height):
        raise DataError(
            b.path,
            f"is {b.width} x {b.height} pixels but {a.path.name} is {a.width} x {a.height}; "
            "images without georeference must have the same size",
        )


def aligned_pair(
    path_a: str | Path,
    path_b: str | Path,
    bands: Sequence[int] | None = None,
    *,
    bands_b: Sequence[int] | None = None,
    sample: int = 1024,
) -> AlignedPair:
    """Open A and B, check they overlap, put B on A's grid and fit one stretch for both.

    ``bands`` (1-based R, G, B) apply to both dates unless ``bands_b`` gives B's own. Two rasters without
    georeference are taken as pixel grids and must have the same size. Close the result (context manager).
    """
    scene_a = open_scene(path_a, bands)
    try:
        scene_b = open_scene(path_b, bands if bands_b is None else bands_b)
    except BaseException:
        scene_a.close()
        raise
    try:
        if scene_a.georeferenced != scene_b.georeferenced:
            has, lacks = (scene_a, scene_b) if scene_a.georeferenced else (scene_b, scene_a)
            problem = (
                f"has no georeference but {has.path.name} has; give two georeferenced rasters or two images"
            )
            raise DataError(lacks.path, problem)
        if scene_a.georeferenced:
            window = _overlap_window(scene_a, scene_b)
        else:
            _check_plain_pair(scene_a, scene_b)
            window = require("rasterio.windows", _EXTRA, _FEATURE).Window(0, 0, scene_a.width, scene_a.height)
        rule = StretchRule.fit(scene_a, scene_b, sample)
        b_on_a = _on_grid(scene_a, scene_b) if scene_a.georeferenced else scene_b
    except BaseException:
        scene_b.close()
        scene_a.close()
        raise
    return AlignedPair(scene_a, b_on_a, rule, window)


def pixel_size_m(crs, transform, width: int, height: int) -> float | None:
    """The ground sampling distance of a grid in metres per pixel (mean of both axes): from the CRS's
    linear unit when projected, from degrees at the grid's centre latitude when geographic; None without
    a CRS."""
    if crs is None:
        return None
    size_x, size_y = abs(transform.a), abs(transform.e)
    if crs.is_projected:
        try:
            factor = float(crs.linear_units_factor[1])
        except Exception:  # noqa: BLE001 - GDAL raises CRSError for a CRS without linear units
            factor = 1.0
        return (size_x + size_y) / 2 * factor
    lat = transform.f + transform.e * height / 2
    metres_per_degree = 111_320.0
    return (size_x * math.cos(math.radians(lat)) + size_y) / 2 * metres_per_degree
