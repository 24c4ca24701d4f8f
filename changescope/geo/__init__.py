"""Scenes: two rasters of one place (or a stack of T dates) -> change-class GeoTIFFs and change polygons,
memory flat in scene size.

``raster`` opens the dates and puts every later date on the first date's grid, ``tiling`` cuts the overlap
into overlapping tiles and blends the per-tile predictions into a GeoTIFF strip by strip (one band per
interval for a stack, and the date-of-change map), ``vectors`` turns the class map into polygons
with areas in m2 and writes GeoJSON or GeoPackage. rasterio, shapely, pyproj and pyogrio are the optional
``geo`` extra: they are imported when first used, so ``import changescope.geo`` works without them and a
missing one ends in a one-line install hint.
"""

from __future__ import annotations

from changescope.geo.raster import (
    AlignedPair,
    AlignedStack,
    Scene,
    StretchRule,
    aligned_pair,
    aligned_stack,
    open_scene,
)
from changescope.geo.tiling import StripMosaic, blend_weights, run_tiles, tile_windows
from changescope.geo.vectors import area_per_pixel_m2, polygonize, write_vectors

__all__ = [
    "AlignedPair",
    "AlignedStack",
    "Scene",
    "StretchRule",
    "StripMosaic",
    "aligned_pair",
    "aligned_stack",
    "area_per_pixel_m2",
    "blend_weights",
    "open_scene",
    "polygonize",
    "run_tiles",
    "tile_windows",
    "write_vectors",
]
