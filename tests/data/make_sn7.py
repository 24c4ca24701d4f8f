#!/usr/bin/env python3
"""A tiny SpaceNet 7 (MUDS) in the released layout: 2 AOIs x 4 months of small GeoTIFFs and GeoJSON.

As ``SN7_buildings_train.tar.gz`` unpacks (and, with ``public=True``, ``SN7_buildings_test_public``)::

    ROOT/train/<AOI>/images/global_monthly_<YYYY>_<MM>_mosaic_<AOI>.tif     4-band RGBA uint8, EPSG:3857
    ROOT/train/<AOI>/images_masked/<same name>                              UDM pixels set to 0
    ROOT/train/<AOI>/labels/<stem>_Buildings.geojson                        EPSG:3857 coordinates
    ROOT/train/<AOI>/labels_match/<stem>_Buildings.geojson                  the same, with tracked "Id"
    ROOT/train/<AOI>/labels_match_pix/<stem>_Buildings.geojson              pixel coordinates (x, y, 0)
    ROOT/train/<AOI>/UDM_masks/<stem>_UDM.tif                               255 = unusable; some months
    ROOT/test_public/<AOI>/images_masked/...                                no labels

Images are ``H`` x ``W`` = 72 x 96 (never square, so a swapped axis shows). Buildings are rectangles
with integer pixel corners (one with a hole), so the pixels whose centres they cover are exactly
``rows r0:r1, columns c0:c1``: the tables below are the truth, with no rasteriser involved. Months run
over a year boundary (2019-11 .. 2020-02), so date order is not the order of month numbers.

``expected_intervals(aoi)`` is the change each interval should hold (1 = a building seen for the first
time at the later date, 255 = unusable at either date). Run the module to look at the files::

    python tests/data/make_sn7.py OUT

Nothing here imports changescope: a fixture must not be shaped by the code it tests.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine

H, W = 72, 96
GSD = 4.77  # metres per pixel of a zoom-15 Web Mercator mosaic
MONTHS = ((2019, 11), (2019, 12), (2020, 1), (2020, 2))
TIMES = [f"{y:04d}-{m:02d}-01" for y, m in MONTHS]
IGNORE = 255


@dataclass(frozen=True)
class Building:
    id: int
    present: range  # indices of the months that show it
    box: tuple[int, int, int, int]  # c0, r0, c1, r1 (pixel corners)
    hole: tuple[int, int, int, int] | None = None


#: AOI -> its buildings (the names fall in the reader's hash split: the first train, the second val)
AOIS: dict[str, list[Building]] = {
    "L15-0331E-1257N_1327_3160_13": [
        Building(101, range(0, 4), (4, 4, 14, 12)),  # there from the start: never change
        Building(102, range(2, 4), (30, 20, 46, 36), hole=(36, 26, 40, 30)),  # appears in month 3
        Building(103, range(3, 4), (60, 40, 80, 60)),  # appears in month 4, half under the cloud
    ],
    "L15-0487E-1246N_1950_3207_13": [
        Building(201, range(0, 4), (70, 8, 90, 20)),
        Building(202, range(1, 4), (10, 40, 22, 60)),  # appears in month 2
        Building(203, range(0, 2), (40, 50, 52, 66)),  # demolished after month 2: not labelled
    ],
}
SPLITS = {"L15-0331E-1257N_1327_3160_13": "train", "L15-0487E-1246N_1950_3207_13": "val"}
#: AOI -> month index -> unusable box (a cloud); the other months have no UDM file
CLOUDS: dict[str, dict[int, tuple[int, int, int, int]]] = {
    "L15-0331E-1257N_1327_3160_13": {3: (70, 30, 96, 72)}
}
PUBLIC_AOI = "L15-1298E-1322N_5193_2903_13"
ORIGIN = {  # x, y of the top-left corner in EPSG:3857
    "L15-0331E-1257N_1327_3160_13": (3_685_000.0, 1_420_000.0),
    "L15-0487E-1246N_1950_3207_13": (5_420_000.0, 1_395_000.0),
    PUBLIC_AOI: (14_460_000.0, 1_480_000.0),
}


def stem(aoi: str, month: int) -> str:
    year, number = MONTHS[month]
    return f"global_monthly_{year:04d}_{number:02d}_mosaic_{aoi}"


def _fill(box: tuple[int, int, int, int], value: int = 1) -> np.ndarray:
    out = np.zeros((H, W), np.uint8)
    c0, r0, c1, r1 = box
    out[r0:r1, c0:c1] = value
    return out


def footprint(building: Building) -> np.ndarray:
    inside = _fill(building.box).astype(bool)
    if building.hole is not None:
        inside &= ~_fill(building.hole).astype(bool)
    return inside


def cloud(aoi: str, month: int) -> np.ndarray:
    box = CLOUDS.get(aoi, {}).get(month)
    return np.zeros((H, W), bool) if box is None else _fill(box).astype(bool)


def expected_intervals(aoi: str, months: tuple[int, ...] = (0, 1, 2, 3)) -> np.ndarray:
    """``[T-1, H, W]`` over the kept ``months``: 1 under buildings first seen at the later date, 255 where
    either date is cloudy."""
    out = np.zeros((len(months) - 1, H, W), np.int64)
    for i, (before, after) in enumerate(zip(months, months[1:], strict=False)):
        for b in AOIS[aoi]:
            if after in b.present and not any(m in b.present for m in months[: i + 1]):
                out[i][footprint(b)] = 1
        out[i][cloud(aoi, before) | cloud(aoi, after)] = IGNORE
    return out


# --------------------------------------------------------------------------------------------------
def _ring(box: tuple[int, int, int, int], to_map) -> list[list[float]]:
    c0, r0, c1, r1 = box
    return [list(to_map(x, y)) for x, y in ((c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0))]


def _collection(buildings: list[Building], to_map, crs: str | None) -> dict:
    features = []
    for b in buildings:
        rings = [_ring(b.box, to_map)] + ([_ring(b.hole, to_map)[::-1]] if b.hole else [])
        area = float(footprint(b).sum() * GSD * GSD)
        features.append(
            {
                "type": "Feature",
                "properties": {"Id": b.id, "area": area},
                "geometry": {"type": "Polygon", "coordinates": rings},
            }
        )
    data = {"type": "FeatureCollection", "features": features}
    if crs:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    return data


def _write_tif(path: Path, bands: np.ndarray, transform) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": H, "width": W, "count": len(bands), "dtype": "uint8"}
    with rasterio.open(path, "w", crs="EPSG:3857", transform=transform, **profile) as dst:
        dst.write(bands)


def _image(aoi: str, month: int, buildings: list[Building]) -> np.ndarray:
    """RGBA: a field texture, buildings present this month bright, alpha 255."""
    rng = np.random.default_rng([sum(map(ord, aoi)), month])
    rgb = rng.integers(60, 120, (3, H, W), dtype=np.uint8)
    for b in buildings:
        if month in b.present:
            rgb[:, footprint(b)] = 230
    return np.concatenate([rgb, np.full((1, H, W), 255, np.uint8)])


def _write_aoi(folder: Path, aoi: str, labelled: bool) -> None:
    x0, y0 = ORIGIN[aoi]
    transform = Affine(GSD, 0.0, x0, 0.0, -GSD, y0)  # north up, top-left corner at (x0, y0)
    buildings = AOIS.get(aoi, [])
    for month in range(len(MONTHS)):
        name = stem(aoi, month)
        image = _image(aoi, month, buildings)
        unusable = cloud(aoi, month)
        masked = image.copy()
        masked[:, unusable] = 0
        if labelled:  # the public test release has images_masked only
            _write_tif(folder / "images" / f"{name}.tif", image, transform)
        _write_tif(folder / "images_masked" / f"{name}.tif", masked, transform)
        if unusable.any():
            _write_tif(
                folder / "UDM_masks" / f"{name}_UDM.tif", unusable[None].astype(np.uint8) * 255, transform
            )
        if not labelled:
            continue
        present = [b for b in buildings if month in b.present]

        def to_map(x: float, y: float) -> tuple[float, float]:
            return x0 + x * GSD, y0 - y * GSD

        files = {
            "labels": _collection(present, to_map, "urn:ogc:def:crs:EPSG::3857"),
            "labels_match": _collection(present, to_map, "urn:ogc:def:crs:EPSG::3857"),
            # pixel coordinates come with a zero third coordinate, as in the release
            "labels_match_pix": _collection(present, lambda x, y: (float(x), float(y), 0.0), None),
        }
        for sub, data in files.items():
            path = folder / sub / f"{name}_Buildings.geojson"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data))


def make_sn7(root: Path, public: bool = False) -> Path:
    """Write the fixture under ``root`` (created) and return ``root``."""
    for aoi in AOIS:
        _write_aoi(root / "train" / aoi, aoi, labelled=True)
    if public:
        _write_aoi(root / "test_public" / PUBLIC_AOI, PUBLIC_AOI, labelled=False)
    return root


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "sn7_fixture")
    print(make_sn7(out, public=True))
