"""Change polygons of a class-map GeoTIFF, with areas in m2, written as GeoJSON or GeoPackage.

Areas are what a practitioner reports, so they must be right in any CRS. The rule, decided once per raster
at its centre and recorded per polygon (``area_method``) and in a scene's summary:

* ``planar``: a projected CRS whose areal scale factor is within 1 % of 1 at the scene (UTM, national
  grids): the planar area, which is what GIS software shows, converted from the CRS unit to metres. Also the
  fallback when PROJ cannot transform the CRS to longitude / latitude at all (a conversion PROJ does not
  implement, e.g. EPSG:2218's Lambert Conic Conformal (West Orientated)): nothing else can be computed.
* ``geodesic``: a geographic CRS, a projected one that distorts area by more than 1 % at the scene (Web
  Mercator away from the equator), or one whose areal scale PROJ cannot compute there: the geodesic area on
  the CRS's own ellipsoid (WGS 84 for most Earth CRSs; a Mars CRS gets Mars), which does not depend on the
  projection.
* ``unknown``: no georeference, or (``UNREADABLE``) a geographic CRS PROJ cannot read: ``area_m2`` None.

PROJ's failures seen here, found by trying every EPSG projected CRS and a few edge cases: building a
transformer raises ``pyproj.exceptions.ProjError`` ("Input is not a transformation.", "Error creating
Transformer from CRS."), ``pyproj.Proj`` raises ``pyproj.exceptions.CRSError`` for a CRS without a PROJ
string, and a point outside the projection's domain (beyond an orthographic projection's horizon) raises
``ProjError`` under ``errcheck=True`` (inf without it). Longitude / latitude outputs (``centroid_lonlat``,
GeoJSON coordinates) are WGS 84 (EPSG:4326); a CRS that PROJ cannot transform to WGS 84 (another celestial
body, or the conversions above) has no ``centroid_lonlat`` and its GeoJSON keeps the raster's CRS
coordinates, with a ``note`` saying so.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from changescope.errors import DataError, require
from changescope.fileio import write_text_atomic

_EXTRA = "geo"
_FEATURE = "change polygons"
PLANAR_TOLERANCE = 0.01  # areal scale factor within 1 % of 1: planar area; else geodesic
#: before a geodesic area, edges are cut into pieces of at most this many pixels: a polygon's long edges
#: follow the raster's grid lines, which are not geodesics
GEOD_SEGMENT_PX = 16
PIXEL_NOTE = "no georeference: coordinates are pixel (column, row) positions in image A, y down"
#: the ``area_method`` values; geodesic names its ellipsoid: ``GEODESIC.format(ellipsoid="WGS 84")``
GEODESIC = "geodesic ({ellipsoid} ellipsoid)"
PLANAR = "planar (projected CRS units, converted to m2)"
UNKNOWN = "unknown (no georeference)"
UNREADABLE = "unknown (PROJ cannot read the CRS's longitude / latitude)"
BASE_FIELDS = (
    "class",
    "class_id",
    "area_m2",
    "area_method",
    "pixels",
    "centroid_x",
    "centroid_y",
    "centroid_lon",
    "centroid_lat",
)


def _shapely():
    return require("shapely", _EXTRA, _FEATURE)


def _pyproj():
    return require("pyproj", _EXTRA, _FEATURE)


def _pyproj_crs(crs: Any) -> Any:
    return _pyproj().CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def _to_lonlat(crs: Any) -> Any:
    """A transformer from ``crs`` to WGS 84 longitude / latitude; raises ``pyproj.exceptions.ProjError``
    when PROJ has none (another celestial body, or a conversion PROJ does not implement)."""
    return _pyproj().Transformer.from_crs(_pyproj_crs(crs), "EPSG:4326", always_xy=True)


def _to_lonlat_or_none(crs: Any) -> Any:
    try:
        return _to_lonlat(crs)
    except _pyproj().exceptions.ProjError:
        return None


def _reproject(geometry: Any, transformer: Any) -> Any:
    return _shapely().transform(
        geometry, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    )


class AreaModel:
    """Turns a polygon in a CRS into m2, planar or geodesic, chosen once per raster (module docstring).

    ``method`` is one of ``PLANAR``, ``GEODESIC`` (formatted with the ellipsoid's name) or ``UNKNOWN``;
    ``reason`` says in one line why. ``transformer`` goes to WGS 84 longitude / latitude, None when PROJ
    cannot do that.
    """

    def __init__(self, crs: Any, transform: Any, centre: tuple[float, float]):
        """``centre``: the (column, row) where the projection's areal scale decides planar or geodesic."""
        pyproj = _pyproj()
        self.crs = _pyproj_crs(crs)
        self.transform = transform
        self.pixel = math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))
        self.transformer = _to_lonlat_or_none(crs)
        self.unit = 1.0
        self.geod = self.crs.get_geod()  # the CRS's own ellipsoid (None for an engineering CRS)
        self.to_geodetic, failure = None, "it has no geodetic CRS"
        if self.geod is not None and self.crs.geodetic_crs is not None:
            try:  # the CRS's own longitude / latitude: no datum shift, works on any celestial body
                self.to_geodetic = pyproj.Transformer.from_crs(
                    self.crs, self.crs.geodetic_crs, always_xy=True
                )
            except pyproj.exceptions.ProjError as err:
                failure = f"ProjError: {_one_line(err)}"
        if not self.crs.is_geographic and self.crs.axis_info:
            self.unit = float(self.crs.axis_info[0].unit_conversion_factor)
        name = self.crs.name if self.crs.name not in ("", "unknown") else "the raster's CRS"
        if self.to_geodetic is None:
            if self.crs.is_geographic or not self.crs.axis_info:
                self.method, self.reason = UNREADABLE, f"{name}: {failure}"
            else:
                self.method = PLANAR
                self.reason = (
                    f"PROJ cannot transform {name} to longitude / latitude ({failure}): its areal scale "
                    "cannot be checked and no geodesic area computed, so the planar area is used"
                )
            return
        geodesic = GEODESIC.format(ellipsoid=self.crs.ellipsoid.name)
        if self.crs.is_geographic:
            self.method, self.reason = geodesic, f"{name} is a geographic CRS (degrees)"
            return
        scale, failure = self._areal_scale(*_apply(transform, *centre))
        if scale is None:
            self.method = geodesic
            self.reason = (
                f"PROJ cannot compute the areal scale of {name} at the scene centre ({failure}), so the "
                "planar area cannot be checked: the geodesic area does not depend on the projection"
            )
        elif abs(scale - 1.0) > PLANAR_TOLERANCE:
            self.method = geodesic
            self.reason = (
                f"the areal scale of {name} at the scene centre is {scale:.4g}, more than 1 % from 1"
            )
        else:
            self.method = PLANAR
            self.reason = f"the areal scale of {name} at the scene centre is {scale:.6g}, within 1 % of 1"

    @property
    def geodesic(self) -> bool:
        return self.method.startswith("geodesic")

    def _areal_scale(self, x: float, y: float) -> tuple[float | None, str]:
        """(the areal scale factor at CRS point (x, y), "") or (None, why PROJ cannot compute it)."""
        pyproj = _pyproj()
        try:
            lon, lat = self.to_geodetic.transform(x, y, errcheck=True)
            scale = float(pyproj.Proj(self.crs).get_factors(lon, lat, errcheck=True).areal_scale)
        except pyproj.exceptions.CRSError as err:  # pyproj.Proj: the CRS has no PROJ string
            return None, f"CRSError: {_one_line(err)}"
        except pyproj.exceptions.ProjError as err:  # the point is outside the projection's domain
            return None, f"ProjError: {_one_line(err)}"
        if not math.isfinite(scale) or scale <= 0:
            return None, f"areal scale {scale}"
        return scale, ""

    def area_m2(self, geometry: Any) -> float | None:
        if self.method.startswith("unknown"):
            return None
        if not self.geodesic:
            return float(geometry.area) * self.unit**2
        dense = _shapely().segmentize(geometry, GEOD_SEGMENT_PX * self.pixel)
        lonlat = _reproject(dense, self.to_geodetic)
        area, _ = self.geod.geometry_area_perimeter(lonlat)
        return abs(float(area))


