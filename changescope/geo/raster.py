"""Open the dates of a scene (two, or a stack of T), put every date on the first date's grid and read them
all through one radiometric stretch.

A scene is read window by window, never whole, so memory depends on the tile size and not on the scene.
Every later date is resampled onto the first date's grid (CRS, transform, width, height) through a GDAL
warped VRT whenever the grids differ, so every reader downstream sees rasters with one grid and can index
them all with the same window. All dates go through one :class:`StretchRule`, fitted on the dates pooled:
stretching each date on its own would turn a real brightness change into no change. A pair (A, B) is the
stack of two dates (:func:`aligned_pair` is :func:`aligned_stack` of two paths).

Which bands are R, G, B (:func:`pick_bands`), unless given: the band descriptions when they name one red,
one green and one blue band (``BAND_NAMES``: red / green / blue, Sentinel-2 B04 / B03 / B02, Landsat 8-9
B4 / B3 / B2 and SR_B4 / SR_B3 / SR_B2), else the colour interpretation when it does, else bands 1, 2, 3.
Descriptions come first because GDAL gives every 3- or 4-band 8-bit GeoTIFF the colour interpretation
red, green, blue on bands 1, 2, 3 unless told otherwise, so in a GeoTIFF that default says nothing about
what the bands hold (it is taken as "first three bands"); a PNG's or JPEG's colour interpretation is the
format's own and counts. Landsat 4-7 number their bands differently (red is band 3): their files need
``bands``.
"""

from __future__ import annotations

import itertools
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
_COLOURS = ("red", "green", "blue")
#: band descriptions (case and surrounding spaces ignored) that name a colour: common names, Sentinel-2
#: (B04 / B03 / B02, also spelled B4 / B3 / B2) and Landsat 8-9 (B4 / B3 / B2; Collection 2 SR_B4 ...)
BAND_NAMES = {
    "red": ("red", "b04", "b4", "sr_b4"),
    "green": ("green", "b03", "b3", "sr_b3"),
    "blue": ("blue", "b02", "b2", "sr_b2"),
}
#: where the R, G, B band indices came from, as ``Scene.band_source`` and the scene summary say
FROM_BANDS, FROM_DESCRIPTIONS, FROM_COLORINTERP, FROM_DEFAULT = (
    "--bands",
    "band descriptions",
    "colour interpretation",
    "first three bands",
)
#: ``StretchRule.fit`` modes: "auto" (8-bit: identity unless dark / low contrast), "none", "percentile"
STRETCH_MODES = ("auto", "none", "percentile")
#: "auto" stretches 8-bit data whose widest band spreads its 2nd-98th percentiles over fewer levels
#: (3/8 of 0..255). Measured (widest band, both dates pooled): SynthChange pairs 95..189 (5th percentile
#: 114), the real 8-bit training sets shown to the model as they are 100..240 (xBD 109..190, SZTAKI
#: 127..224, OSCD quick-looks mostly 100..238); dark DN scenes 43..83 (Landsat 7 ETM+ L7_ETMs bands 3,2,1:
#: 83; the Landsat Taizhou scene, which training itself stretches, about 43; OSCD Saclay quick-looks 50..60).
#: Half the range (128) would stretch a quarter of the training chips; 96 stretches only the dark scenes.
LOW_CONTRAST_SPREAD = 96.0


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


def _colour_of(description: str | None) -> str | None:
    text = (description or "").strip().lower()
    return next((colour for colour, names in BAND_NAMES.items() if text in names), None)


def _rgb_of(colours: Sequence[str | None]) -> tuple[int, int, int] | None:
    """1-based (R, G, B) when exactly one band has each colour, else None."""
    found = []
    for colour in _COLOURS:
        hits = [i + 1 for i, c in enumerate(colours) if c == colour]
        if len(hits) != 1:
            return None
        found.append(hits[0])
    return found[0], found[1], found[2]


def _colorinterp_names(dataset: Any) -> list[str]:
    return [ci.name for ci in dataset.colorinterp]


def band_labels(dataset: Any) -> list[str | None]:
    """Each band's label: its description, else its colour interpretation when that names something
    (not gray / undefined), else None."""
    names = _colorinterp_names(dataset)
    labels = []
    for index in range(dataset.count):
        description = (dataset.descriptions[index] or "").strip()
        interp = names[index]
        labels.append(description or (interp if interp not in ("gray", "undefined") else None))
    return labels


