"""Change polygons of a class-map GeoTIFF, with areas in m2, written as GeoJSON or GeoPackage.

Areas are what a practitioner reports, so they must be right in any CRS: in a projected CRS whose scale
is near 1 over the scene (UTM, national grids) the planar area is what GIS software shows and is used
as is, converted from the CRS unit to metres; in a geographic CRS, or a projected one that distorts area by
more than 1 % at the scene (Web Mercator away from the equator), it is the geodesic area on the WGS84
ellipsoid.
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
BASE_FIELDS = (
    "class",
    "class_id",
    "area_m2",
    "pixels",
    "centroid_x",
    "centroid_y",
    "centroid_lon",
    "centroid_lat",
)


def _shapely():
    return require("shapely", _EXTRA, _FEATURE)


def _pyproj_crs(crs: Any) -> Any:
    pyproj = require("pyproj", _EXTRA, _FEATURE)
    return pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def _to_lonlat(crs: Any) -> Any:
    pyproj = require("pyproj", _EXTRA, _FEATURE)
    return pyproj.Transformer.from_crs(_pyproj_crs(crs), "EPSG:4326", always_xy=True)


def _reproject(geometry: Any, transformer: Any) -> Any:
    return _shapely().transform(
        geometry, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
    )


class AreaModel:
    """Turns a polygon in a CRS into m2: planar (unit factor squared) or geodesic, chosen once per raster."""

    def __init__(self, crs: Any, transform: Any, centre: tuple[float, float]):
        """``centre``: the (column, row) where the projection's areal scale decides planar or geodesic."""
        self.crs = _pyproj_crs(crs)
        self.transform = transform
        self.pixel = math.sqrt(abs(transform.a * transform.e - transform.b * transform.d))
        self.transformer = _to_lonlat(crs)
        self.unit = 1.0
        self.geodesic = self.crs.is_geographic
        if not self.geodesic:
            self.unit = float(self.crs.axis_info[0].unit_conversion_factor)
            self.geodesic = abs(self._areal_scale(*_apply(transform, *centre)) - 1.0) > PLANAR_TOLERANCE

    def _areal_scale(self, x: float, y: float) -> float:
        pyproj = require("pyproj", _EXTRA, _FEATURE)
        try:
            lon, lat = self.transformer.transform(x, y)
            return float(pyproj.Proj(self.crs).get_factors(lon, lat).areal_scale)
        except Exception:  # a projection PROJ cannot differentiate: trust its planar area
            return 1.0

    def area_m2(self, geometry: Any) -> float:
        if not self.geodesic:
            return float(geometry.area) * self.unit**2
        pyproj = require("pyproj", _EXTRA, _FEATURE)
        dense = _shapely().segmentize(geometry, GEOD_SEGMENT_PX * self.pixel)
        lonlat = _reproject(dense, self.transformer)
        area, _ = pyproj.Geod(ellps="WGS84").geometry_area_perimeter(lonlat)
        return abs(float(area))


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


def _read_class_map(path: Path) -> tuple[np.ndarray, Any, Any, Any]:
    rasterio = require("rasterio", _EXTRA, _FEATURE)
    if not path.exists():
        raise DataError(path, "does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as dataset:
                return dataset.read(1), dataset.nodata, dataset.crs, dataset.transform
        except rasterio.errors.RasterioIOError as err:
            raise DataError(path, f"cannot be read as a raster ({' '.join(str(err).split())})") from err


def _feature(
    polygon: Any, class_id: int, classes: Sequence[str], crs: Any, transform: Any, areas: Any
) -> dict:
    col0, row0, col1, row1 = (int(round(v)) for v in polygon.bounds)
    geometry = _world(polygon, transform) if crs is not None else polygon
    centroid = geometry.centroid
    lonlat = None
    if crs is not None:
        lon, lat = areas.transformer.transform(centroid.x, centroid.y)
        lonlat = (float(lon), float(lat))
    return {
        "geometry": geometry,
        "class_id": class_id,
        "class_name": classes[class_id] if class_id < len(classes) else f"class_{class_id}",
        "pixels": int(round(polygon.area)),
        "area_m2": areas.area_m2(geometry) if crs is not None else None,
        "centroid": (float(centroid.x), float(centroid.y)),
        "centroid_lonlat": lonlat,
        "bbox_pixels": (col0, row0, col1, row1),
    }


def polygonize(path: str | Path, classes: Sequence[str], min_area_px: int = 1) -> list[dict]:
    """Polygons (8-connected) of every class other than 0 and nodata in a class-map GeoTIFF.

    Each feature: ``geometry`` (shapely, in the raster's CRS; pixel (column, row) coordinates without
    georeference), ``class_id``, ``class_name`` (``classes[class_id]``), ``pixels``, ``area_m2`` (None
    without georeference; see the module docstring for the rule), ``centroid`` (x, y in the raster's
    CRS), ``centroid_lonlat`` (None without georeference) and ``bbox_pixels`` (col0, row0, col1, row1,
    end-exclusive). Polygons under ``min_area_px`` pixels are dropped; the rest come largest first.

    The class map is read whole: it is uint8, one byte per pixel (a 20 000 x 20 000 scene is 400 MB), which
    is far less than the float accumulators the tiling avoided, and GDAL's polygonizer needs the raster.
    """
    path = Path(path)
    data, nodata, crs, transform = _read_class_map(path)
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
    """RFC 7946 geometry: lon/lat (7 decimals, about 1 cm) when georeferenced, exterior ring anticlockwise."""
    shapely = _shapely()
    if transformer is not None:
        geometry = _reproject(geometry, transformer)
    geometry = shapely.geometry.polygon.orient(geometry, 1.0) if geometry.geom_type == "Polygon" else geometry
    mapping = shapely.geometry.mapping(geometry)
    digits = 7 if transformer is not None else None
    return {"type": mapping["type"], "coordinates": _rounded(mapping["coordinates"], digits)}


def _write_geojson(features: Sequence[dict], rows: list[dict], path: Path, crs: Any) -> None:
    transformer = _to_lonlat(crs) if crs is not None else None
    collection: dict[str, Any] = {"type": "FeatureCollection"}
    if crs is None:
        collection["note"] = PIXEL_NOTE  # a foreign member (RFC 7946 section 6.1)
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
    top-level ``note`` saying so; GeoPackage keeps the raster's CRS (layer ``changes``). Properties: the
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