def area_method(crs: Any, transform: Any, shape: tuple[int, int]) -> dict[str, str]:
    """``{"method": ..., "reason": ...}``: how :func:`polygonize` computes the areas of a raster of
    ``shape`` (height, width) on this grid (``UNKNOWN`` without a CRS)."""
    if crs is None:
        return {"method": UNKNOWN, "reason": "the raster has no CRS: areas in m2 are not known"}
    model = AreaModel(crs, transform, (shape[1] / 2, shape[0] / 2))
    return {"method": model.method, "reason": model.reason}


def _apply(transform: Any, x: float, y: float) -> tuple[float, float]:
    """``transform`` applied to a point, spelled out (affine 3 deprecates ``transform * point``)."""
    t = transform
    return t.a * x + t.b * y + t.c, t.d * x + t.e * y + t.f


def _pixel_polygon(transform: Any, row: int, col: int) -> Any:
    shapely = _shapely()
    corners = [_apply(transform, col + dx, row + dy) for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1))]
    return shapely.Polygon(corners)


def area_per_pixel_m2(
    crs: Any, transform: Any, row: int, col: int, shape: tuple[int, int] | None = None
) -> float | None:
    """Ground area in m2 of pixel (row, col), by the polygons' rule; None without a CRS.

    Planar or geodesic is decided at the centre of a raster of ``shape`` (height, width), as
    :func:`polygonize` does, or at the pixel itself when ``shape`` is None.
    """
    if crs is None:
        return None
    centre = (shape[1] / 2, shape[0] / 2) if shape is not None else (col + 0.5, row + 0.5)
    model = AreaModel(crs, transform, centre)
    return model.area_m2(_pixel_polygon(transform, row, col))