def _auto_bands(dataset: Any) -> tuple[tuple[int, int, int] | None, str]:
    """(R, G, B, source) read from the band descriptions or the colour interpretation; (None, default)."""
    by_description = _rgb_of([_colour_of(d) for d in dataset.descriptions])
    if by_description is not None:
        return by_description, FROM_DESCRIPTIONS
    interp = _colorinterp_names(dataset)
    by_interp = _rgb_of([n if n in _COLOURS else None for n in interp])
    gdal_default = by_interp == _DEFAULT_BANDS and dataset.driver == "GTiff"  # see the module docstring
    if by_interp is not None and not gdal_default:
        return by_interp, FROM_COLORINTERP
    return None, FROM_DEFAULT


def pick_bands(path: Path, dataset: Any, bands: Sequence[int] | None) -> tuple[tuple[int, int, int], str]:
    """1-based (R, G, B) band indices and where they came from (``FROM_*``), checked against the raster."""
    count = dataset.count
    if bands is None:
        picked, source = _auto_bands(dataset)
        if picked is not None:
            return picked, source
        if count < 3:
            noun = "band" if count == 1 else "bands"
            raise DataError(path, f"has {count} {noun}; pass --bands with 3 band indices")
        return _DEFAULT_BANDS, FROM_DEFAULT
    picked = tuple(int(b) for b in bands)
    if len(picked) != 3:
        raise DataError(path, f"--bands needs 3 band indices (R,G,B), got {len(picked)}: {picked}")
    for band in picked:
        if not 1 <= band <= count:
            raise DataError(path, f"band {band} does not exist: the raster has bands 1..{count}")
    return picked, FROM_BANDS  # type: ignore[return-value]