def _world(geometry: Any, transform: Any) -> Any:
    """Pixel-space geometry -> CRS coordinates through the raster's affine transform."""
    affinity = require("shapely.affinity", _EXTRA, _FEATURE)
    t = transform
    return affinity.affine_transform(geometry, [t.a, t.b, t.d, t.e, t.c, t.f])


def _read_class_map(path: Path, band: int = 1) -> tuple[np.ndarray, Any, Any, Any]:
    rasterio = require("rasterio", _EXTRA, _FEATURE)
    if not path.exists():
        raise DataError(path, "does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as dataset:
                return dataset.read(band), dataset.nodata, dataset.crs, dataset.transform
        except rasterio.errors.RasterioIOError as err:
            raise DataError(path, f"cannot be read as a raster ({' '.join(str(err).split())})") from err


def _feature(
    polygon: Any, class_id: int, classes: Sequence[str], crs: Any, transform: Any, areas: Any
) -> dict:
    col0, row0, col1, row1 = (int(round(v)) for v in polygon.bounds)
    geometry = _world(polygon, transform) if crs is not None else polygon
    centroid = geometry.centroid
    lonlat = None
    if crs is not None and areas.transformer is not None:
        lon, lat = areas.transformer.transform(centroid.x, centroid.y)
        lonlat = (float(lon), float(lat))
    return {
        "geometry": geometry,
        "class_id": class_id,
        "class_name": classes[class_id] if class_id < len(classes) else f"class_{class_id}",
        "pixels": int(round(polygon.area)),
        "area_m2": areas.area_m2(geometry) if crs is not None else None,
        "area_method": areas.method if crs is not None else UNKNOWN,
        "centroid": (float(centroid.x), float(centroid.y)),
        "centroid_lonlat": lonlat,
        "bbox_pixels": (col0, row0, col1, row1),
    }


def polygonize(path: str | Path, classes: Sequence[str], min_area_px: int = 1, band: int = 1) -> list[dict]:
    """Polygons (8-connected) of every class other than 0 and nodata in a class-map GeoTIFF (its ``band``:
    a stack's ``changes.tif`` has one band per interval).

    Each feature: ``geometry`` (shapely, in the raster's CRS; pixel (column, row) coordinates without
    georeference), ``class_id``, ``class_name`` (``classes[class_id]``), ``pixels``, ``area_m2`` (None
    without georeference; see the module docstring for the rule), ``area_method`` (which rule:
    ``PLANAR``, ``GEODESIC`` with the ellipsoid's name, ``UNKNOWN``), ``centroid`` (x, y in the raster's
    CRS), ``centroid_lonlat`` (WGS 84; None without georeference or when PROJ cannot go to WGS 84) and
    ``bbox_pixels`` (col0, row0, col1, row1, end-exclusive). Polygons under ``min_area_px`` pixels are
    dropped; the rest come largest first.

    The class map is read whole: it is uint8, one byte per pixel (a 20 000 x 20 000 scene is 400 MB), which
    is far less than the float accumulators the tiling avoided, and GDAL's polygonizer needs the raster.
    """
    path = Path(path)
    data, nodata, crs, transform = _read_class_map(path, band)
    features_mod = require("rasterio.features", _EXTRA, _FEATURE)
    mask = data != 0
    if nodata is not None:
        mask &= data != nodata
    centre = (data.shape[1] / 2, data.shape[0] / 2)
    areas = AreaModel(crs, transform, centre) if crs is not None else None
    shapely = _shapely()
    found = []
    for geometry, value in features_mod.shapes(data, mask=mask, connectivity=8):  # pixel coordinates
        polygon = shapely.geometry.shape(geometry)
        if polygon.area >= min_area_px:
            found.append(_feature(polygon, int(value), classes, crs, transform, areas))
    found.sort(key=lambda f: (-f["pixels"], f["bbox_pixels"][1], f["bbox_pixels"][0]))
    return found


def _properties(feature: dict) -> dict:
    lonlat = feature.get("centroid_lonlat") or (None, None)
    values = (
        feature["class_name"],
        feature["class_id"],
        feature["area_m2"],
        feature.get("area_method", UNKNOWN if feature["area_m2"] is None else None),
        feature["pixels"],
        *feature["centroid"],
        *lonlat,
    )
    return dict(zip(BASE_FIELDS, values, strict=True))


def _all_properties(features: Sequence[dict], extra: Sequence[dict] | None) -> list[dict]:
    if extra is not None and len(extra) != len(features):
        raise ValueError(f"{len(extra)} extra property dicts for {len(features)} features")
    rows = []
    for index, feature in enumerate(features):
        row = _properties(feature)
        more = dict(extra[index]) if extra is not None else {}
        clash = set(more) & set(row)
        if clash:
            raise ValueError(f"extra properties may not replace {sorted(clash)}")
        rows.append({**row, **more})
    return rows


def _rounded(coords: Any, digits: int | None) -> Any:
    if isinstance(coords, (float, int)):
        return coords if digits is None else round(float(coords), digits)
    return [_rounded(c, digits) for c in coords]


def _geojson_geometry(geometry: Any, transformer: Any) -> dict:
    """RFC 7946 geometry: lon/lat (7 decimals, about 1 cm) when ``transformer`` is given, exterior ring
    anticlockwise."""
    shapely = _shapely()
    if transformer is not None:
        geometry = _reproject(geometry, transformer)
    geometry = shapely.geometry.polygon.orient(geometry, 1.0) if geometry.geom_type == "Polygon" else geometry
    mapping = shapely.geometry.mapping(geometry)
    digits = 7 if transformer is not None else None
    return {"type": mapping["type"], "coordinates": _rounded(mapping["coordinates"], digits)}


def _write_geojson(features: Sequence[dict], rows: list[dict], path: Path, crs: Any) -> None:
    transformer = _to_lonlat_or_none(crs) if crs is not None else None
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if crs is None:
        collection["note"] = PIXEL_NOTE  # a foreign member (RFC 7946 section 6.1)
    elif transformer is None:
        collection["note"] = (
            f"PROJ cannot transform {_pyproj_crs(crs).name} to WGS 84 longitude / latitude: coordinates "
            "are in the raster's CRS, not RFC 7946 longitude / latitude"
        )
    collection["features"] = [
        {
            "type": "Feature",
            "geometry": _geojson_geometry(f["geometry"], transformer),
            "properties": {key: _finite_or_none(value) for key, value in row.items()},
        }
        for f, row in zip(features, rows, strict=True)
    ]
    text = json.dumps(collection, ensure_ascii=False, allow_nan=False, default=_json_default)
    write_text_atomic(path, text + "\n")


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN or infinity: such a property is written as null."""
    if isinstance(value, (float, np.floating)) and not math.isfinite(value):
        return None
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@contextmanager
def _atomic_named(path: Path) -> Iterator[Path]:
    """Like ``fileio.atomic_path``, but the temporary file keeps ``path``'s name, inside a temporary folder
    beside it: GDAL's GeoPackage driver wants the ``.gpkg`` extension and may leave journal files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
    try:
        yield folder / path.name
        os.replace(folder / path.name, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    return "text"


def _column(values: list[Any]) -> np.ndarray:
    """One GeoPackage field: bool, int64, float64 (None -> NULL) or text (containers as JSON)."""
    kinds = {_kind(v) for v in values if v is not None}
    complete = all(v is not None for v in values)
    if kinds == {"bool"} and complete:
        return np.array(values, bool)
    if kinds == {"int"} and complete:
        return np.array(values, np.int64)
    if kinds and kinds <= {"bool", "int", "float"}:
        return np.array([np.nan if v is None else float(v) for v in values], np.float64)
    text = [v if v is None or isinstance(v, str) else json.dumps(v, default=_json_default) for v in values]
    return np.array(text, dtype=object)


def _write_gpkg(features: Sequence[dict], rows: list[dict], path: Path, crs: Any) -> None:
    raw = require("pyogrio.raw", _EXTRA, "writing GeoPackage")
    shapely = _shapely()
    names = list(dict.fromkeys(name for row in rows for name in row)) or list(BASE_FIELDS)
    columns = [_column([row.get(name) for row in rows]) for name in names]
    geometry = np.array([shapely.to_wkb(f["geometry"]) for f in features], dtype=object)
    single = all(f["geometry"].geom_type == "Polygon" for f in features)
    options = {"geometry_type": "Polygon" if single else "MultiPolygon", "promote_to_multi": not single}
    wkt = _pyproj_crs(crs).to_wkt() if crs is not None else None
    with _atomic_named(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pyogrio warns when there is no CRS: that is intended
        raw.write(tmp, geometry, columns, names, driver="GPKG", layer="changes", crs=wkt, **options)


def write_vectors(
    features: Sequence[dict],
    path: str | Path,
    crs: Any,
    vector_format: str = "geojson",
    extra_properties: Sequence[dict] | None = None,
) -> Path:
    """Write :func:`polygonize` features atomically as GeoJSON (RFC 7946) or GeoPackage (``"gpkg"``).

    GeoJSON coordinates are lon/lat (EPSG:4326) when ``crs`` is given, else pixel positions with a
    top-level ``note`` saying so (the raster's CRS coordinates, with a ``note``, for a CRS PROJ cannot
    transform to WGS 84); GeoPackage keeps the raster's CRS (layer ``changes``). Properties: the
    ``BASE_FIELDS`` plus the keys of ``extra_properties[i]`` for feature i (a list aligned with
    ``features``, e.g. captions), which may not reuse a base name.
    """
    path = Path(path)
    rows = _all_properties(features, extra_properties)
    kind = vector_format.lower()
    if kind in ("geojson", "json"):
        _write_geojson(features, rows, path, crs)
    elif kind in ("gpkg", "geopackage"):
        _write_gpkg(features, rows, path, crs)
    else:
        raise ValueError(f"vector format must be 'geojson' or 'gpkg', got {vector_format!r}")
    return path