class Scene:
    """One date: a rasterio dataset, the three bands read from it and its grid.

    ``crs`` is None and ``transform`` the identity when the raster has no georeference (a PNG, a JPEG, a
    TIFF without CRS): coordinates are then pixel (column, row) positions. ``band_source`` says where
    ``bands`` came from (``FROM_*``) and ``labels`` holds the chosen bands' descriptions or colour
    interpretations (None where a band has neither). Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        path: str | Path,
        dataset: Any,
        bands: tuple[int, int, int],
        *,
        georeferenced: bool,
        owns: Sequence[Any] = (),
        band_source: str = FROM_BANDS,
        labels: Sequence[str | None] | None = None,
    ):
        affine = require("affine", _EXTRA, _FEATURE)
        self.path = Path(path)
        self.dataset = dataset
        self.bands = bands
        self.band_source = band_source
        self.labels = (
            tuple(labels) if labels is not None else tuple(band_labels(dataset)[b - 1] for b in bands)
        )
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


def open_dataset(path: str | Path) -> Any:
    """The rasterio dataset of any raster rasterio reads; a missing or unreadable file is one DataError."""
    rasterio = _rasterio()
    source, path = path, Path(path)  # open the caller's spelling: Path() would fold "s3://" into "s3:/"
    if _is_local(source) and not path.exists():
        raise DataError(path, "does not exist")
    with _quiet():
        try:
            return rasterio.open(source)
        except rasterio.errors.RasterioIOError as err:
            raise DataError(path, f"cannot be read as a raster ({_one_line(err)})") from err


def open_scene(path: str | Path, bands: Sequence[int] | None = None) -> Scene:
    """Open any raster rasterio reads and pick its (R, G, B) bands (1-based; None: from the band
    descriptions or colour interpretation, else 1, 2, 3; see the module docstring)."""
    dataset, path = open_dataset(path), Path(path)
    try:
        picked, source = pick_bands(path, dataset, bands)
        return Scene(path, dataset, picked, georeferenced=_georeferenced(path, dataset), band_source=source)
    except BaseException:
        dataset.close()
        raise


def _ordinal(value: float) -> str:
    number = f"{value:g}"
    if not number.isdigit():
        return f"{number}th"
    tail = int(number) % 100
    suffix = "th" if 10 <= tail <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(tail % 10, "th")
    return number + suffix


@dataclass
class StretchRule:
    """One linear stretch for every date: band i's value v -> ``clip((v - low[i]) / (high[i] - low[i]))``.

    :meth:`fit` pools a decimated sample of all dates' valid pixels per band (nodata, masked and
    non-finite pixels ignored) and takes its ``percentiles`` (2nd and 98th): one rule for all dates, so a
    pixel that got brighter between two dates still reads brighter after the stretch. 8-bit data that
    already spreads over the range is display-ready and is not stretched (mode "auto"): the rule is then
    the identity (low 0, high 255), which is also what the model saw of such data in training; dark or
    low-contrast 8-bit data (``LOW_CONTRAST_SPREAD``) gets the percentile stretch like 16-bit and float
    data. ``reason`` says in one line which rule was applied and why. A band with high == low maps to 0.
    ``dates`` is how many dates were pooled (for :attr:`description`).
    """

    low: np.ndarray
    high: np.ndarray
    percentiles: tuple[float, float] = (2, 98)
    reason: str = ""
    dates: int = 2

    def __post_init__(self) -> None:
        self.low = np.asarray(self.low, np.float64).reshape(-1)
        self.high = np.asarray(self.high, np.float64).reshape(-1)

    @classmethod
    def identity(cls, reason: str = "8-bit data", dates: int = 2) -> StretchRule:
        """The rule for 8-bit data: 0..255 -> 0..1 unchanged (``percentiles`` keep their default)."""
        return cls(np.zeros(3), np.full(3, 255.0), reason=reason, dates=dates)

    @property
    def is_identity(self) -> bool:
        """True for the 8-bit rule: a report can say "no stretch" instead of quoting percentiles."""
        return bool((self.low == 0).all() and (self.high == 255).all())

    @property
    def description(self) -> str:
        """The rule in words, for a summary or a report."""
        if self.is_identity:
            return "identity (8-bit values as they are)"
        low, high = (_ordinal(p) for p in self.percentiles)
        dates = "both dates" if self.dates == 2 else f"all {self.dates} dates"
        return (
            f"linear from the {low} to the {high} percentile per band, pooled over decimated samples of "
            f"{dates}, clipped to 0..255"
        )

    @staticmethod
    def _pooled(scenes: Sequence[Scene], sample: int, percentiles: tuple[float, float]):
        samples = []
        for scene in scenes:
            values = scene.sample(sample)
            if values.shape[1] == 0:
                raise DataError(scene.path, f"has no valid pixels in bands {scene.bands} (all nodata?)")
            samples.append(values)
        return np.percentile(np.concatenate(samples, axis=1), percentiles, axis=1)

    @classmethod
    def fit(
        cls,
        *scenes: Scene,
        sample: int = 1024,
        percentiles: tuple[float, float] = (2, 98),
        mode: str = "auto",
    ) -> StretchRule:
        """The rule for two or more dates. ``mode`` (``STRETCH_MODES``): "auto" stretches 16-bit and float
        data, and 8-bit data only when its widest band's pooled percentile spread is under
        ``LOW_CONTRAST_SPREAD``; "percentile" always stretches; "none" keeps 8-bit values as they are (other
        data: DataError)."""
        if mode not in STRETCH_MODES:
            raise ValueError(f"stretch mode must be one of {', '.join(STRETCH_MODES)}, got {mode!r}")
        dates = len(scenes)
        wide = [s for s in scenes if s.dtype != np.uint8]
        if mode == "none":
            if wide:
                raise DataError(
                    wide[0].path,
                    f"is {wide[0].dtype}: --stretch none keeps values as they are and needs 8-bit data; "
                    "use --stretch auto or percentile",
                )
            return cls.identity("stretch 'none' asked for: 8-bit values as they are", dates)
        low, high = cls._pooled(scenes, sample, percentiles)
        pct = f"{_ordinal(percentiles[0])}-{_ordinal(percentiles[1])} percentile"
        if mode == "percentile":
            return cls(low, high, tuple(percentiles), "stretch 'percentile' asked for", dates)
        if wide:
            kinds = " and ".join(sorted({str(s.dtype) for s in wide}))
            return cls(low, high, tuple(percentiles), f"{kinds} data is always stretched to 8 bits", dates)
        spread = float((high - low).max())
        levels = f"the widest band's pooled {pct} spread is {spread:.0f} of 255 levels"
        if spread >= LOW_CONTRAST_SPREAD:
            return cls.identity(
                f"8-bit data already using the range: {levels} (>= {LOW_CONTRAST_SPREAD:.0f})", dates
            )
        reason = f"8-bit data is dark or low in contrast: {levels} (< {LOW_CONTRAST_SPREAD:.0f})"
        return cls(low, high, tuple(percentiles), reason, dates)

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


class AlignedStack:
    """Dates 1..T on the first date's grid, and the window of that grid where all of them hold data.

    ``scenes`` are :class:`Scene` readers, oldest first, sharing ``crs``, ``transform``, ``width`` and
    ``height`` (a later date through a bilinear warped VRT when its grid differed). ``window`` is the overlap
    of all footprints in the first date's pixels, from each later date's bounds transformed into the first
    date's CRS: it can include a rim of pixels that a date does not cover when its footprint is not
    axis-aligned in that CRS; :meth:`read` marks those invalid.
    """

    def __init__(self, scenes: Sequence[Scene], rule: StretchRule, window: Window, owns: bool = True):
        self.scenes = tuple(scenes)
        self.rule, self.window = rule, window
        first = self.scenes[0]
        self.crs, self.transform = first.crs, first.transform
        self.width, self.height = first.width, first.height
        self.georeferenced = first.georeferenced
        self._owns = owns

    def __len__(self) -> int:
        return len(self.scenes)

    def __enter__(self) -> AlignedStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns:
            for scene in reversed(self.scenes):
                scene.close()

    def read(self, window: Window, boundless: bool = True) -> tuple[torch.Tensor, np.ndarray]:
        """``(image float32 [T, 3, h, w] in [0, 1], valid bool [h, w])``: every date, stretched.

        A pixel is valid when every date holds data there; invalid pixels (nodata in any date, or outside
        the raster) are 0 in all dates.
        """
        reads = [scene.read(window, boundless) for scene in self.scenes]
        valid = np.logical_and.reduce([ok for _, ok in reads])
        image = np.stack([self.rule.scale(values) for values, _ in reads])
        image[:, :, ~valid] = 0.0
        return torch.from_numpy(image), valid

    def interval(self, index: int) -> AlignedPair:
        """Dates ``index`` and ``index + 1`` (0-based) as a pair on the same files, grid, stretch and window;
        closing it closes nothing (the stack owns the files)."""
        return AlignedPair(self.scenes[index : index + 2], self.rule, self.window, owns=False)


class AlignedPair(AlignedStack):
    """Dates A and B on A's grid: the stack of two dates, whose scenes are also ``a`` and ``b``."""

    @property
    def a(self) -> Scene:
        return self.scenes[0]

    @property
    def b(self) -> Scene:
        return self.scenes[1]


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
    return Scene(
        b.path, vrt, b.bands, georeferenced=True, owns=[b.dataset], band_source=b.band_source, labels=b.labels
    )


def _colour_label(label: str | None) -> str | None:
    return _colour_of(label) or (label if label in _COLOURS else None)


def check_band_meanings(a: Scene, b: Scene) -> None:
    """DataError when one date's R, G, B came from its band labels and the other's are just its first three
    bands, unless those first three are bands 1, 2, 3 of the labelled date too and carry no label that
    says otherwise: a red band compared with a blue one is a change everywhere."""
    labelled_sources = (FROM_DESCRIPTIONS, FROM_COLORINTERP)
    sources = {a.band_source, b.band_source}
    if FROM_BANDS in sources or (a.band_source in labelled_sources) == (b.band_source in labelled_sources):
        return
    labelled, plain = (a, b) if a.band_source in labelled_sources else (b, a)
    wrong = [
        f"band {band} is labelled {label}"
        for band, label, colour in zip(plain.bands, plain.labels, _COLOURS, strict=True)
        if label is not None and _colour_label(label) != colour
    ]
    if labelled.bands == _DEFAULT_BANDS and not wrong:
        return
    if wrong:
        why = "; ".join(wrong)
    elif plain.labels == _COLOURS:
        why = "its colour interpretation red, green, blue is GDAL's default for 8-bit GeoTIFFs, not a label"
    else:
        why = "it has no red, green and blue band labels"
    rgb = ", ".join(str(band) for band in labelled.bands)
    raise DataError(
        plain.path,
        f"would be read as bands 1, 2, 3 = R, G, B ({why}), but {labelled.path.name} reads bands {rgb} as "
        f"R, G, B from its {labelled.band_source}: give each date's R,G,B bands (--bands, --bands-b)",
    )


def _check_plain_pair(a: Scene, b: Scene) -> None:
    if (a.width, a.height) != (b.width, b.height):
        raise DataError(
            b.path,
            f"is {b.width} x {b.height} pixels but {a.path.name} is {a.width} x {a.height}; "
            "images without georeference must have the same size",
        )


def _check_georeference(first: Scene, later: Scene) -> None:
    if first.georeferenced != later.georeferenced:
        has, lacks = (first, later) if first.georeferenced else (later, first)
        problem = f"has no georeference but {has.path.name} has; give only georeferenced rasters or images"
        raise DataError(lacks.path, problem)


def _common_window(scenes: Sequence[Scene]) -> Window:
    """The window of the first date's grid where every date holds data (all of it without georeference)."""
    windows = require("rasterio.windows", _EXTRA, _FEATURE)
    first = scenes[0]
    col0, row0, col1, row1 = 0, 0, first.width, first.height
    for index, scene in enumerate(scenes[1:], start=1):
        if not first.georeferenced:
            _check_plain_pair(first, scene)
            continue
        overlap = _overlap_window(first, scene)
        col0, row0 = max(col0, int(overlap.col_off)), max(row0, int(overlap.row_off))
        col1 = min(col1, int(overlap.col_off + overlap.width))
        row1 = min(row1, int(overlap.row_off + overlap.height))
        if col1 <= col0 or row1 <= row0:  # each date overlaps the first, but not all of them at once
            names = ", ".join(s.path.name for s in scenes[:index])
            raise DataError(scene.path, f"does not overlap the area that {names} have in common")
    return windows.Window(col0, row0, col1 - col0, row1 - row0)


def aligned_stack(
    paths: Sequence[str | Path],
    bands: Sequence[int] | None = None,
    *,
    bands_b: Sequence[int] | None = None,
    sample: int = 1024,
    stretch: str = "auto",
) -> AlignedStack:
    """Open two or more dates (oldest first), check they overlap, put every later date on the first date's
    grid and fit one stretch for all of them.

    ``bands`` (1-based R, G, B) apply to every date unless ``bands_b`` gives the later dates' own; a date
    without either gets its R, G, B from its band labels (module docstring), and
    :func:`check_band_meanings` stops a stack in which two dates' bands cannot be matched. ``stretch`` is a
    ``StretchRule.fit`` mode. Rasters without georeference are taken as pixel grids and must all have the
    same size. Close the result (context manager).
    """
    if len(paths) < 2:
        raise DataError(None, f"a scene needs at least 2 dates, got {len(paths)}")
    scenes: list[Scene] = []
    try:
        for index, path in enumerate(paths):
            scenes.append(open_scene(path, bands if index == 0 or bands_b is None else bands_b))
        for earlier, later in itertools.combinations(scenes, 2):
            check_band_meanings(earlier, later)
        first = scenes[0]
        for later in scenes[1:]:
            _check_georeference(first, later)
        window = _common_window(scenes)
        rule = StretchRule.fit(*scenes, sample=sample, mode=stretch)
        if first.georeferenced:
            for index in range(1, len(scenes)):  # in place: a failure below closes what was made so far
                scenes[index] = _on_grid(first, scenes[index])
    except BaseException:
        for scene in reversed(scenes):
            scene.close()
        raise
    return AlignedStack(scenes, rule, window)


def aligned_pair(
    path_a: str | Path,
    path_b: str | Path,
    bands: Sequence[int] | None = None,
    *,
    bands_b: Sequence[int] | None = None,
    sample: int = 1024,
    stretch: str = "auto",
) -> AlignedPair:
    """:func:`aligned_stack` of two dates: A and B, with B on A's grid (``bands_b``: B's own bands)."""
    stack = aligned_stack([path_a, path_b], bands, bands_b=bands_b, sample=sample, stretch=stretch)
    return AlignedPair(stack.scenes, stack.rule, stack.window)


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
