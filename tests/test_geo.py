"""The geospatial layer against real GeoTIFFs written with rasterio (tests/data/make_geotiffs.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from data import make_geotiffs as mg

rasterio = pytest.importorskip("rasterio", reason="the geo extra is not installed")
pyogrio = pytest.importorskip("pyogrio", reason="the geo extra is not installed")
pyproj = pytest.importorskip("pyproj", reason="the geo extra is not installed")
shapely = pytest.importorskip("shapely", reason="the geo extra is not installed")
from rasterio.errors import NotGeoreferencedWarning  # noqa: E402
from rasterio.windows import Window  # noqa: E402

from changescope.errors import DataError, MissingDependencyError  # noqa: E402
from changescope.geo import (  # noqa: E402
    StretchRule,
    StripMosaic,
    aligned_pair,
    area_per_pixel_m2,
    blend_weights,
    open_scene,
    polygonize,
    run_tiles,
    tile_windows,
    write_vectors,
)
from changescope.geo.vectors import area_method  # noqa: E402

CLASSES = ["no change", "change"]
THRESHOLD = 0.3
TEST_INPUTS = Path(__file__).resolve().parents[1] / ".data" / "test-inputs"


def diff_predictor(images: torch.Tensor) -> torch.Tensor:
    """Stands in for the model (whose own tests live elsewhere): class 1 where |B - A| is large."""
    diff = (images[:, 1] - images[:, 0]).abs().mean(dim=1)
    changed = (diff > THRESHOLD).float()
    return torch.stack([1 - changed, changed], dim=1)


def read_band(path: Path) -> tuple[np.ndarray, dict]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as dataset:
            return dataset.read(1), dataset.profile


def nearest_polygon(features: list[dict], transform, centre: tuple[float, float]) -> tuple[dict, float]:
    """The feature whose centroid (in A's pixels) is nearest ``centre``, and that distance in pixels."""

    def distance(feature):
        col, row = mg.apply_affine(~transform, *feature["centroid"])
        return float(np.hypot(col - centre[0], row - centre[1]))

    best = min(features, key=distance)
    return best, distance(best)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# stretch -------------------------------------------------------------------------------------------
def _pooled_percentiles(*paths: Path, nodata) -> np.ndarray:
    values = []
    for path in paths:
        with rasterio.open(path) as dataset:
            data = dataset.read([1, 2, 3]).astype(np.float64)
        ok = np.isfinite(data).all(axis=0)
        if nodata is not None and not np.isnan(nodata):
            ok &= (data != nodata).all(axis=0)
        values.append(data[:, ok])
    return np.percentile(np.concatenate(values, axis=1), (2, 98), axis=1)


def test_stretch_rule_uint16_pools_both_dates_and_ignores_nodata(tmp_path):
    # 1600 nodata pixels (2.7 %) in A: counted, they would drag the 2nd percentile to 0
    pair = mg.make_pair(tmp_path, dtype="uint16", nodata=0, nodata_box_a=mg.Change(250, 150, 40, 40))
    with aligned_pair(pair.a, pair.b) as aligned:
        rule = aligned.rule
        low, high = _pooled_percentiles(pair.a, pair.b, nodata=0)
        np.testing.assert_allclose(rule.low, low)
        np.testing.assert_allclose(rule.high, high)
        assert (rule.low > 0).all() and rule.percentiles == (2, 98)
        image, valid = aligned.read(Window(0, 0, 300, 200))
        raw_a, _ = aligned.a.read(Window(0, 0, 300, 200))
        raw_b, _ = aligned.b.read(Window(0, 0, 300, 200))
    # one rule for both dates
    np.testing.assert_allclose(image[0].numpy()[:, valid], rule.scale(raw_a)[:, valid])
    np.testing.assert_allclose(image[1].numpy()[:, valid], rule.scale(raw_b)[:, valid])
    assert not valid[150:190, 250:290].any() and valid.sum() == 300 * 200 - 1600
    assert (image[:, :, ~valid] == 0).all()


def test_stretch_rule_float_nan_nodata_and_uint8_identity(tmp_path):
    nan_pair = mg.make_pair(
        tmp_path / "f", dtype="float32", nodata=float("nan"), nodata_box_b=mg.Change(0, 0, 300, 40)
    )
    with aligned_pair(nan_pair.a, nan_pair.b) as aligned:
        low, high = _pooled_percentiles(nan_pair.a, nan_pair.b, nodata=float("nan"))
        np.testing.assert_allclose(aligned.rule.low, low, rtol=1e-6)
        np.testing.assert_allclose(aligned.rule.high, high, rtol=1e-6)
        assert np.isfinite(aligned.rule.low).all()
    byte_pair = mg.make_pair(tmp_path / "u8")
    with aligned_pair(byte_pair.a, byte_pair.b) as aligned:
        assert aligned.rule.low.tolist() == [0, 0, 0] and aligned.rule.high.tolist() == [255, 255, 255]
        assert aligned.rule.is_identity
        values = np.arange(256, dtype=np.float32).reshape(1, 1, 256).repeat(3, axis=0)
        assert (aligned.rule.apply(values) == values.astype(np.uint8)).all()


def test_stretch_rule_apply_clips_and_reads_decimated(tmp_path):
    rule = StretchRule(np.array([100.0, 0, 0]), np.array([300.0, 10, 10]))
    out = rule.apply(np.array([[[50.0, 100, 200, 300, 900]], [[0, 5, 10, 20, -1]], [[0] * 5]]))
    assert out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 128, 255, 255] and out[1, 0].tolist() == [0, 128, 255, 255, 0]
    pair = mg.make_pair(tmp_path, dtype="uint16")
    with open_scene(pair.a) as scene:
        assert scene.sample(64).shape == (3, 64 * 43)  # 300 x 200 read at 64 x 43
    with open_scene(pair.a) as a, open_scene(pair.b) as b:
        coarse, full = StretchRule.fit(a, b, sample=100), StretchRule.fit(a, b, sample=1024)
    np.testing.assert_allclose(coarse.low, full.low, rtol=0.05)
    np.testing.assert_allclose(coarse.high, full.high, rtol=0.05)


def _rewrite(src: Path, dst: Path, order=None, scale: float = 1.0, colorinterp=None, descriptions=None):
    """A copy of ``src`` with its bands in ``order`` (1-based; None: as they are), values x ``scale``, and
    the given colour interpretation (ColorInterp names) and band descriptions, as another producer would
    write it."""
    from rasterio.enums import ColorInterp

    with rasterio.open(src) as source:
        order = order or list(range(1, source.count + 1))
        profile = source.profile | {"count": len(order)}
        data = source.read(list(order)).astype(np.float64) * scale
    data = np.rint(data).astype(profile["dtype"]) if scale != 1 else data.astype(profile["dtype"])
    with rasterio.open(dst, "w", **profile) as target:
        target.write(data)
        if colorinterp is not None:
            target.colorinterp = [ColorInterp[name] for name in colorinterp]
        if descriptions is not None:
            target.descriptions = tuple(descriptions)
    return dst


def test_dark_uint8_pair_is_stretched_and_a_well_exposed_one_is_not(tmp_path):
    pair = mg.make_pair(tmp_path)  # water ~8 .. sand ~230: uses the range
    with aligned_pair(pair.a, pair.b) as aligned:
        assert aligned.rule.is_identity and "already using the range" in aligned.rule.reason
        bright_image, valid = aligned.read(Window(0, 0, 300, 200))
    # a dark, low-contrast 8-bit pair (values 1..50, like raw 8-bit DN): pooled 2nd-98th percentiles
    dark_a = _rewrite(pair.a, tmp_path / "dark_a.tif", scale=0.22)
    dark_b = _rewrite(pair.b, tmp_path / "dark_b.tif", scale=0.22)
    with aligned_pair(dark_a, dark_b) as aligned:
        rule = aligned.rule
        assert not rule.is_identity and "dark or low in contrast" in rule.reason and "< 96" in rule.reason
        low, high = _pooled_percentiles(dark_a, dark_b, nodata=None)
        np.testing.assert_allclose(rule.low, low)
        np.testing.assert_allclose(rule.high, high)
        image, _ = aligned.read(Window(0, 0, 300, 200))
        with rasterio.open(dark_a) as dataset:
            raw_mean = dataset.read().mean() / 255
    assert float(image[0].mean()) > 2.5 * raw_mean  # what the model and the report see is no longer dark
    assert float(image[0].mean()) == pytest.approx(float(bright_image[0].mean()), abs=0.12)
    assert float((image[1] - image[0]).abs().mean()) < 0.05  # one rule for both dates: no false change
    with aligned_pair(dark_a, dark_b, stretch="none") as aligned:
        assert aligned.rule.is_identity and "'none'" in aligned.rule.reason
    with aligned_pair(pair.a, pair.b, stretch="percentile") as aligned:
        assert not aligned.rule.is_identity and "'percentile'" in aligned.rule.reason
    wide = mg.make_pair(tmp_path / "u16", dtype="uint16")
    with aligned_pair(wide.a, wide.b) as aligned:
        assert "uint16 data is always stretched" in aligned.rule.reason
    with pytest.raises(DataError, match=r"scene_a\.tif: is uint16: --stretch none .* needs 8-bit data"):
        aligned_pair(wide.a, wide.b, stretch="none")
    with pytest.raises(ValueError, match="stretch mode"):
        aligned_pair(pair.a, pair.b, stretch="gamma")


# bands and errors ----------------------------------------------------------------------------------
def test_band_selection_and_its_errors(tmp_path):
    pair = mg.make_pair(tmp_path, dtype="uint16", bands=4)
    with rasterio.open(pair.a) as dataset:
        raw = dataset.read()
    with open_scene(pair.a, bands=(3, 2, 1)) as scene:
        values, valid = scene.read(Window(0, 0, 300, 200))
        assert scene.bands == (3, 2, 1) and scene.dtype == np.uint16 and scene.georeferenced
        assert scene.crs == "EPSG:32633" and scene.transform == pair.transform and scene.nodata is None
    np.testing.assert_array_equal(values, raw[[2, 1, 0]].astype(np.float32))
    assert valid.all()
    with pytest.raises(DataError, match=r"scene_a\.tif: band 5 does not exist: the raster has bands 1\.\.4"):
        open_scene(pair.a, bands=(5, 2, 1))
    with pytest.raises(DataError, match="needs 3 band indices"):
        open_scene(pair.a, bands=(1, 2))
    one = mg.make_pair(tmp_path / "one", bands=1)
    with pytest.raises(DataError) as err:
        aligned_pair(one.a, one.b)
    assert str(err.value) == f"{one.a}: has 1 band; pass --bands with 3 band indices"
    with aligned_pair(one.a, one.b, bands=(1, 1, 1)) as aligned:
        image, _ = aligned.read(Window(0, 0, 8, 8))
        assert torch.equal(image[:, 0], image[:, 2])


def test_bgr_file_is_read_as_rgb_from_its_colour_interpretation(tmp_path):
    pair = mg.make_pair(tmp_path, change=None)
    with open_scene(pair.a) as scene:  # GDAL's default RGB colour interpretation is no evidence
        assert scene.bands == (1, 2, 3) and scene.band_source == "first three bands"
        rgb, _ = scene.read(Window(0, 0, 300, 200))
    bgr = _rewrite(pair.a, tmp_path / "bgr.tif", order=(3, 2, 1), colorinterp=("blue", "green", "red"))
    with open_scene(bgr) as scene:
        assert scene.bands == (3, 2, 1) and scene.band_source == "colour interpretation"
        assert scene.labels == ("red", "green", "blue")
        values, _ = scene.read(Window(0, 0, 300, 200))
    np.testing.assert_array_equal(values, rgb)
    # B labelled by its descriptions instead, bands in RGB order: each date is read by its own labels
    named_b = _rewrite(pair.b, tmp_path / "named_b.tif", descriptions=("Red", "Green", "Blue"))
    with aligned_pair(bgr, named_b) as aligned:
        assert (aligned.a.bands, aligned.b.bands) == ((3, 2, 1), (1, 2, 3))
        assert aligned.b.band_source == "band descriptions" and aligned.b.labels == ("Red", "Green", "Blue")
        image, valid = aligned.read(Window(0, 0, 300, 200))
    assert valid.all() and torch.equal(image[0], image[1])  # the same ground, no change
    # B without labels: its bands 1, 2, 3 may be B, G, R too; the pair cannot be matched
    with pytest.raises(DataError) as err:
        aligned_pair(bgr, pair.b)
    message = str(err.value)
    assert message.startswith(f"{pair.b}: would be read as bands 1, 2, 3 = R, G, B") and "\n" not in message
    assert "GDAL's default" in message and "bgr.tif reads bands 3, 2, 1" in message and "--bands-b" in message
    with aligned_pair(bgr, pair.b, bands_b=(1, 2, 3)) as aligned:  # told: B is RGB
        assert aligned.b.band_source == "--bands"
    png_a, _, _ = mg.make_png_pair(tmp_path / "png")
    with open_scene(png_a) as scene:  # a PNG's colour interpretation is the format's own
        assert scene.bands == (1, 2, 3) and scene.band_source == "colour interpretation"


def test_band_descriptions_pick_rgb_for_sentinel2_landsat_and_common_names(tmp_path):
    s2 = mg.make_pair(tmp_path / "s2", dtype="uint16", bands=4, change=None)
    # Sentinel-2 order B02, B03, B04, B08 (blue first), as a 10 m band stack is usually written
    s2_a = _rewrite(s2.a, tmp_path / "s2_a.tif", descriptions=("B02", "B03", "B04", "B08"))
    with open_scene(s2_a) as scene:
        assert scene.bands == (3, 2, 1) and scene.band_source == "band descriptions"
        assert scene.labels == ("B04", "B03", "B02")
    l8 = mg.make_pair(tmp_path / "l8", dtype="uint16", bands=7, change=None)
    names = tuple(f"SR_B{i}" for i in range(1, 8))  # Landsat 8-9 Collection 2: SR_B4 is red
    l8_a = _rewrite(l8.a, tmp_path / "l8_a.tif", descriptions=names)
    with open_scene(l8_a) as scene:
        assert scene.bands == (4, 3, 2) and scene.labels == ("SR_B4", "SR_B3", "SR_B2")
    mixed = _rewrite(s2.a, tmp_path / "mixed.tif", descriptions=(" green", "RED", "nir", "Blue"))
    with open_scene(mixed) as scene:
        assert scene.bands == (2, 1, 4)
    with open_scene(mixed, bands=(1, 2, 3)) as scene:  # given bands win over labels
        assert scene.bands == (1, 2, 3) and scene.band_source == "--bands"
    twice = _rewrite(s2.a, tmp_path / "twice.tif", descriptions=("red", "red", "green", "blue"))
    with open_scene(twice) as scene:  # two red bands: the labels do not decide
        assert scene.bands == (1, 2, 3) and scene.band_source == "first three bands"
    with pytest.raises(DataError, match=r"s2/scene_b\.tif: would be read as bands 1, 2, 3 .* no red, green"):
        aligned_pair(s2_a, s2.b)  # a uint16 B without labels: A's bands 3, 2, 1 cannot be matched
    with aligned_pair(s2_a, _rewrite(s2.b, tmp_path / "s2_b.tif", descriptions=("B02", "B03", "B04", "B08"))):
        pass
    rgb_a = _rewrite(s2.a, tmp_path / "rgb_a.tif", descriptions=("red", "green", "blue", "nir"))
    with aligned_pair(rgb_a, s2.b) as aligned:  # A's R, G, B are its bands 1, 2, 3: B's first three match
        assert aligned.a.band_source == "band descriptions" and aligned.b.band_source == "first three bands"
    nir_b = _rewrite(s2.b, tmp_path / "nir_b.tif", order=(4, 1, 2), descriptions=("nir", "red", "green"))
    with pytest.raises(
        DataError, match=r"nir_b\.tif: .*\(band 1 is labelled nir; band 2 is labelled red; band 3"
    ):
        aligned_pair(rgb_a, nir_b)


def test_unreadable_missing_and_mixed_inputs_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    with pytest.raises(DataError, match="cannot be read as a raster") as err:
        open_scene(bad)
    assert "\n" not in str(err.value) and str(err.value).startswith(str(bad))
    with pytest.raises(DataError, match="does not exist"):
        open_scene(tmp_path / "missing.tif")
    pair = mg.make_pair(tmp_path)
    png_a, _, _ = mg.make_png_pair(tmp_path, size=(300, 200))
    with pytest.raises(DataError) as err:
        aligned_pair(pair.a, png_a)
    assert str(err.value).startswith(f"{png_a}: has no georeference but scene_a.tif has;")


def test_missing_extra_gives_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "rasterio", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'changescope\[geo\]'"):
        open_scene(tmp_path / "a.tif")


# alignment -----------------------------------------------------------------------------------------
def test_b_in_another_crs_is_put_on_a_grid(tmp_path):
    pair = mg.make_pair(tmp_path, b_crs="EPSG:4326", change=None)
    with rasterio.open(pair.b) as b:
        assert b.crs == "EPSG:4326" and (b.width, b.height) != (300, 200)
    with aligned_pair(pair.a, pair.b) as aligned:
        assert (aligned.crs, aligned.transform, aligned.width, aligned.height) == (
            "EPSG:32633",
            pair.transform,
            300,
            200,
        )
        assert aligned.b.crs == aligned.a.crs and aligned.b.transform == aligned.a.transform
        assert (aligned.b.width, aligned.b.height) == (300, 200)
        assert aligned.window == Window(0, 0, 300, 200)
        image, valid = aligned.read(Window(40, 30, 200, 150))  # the textured interior: smooth, no edges
    assert valid.all()
    assert float((image[1] - image[0]).abs().mean()) < 0.01  # same ground, resampled across CRSs


def test_b_of_another_resolution_and_extent_gives_the_overlap_window(tmp_path):
    pair = mg.make_pair(tmp_path, dtype="float32", nodata=-9999.0, b_pixel=20.0, b_shift=(40, 30))
    with aligned_pair(pair.a, pair.b) as aligned:
        assert aligned.window == Window(40, 30, 260, 170)
        image, valid = aligned.read(Window(0, 0, 300, 200))
    assert not valid[:30].any() and not valid[:, :40].any() and valid[31:, 41:].all()


def test_non_overlapping_pair_is_a_one_line_error(tmp_path):
    pair = mg.make_pair(tmp_path, b_shift=(400, 0))
    with pytest.raises(DataError) as err:
        aligned_pair(pair.a, pair.b)
    assert str(err.value) == f"{pair.b}: does not overlap scene_a.tif"
    far = mg.make_pair(tmp_path / "crs", b_crs="EPSG:4326", b_shift=(0, 5000))
    with pytest.raises(DataError, match="does not overlap scene_a.tif"):
        aligned_pair(far.a, far.b)


def test_reads_past_the_edge_are_padded_and_invalid(tmp_path):
    pair = mg.make_pair(tmp_path, size=(100, 70))
    with aligned_pair(pair.a, pair.b) as aligned:
        image, valid = aligned.read(Window(60, 40, 64, 64))
        assert image.shape == (2, 3, 64, 64) and image.dtype == torch.float32
        assert valid[:30, :40].all() and not valid[30:].any() and not valid[:, 40:].any()
        assert (image[:, :, 30:] == 0).all() and (image[:, :, :, 40:] == 0).all()
        with pytest.raises(ValueError, match="outside"):
            aligned.read(Window(60, 40, 64, 64), boundless=False)


# tiling --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "window, tile, overlap",
    [
        (Window(0, 0, 300, 200), 128, 16),  # not a multiple of the tile
        (Window(0, 0, 256, 256), 256, 32),  # exactly one tile
        (Window(7, 5, 513, 257), 128, 32),  # offset window
        (Window(3, 2, 100, 50), 128, 16),  # smaller than one tile
        (Window(0, 0, 1000, 90), 256, 0),  # no overlap, short
    ],
)
def test_tile_windows_cover_every_pixel_and_stay_full_size(window, tile, overlap):
    tiles = tile_windows(window, tile, overlap)
    col0, row0, w, h = window.col_off, window.row_off, window.width, window.height
    cover = np.zeros((row0 + max(h, tile), col0 + max(w, tile)), int)
    for t in tiles:
        assert (t.width, t.height) == (tile, tile)
        assert t.col_off >= col0 and t.row_off >= row0
        if w >= tile:
            assert t.col_off + tile <= col0 + w
        if h >= tile:
            assert t.row_off + tile <= row0 + h
        cover[t.row_off : t.row_off + tile, t.col_off : t.col_off + tile] += 1
    assert (cover[row0 : row0 + h, col0 : col0 + w] >= 1).all()
    assert [(t.row_off, t.col_off) for t in tiles] == sorted((t.row_off, t.col_off) for t in tiles)
    cols = sorted({t.col_off for t in tiles})
    assert all(b - a <= tile - overlap for a, b in zip(cols, cols[1:], strict=False))


def test_blend_weights_are_positive_and_seam_free():
    weights = blend_weights(64, 16)
    assert weights.shape == (64, 64) and weights.dtype == np.float32
    assert (weights > 0).all() and weights.max() == 1.0 and weights[32, 32] == 1.0
    np.testing.assert_array_equal(weights, weights.T)
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])
    assert (blend_weights(8, 0) == 1).all()
    # blending any field that every tile predicts exactly gives that field back: no seams
    height, width = 150, 230
    field = np.linspace(0, 1, width)[None, :] * np.linspace(0.5, 1, height)[:, None]
    sums, total = np.zeros((height, width)), np.zeros((height, width))
    for t in tile_windows(Window(0, 0, width, height), 64, 16):
        rows = slice(t.row_off, t.row_off + 64)
        cols = slice(t.col_off, t.col_off + 64)
        sums[rows, cols] += weights * field[rows, cols]
        total[rows, cols] += weights
    np.testing.assert_allclose(sums / total, field, atol=1e-6)


def _random_tiles(window, size, tile, overlap, classes, seed=0):
    rng = np.random.default_rng(seed)
    width, height = size
    yy, xx = np.mgrid[0:height, 0:width]
    hole = (xx - 120) ** 2 + (yy - 90) ** 2 < 30**2  # invalid disc, as nodata in a date would be
    for t in tile_windows(window, tile, overlap):
        probs = rng.random((classes, tile, tile)).astype(np.float32)
        valid = np.zeros((tile, tile), bool)
        rows = slice(t.row_off, min(t.row_off + tile, height))
        cols = slice(t.col_off, min(t.col_off + tile, width))
        valid[: rows.stop - rows.start, : cols.stop - cols.start] = ~hole[rows, cols]
        yield t, probs, valid


def _naive_blend(window, size, tile, overlap, classes):
    width, height = size
    sums = np.zeros((classes, height, width), np.float32)
    total = np.zeros((height, width), np.float32)
    inside = np.zeros((height, width), bool)
    r0, c0 = window.row_off, window.col_off
    inside[r0 : r0 + window.height, c0 : c0 + window.width] = True
    for t, probs, valid in _random_tiles(window, size, tile, overlap, classes):
        h, w = min(tile, height - t.row_off), min(tile, width - t.col_off)
        dst = (slice(t.row_off, t.row_off + h), slice(t.col_off, t.col_off + w))
        weight = blend_weights(tile, overlap)[:h, :w] * valid[:h, :w] * inside[dst]
        sums[(slice(None), *dst)] += probs[:, :h, :w] * weight
        total[dst] += weight
    out = np.argmax(sums, axis=0).astype(np.uint8)
    out[total <= 0] = 255
    return out


def test_strip_mosaic_equals_a_naive_full_array_blend(tmp_path):
    size, tile, overlap, classes = (300, 200), 64, 16, 3
    window = Window(10, 7, 250, 180)
    transform = mg.a_grid("EPSG:32633")
    out = tmp_path / "changes.tif"
    with StripMosaic(out, *size, "EPSG:32633", transform, classes, tile, overlap, window=window) as mosaic:
        for t, probs, valid in _random_tiles(window, size, tile, overlap, classes):
            mosaic.add(t, probs, valid)
        assert not out.exists()  # renamed into place only when closed
    data, profile = read_band(out)
    np.testing.assert_array_equal(data, _naive_blend(window, size, tile, overlap, classes))
    assert profile["crs"] == "EPSG:32633" and profile["transform"] == transform
    assert (profile["dtype"], profile["count"], profile["nodata"], profile["compress"]) == (
        "uint8",
        1,
        255,
        "deflate",
    )
    assert profile["tiled"] and (profile["blockxsize"], profile["blockysize"]) == (256, 256)
    assert (data[:7] == 255).all() and (data[:, :10] == 255).all() and (data[187:] == 255).all()
    assert (data[:, 260:] == 255).all() and set(np.unique(data[7:187, 10:260])) == {0, 1, 2, 255}
    assert leftovers(tmp_path) == ["changes.tif"]


def test_strip_mosaic_memory_does_not_grow_with_scene_height(tmp_path):
    tile, overlap, classes, width = 64, 8, 3, 100
    peaks, shapes = [], []
    for height in (256, 2048):
        window = Window(0, 0, width, height)
        transform = mg.a_grid("EPSG:32633")
        tiles = tile_windows(window, tile, overlap)
        probs = np.full((classes, tile, tile), 0.5, np.float32)
        valid = np.ones((tile, tile), bool)
        tracemalloc.start()
        with StripMosaic(
            tmp_path / f"h{height}.tif", width, height, None, transform, classes, tile, overlap
        ) as m:
            shapes.append((m.sums.shape, m.weights.shape))
            for t in tiles:
                m.add(t, probs, valid)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert shapes[0] == shapes[1] == (((classes, tile, width)), (tile, width))
    assert peaks[1] < 1.2 * peaks[0], peaks  # 8 x the rows, same peak


# the pipeline --------------------------------------------------------------------------------------
def test_run_tiles_writes_nodata_outside_the_footprint_and_in_nodata(tmp_path):
    pair = mg.make_pair(
        tmp_path,
        dtype="float32",
        nodata=-9999.0,
        b_pixel=20.0,
        b_shift=(40, 30),
        nodata_box_b=mg.Change(60, 150, 30, 30),
    )
    calls = []
    out = tmp_path / "out" / "changes.tif"
    with aligned_pair(pair.a, pair.b) as aligned:
        run_tiles(
            aligned,
            diff_predictor,
            out,
            2,
            tile=128,
            overlap=16,
            batch_size=3,
            progress=lambda *a: calls.append(a),
        )
    data, profile = read_band(out)
    assert profile["crs"] == "EPSG:32633" and profile["transform"] == pair.transform
    assert data.shape == (200, 300)
    assert (data[:30] == 255).all() and (data[:, :40] == 255).all()
    assert (data[151:179, 61:89] == 255).all()  # B's nodata box (its rim is bilinear-blended)
    assert calls[-1][0] == calls[-1][1] and [c[0] for c in calls] == sorted(c[0] for c in calls)
    col0, row0 = pair.change.col, pair.change.row
    assert (data[row0 + 1 : row0 + 9, col0 + 1 : col0 + 11] == 1).all()


def test_ctrl_c_midway_leaves_no_output_and_no_temp_file(tmp_path):
    pair = mg.make_pair(tmp_path / "in")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    calls = 0

    def interrupted(images):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt
        return diff_predictor(images)

    with aligned_pair(pair.a, pair.b) as aligned, pytest.raises(KeyboardInterrupt):
        run_tiles(aligned, interrupted, out_dir / "changes.tif", 2, tile=64, overlap=8, batch_size=2)
    assert calls == 2 and leftovers(out_dir) == []
    transform = mg.a_grid("EPSG:32633")
    with pytest.raises(rasterio.errors.CRSError):  # failing while opening the output
        StripMosaic(out_dir / "changes.tif", 64, 64, "EPSG:999999", transform, 2, 32, 8)
    mosaic = StripMosaic(out_dir / "changes.tif", 64, 64, "EPSG:32633", transform, 2, 32, 8)
    mosaic.add(Window(0, 24, 32, 32), np.ones((2, 32, 32)), np.ones((32, 32), bool))
    with pytest.raises(ValueError, match="row-major order"):
        mosaic.add(Window(0, 0, 32, 32), np.ones((2, 32, 32)), np.ones((32, 32), bool))
    mosaic.abort()
    assert leftovers(out_dir) == []


@pytest.mark.parametrize("crs", ["EPSG:4326", "EPSG:32633", "EPSG:3857"])
def test_painted_change_is_found_where_it_was_painted(tmp_path, crs):
    pair = mg.make_pair(tmp_path, crs=crs, dtype="uint16", change=mg.Change(180, 120, 14, 9))
    out = tmp_path / "changes.tif"
    with aligned_pair(pair.a, pair.b) as aligned:
        run_tiles(aligned, diff_predictor, out, 2, tile=128, overlap=16)
    features = polygonize(out, CLASSES)
    found, distance = nearest_polygon(features, pair.transform, pair.change.centre)
    assert distance <= 2 and found["class_name"] == "change" and found["pixels"] == 14 * 9
    assert found["bbox_pixels"] == (180, 120, 194, 129)
    lon, lat = found["centroid_lonlat"]
    assert 15.0 < lon < 15.05 and 45.0 < lat < 45.11


def test_scene_smaller_than_one_tile(tmp_path):
    pair = mg.make_pair(tmp_path, size=(100, 70), change=mg.Change(40, 30, 8, 6))
    out = tmp_path / "changes.tif"
    with aligned_pair(pair.a, pair.b) as aligned:
        run_tiles(aligned, diff_predictor, out, 2, tile=128, overlap=16)
    data, _ = read_band(out)
    assert data.shape == (70, 100) and (data != 255).all() and data.sum() == 48


# areas and vectors ---------------------------------------------------------------------------------
def _class_map(path: Path, crs: str, transform) -> np.ndarray:
    data = np.zeros((60, 80), np.uint8)
    data[5:15, 5:25] = 1  # a rectangle
    data[20:23, 30:33] = 2
    data[23:26, 33:36] = 2  # diagonal touch: one 8-connected polygon
    data[30:50, 40:70] = 1
    data[35:40, 50:55] = 0  # with a hole
    data[55:60, 0:5] = 255  # nodata
    data[0, 79] = 1  # a single pixel
    mg.write_geotiff(path, data[None], crs, transform, nodata=255)
    return data


def _geodesic_pixels_m2(data: np.ndarray, crs: str, transform) -> float:
    """Independent check: the sum of each changed pixel's own geodesic area (lon/lat corners)."""
    geod = pyproj.Geod(ellps="WGS84")
    to_lonlat = pyproj.Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    total = 0.0
    for row, col in zip(*np.nonzero((data != 0) & (data != 255)), strict=True):
        corners = [
            mg.apply_affine(transform, col + dx, row + dy) for dx, dy in ((0, 0), (1, 0), (1, 1), (0, 1))
        ]
        lon, lat = to_lonlat.transform(*zip(*corners, strict=True))
        total += abs(geod.polygon_area_perimeter(lon, lat)[0])
    return total


@pytest.mark.parametrize("crs", ["EPSG:32633", "EPSG:4326", "EPSG:3857"])
def test_polygon_areas_add_up_to_pixel_areas(tmp_path, crs):
    transform = mg.a_grid(crs)
    data = _class_map(tmp_path / "map.tif", crs, transform)
    features = polygonize(tmp_path / "map.tif", CLASSES + ["road"])
    changed = int(((data != 0) & (data != 255)).sum())
    assert sum(f["pixels"] for f in features) == changed
    assert sorted(f["pixels"] for f in features) == [1, 18, 200, 575]
    assert {f["class_name"] for f in features} == {"change", "road"}
    assert [f["pixels"] for f in polygonize(tmp_path / "map.tif", CLASSES, min_area_px=2)] == [575, 200, 18]
    total = sum(f["area_m2"] for f in features)
    rule = area_method(crs, transform, data.shape)
    assert {f["area_method"] for f in features} == {rule["method"]}
    if crs == "EPSG:32633":  # projected, scale ~1: planar, exact
        assert total == pytest.approx(changed * 100.0, rel=1e-12)
        assert area_per_pixel_m2(crs, transform, 3, 4) == pytest.approx(100.0)
        assert rule["method"] == "planar (projected CRS units, converted to m2)"
        assert "at the scene centre is 0.9992" in rule["reason"] and "within 1 %" in rule["reason"]
    else:
        # geographic: geodesic; Web Mercator (areal scale 2 at 45 N) is geodesic too rather than planar
        assert total == pytest.approx(_geodesic_pixels_m2(data, crs, transform), rel=0.005)
        assert area_per_pixel_m2(crs, transform, 3, 4) == pytest.approx(total / changed, rel=0.005)
        assert rule["method"] == "geodesic (WGS 84 ellipsoid)"
        why = "geographic CRS" if crs == "EPSG:4326" else "at the scene centre is 2"
        assert why in rule["reason"]
    assert area_per_pixel_m2(None, transform, 0, 0) is None
    assert area_method(None, transform, data.shape)["method"] == "unknown (no georeference)"


#: Mars (2015) sphere, equirectangular (x = R lon, y = R lat): a CRS PROJ cannot take to WGS 84
MARS = "IAU_2015:49910"
MARS_R = 3_396_190.0
#: the orthographic view of the Earth from above 45 N 15 E: no coordinates beyond the horizon
ORTHO = "+proj=ortho +lat_0=45 +lon_0=15 +datum=WGS84 +units=m +no_defs"


def _mars_pixels_m2(data: np.ndarray, transform) -> float:
    """Independent check: the exact area of each changed pixel, a lon / lat rectangle on Mars' sphere."""
    total = 0.0
    for row, col in zip(*np.nonzero((data != 0) & (data != 255)), strict=True):
        x0, y0 = mg.apply_affine(transform, col, row)
        x1, y1 = mg.apply_affine(transform, col + 1, row + 1)
        lat0, lat1 = sorted((y0 / MARS_R, y1 / MARS_R))
        total += MARS_R**2 * abs(x1 - x0) / MARS_R * (np.sin(lat1) - np.sin(lat0))
    return total


@pytest.mark.parametrize(
    ("crs", "origin", "pixel", "method", "why"),
    [
        # Greenland zone 5 east: Lambert Conic Conformal (West Orientated), which PROJ cannot transform
        ("EPSG:2218", (500_000.0, 7_000_000.0), 10.0, "planar", "Input is not a transformation"),
        # on Mars, 60 N: the areal scale is 2; the geodesic area is on Mars' own sphere
        (MARS, (0.0, MARS_R * np.radians(60)), 100.0, "geodesic (Mars (2015) - Sphere ellipsoid)", "from 1"),
        (MARS, (0.0, 3000.0), 100.0, "planar", "within 1 %"),  # at Mars' equator: scale 1
        # a grid straddling the horizon, its centre beyond it: PROJ cannot compute the areal scale there
        (
            ORTHO,
            (6_000_000.0, 300_000.0),
            10_000.0,
            "geodesic (WGS 84 ellipsoid)",
            "ProjError: transform error",
        ),
    ],
)
def test_area_method_where_proj_cannot_do_everything(tmp_path, crs, origin, pixel, method, why):
    if crs == MARS:
        crs = pyproj.CRS(MARS).to_wkt()
    transform = rasterio.Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1])
    data = _class_map(tmp_path / "map.tif", crs, transform)
    if crs.startswith("+proj=ortho"):
        data = np.where(np.arange(80) < 30, data, 0).astype(np.uint8)  # changes west of x = 6 300 km only
        mg.write_geotiff(tmp_path / "map.tif", data[None], crs, transform, nodata=255)
    features = polygonize(tmp_path / "map.tif", CLASSES + ["road"])
    with rasterio.open(tmp_path / "map.tif") as dataset:
        rule = area_method(dataset.crs, dataset.transform, data.shape)
    assert rule["method"].startswith(method) and why in rule["reason"], rule
    assert {f["area_method"] for f in features} == {rule["method"]}
    changed = int(((data != 0) & (data != 255)).sum())
    total = sum(f["area_m2"] for f in features)
    if rule["method"].startswith("planar"):
        assert total == pytest.approx(changed * pixel**2, rel=1e-9)
    elif crs.startswith("+proj=ortho"):
        assert total == pytest.approx(_geodesic_pixels_m2(data, crs, transform), rel=0.005)
    else:
        assert total == pytest.approx(_mars_pixels_m2(data, transform), rel=0.001)
        assert total == pytest.approx(changed * pixel**2 / 2, rel=0.01)  # cos 60 = 1 / 2
    lonlat = [f["centroid_lonlat"] for f in features]
    if crs.startswith("+proj=ortho"):
        assert all(14 < lon < 105 and 0 < lat < 90 for lon, lat in lonlat)
    else:  # no transformation to WGS 84: no lon / lat, and GeoJSON keeps the raster's coordinates
        assert lonlat == [None] * len(features)
        write_vectors(features, tmp_path / "changes.geojson", dataset.crs)
        collection = json.loads((tmp_path / "changes.geojson").read_text())
        assert "PROJ cannot transform" in collection["note"] and "raster's CRS" in collection["note"]
        first = shapely.geometry.shape(collection["features"][0]["geometry"])
        assert first.equals(features[0]["geometry"])
        assert collection["features"][0]["properties"]["area_method"] == rule["method"]
        write_vectors(features, tmp_path / "changes.gpkg", dataset.crs, "gpkg")
        meta, _, _, fields = pyogrio.raw.read(tmp_path / "changes.gpkg")
        assert dict(zip(meta["fields"], fields, strict=True))["area_method"].tolist() == [rule["method"]] * 4


def test_geojson_and_gpkg_round_trip(tmp_path):
    transform = mg.a_grid("EPSG:32633")
    _class_map(tmp_path / "map.tif", "EPSG:32633", transform)
    features = polygonize(tmp_path / "map.tif", CLASSES + ["road"])
    captions = [
        {"caption": f"region {i}", "score": i / 2 if i else float("nan")} for i in range(len(features))
    ]
    with rasterio.open(tmp_path / "map.tif") as dataset:
        crs = dataset.crs

    write_vectors(features, tmp_path / "changes.geojson", crs, extra_properties=captions)
    collection = json.loads((tmp_path / "changes.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection and "note" not in collection
    assert len(collection["features"]) == len(features)
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
    for written, feature, caption in zip(collection["features"], features, captions, strict=True):
        props = written["properties"]
        assert props["caption"] == caption["caption"] and props["class"] == feature["class_name"]
        assert props["score"] == (None if np.isnan(caption["score"]) else caption["score"])  # NaN -> null
        assert props["pixels"] == feature["pixels"] and props["area_m2"] == feature["area_m2"]
        lonlat = shapely.geometry.shape(written["geometry"])
        assert lonlat.exterior.is_ccw  # RFC 7946 right-hand rule
        assert (props["centroid_lon"], props["centroid_lat"]) == pytest.approx(feature["centroid_lonlat"])
        back = shapely.transform(lonlat, lambda xy: np.column_stack(to_utm.transform(xy[:, 0], xy[:, 1])))
        assert back.symmetric_difference(feature["geometry"]).area < 0.01 * feature["geometry"].area

    write_vectors(features, tmp_path / "changes.gpkg", crs, "gpkg", extra_properties=captions)
    info = pyogrio.read_info(tmp_path / "changes.gpkg")
    assert (
        info["crs"] == "EPSG:32633" and info["features"] == len(features) and info["layer_name"] == "changes"
    )
    meta, _, geometry, fields = pyogrio.raw.read(tmp_path / "changes.gpkg")
    columns = dict(zip(meta["fields"], fields, strict=True))
    assert columns["caption"].tolist() == [c["caption"] for c in captions]
    np.testing.assert_array_equal(columns["score"], [c["score"] for c in captions])  # NaN read back as NaN
    assert columns["pixels"].tolist() == [f["pixels"] for f in features]
    assert np.isnan(columns["centroid_lon"]).sum() == 0
    for wkb, feature in zip(geometry, features, strict=True):
        assert shapely.from_wkb(wkb).equals(feature["geometry"])
    assert leftovers(tmp_path) == ["changes.geojson", "changes.gpkg", "map.tif"]
    with pytest.raises(ValueError, match="2 extra property dicts for 4 features"):
        write_vectors(features, tmp_path / "x.geojson", crs, extra_properties=captions[:2])
    for kind in ("geojson", "gpkg"):  # a scene without changes still gets its (empty) files
        write_vectors([], tmp_path / f"empty.{kind}", crs, kind)
    assert json.loads((tmp_path / "empty.geojson").read_text())["features"] == []
    assert pyogrio.read_info(tmp_path / "empty.gpkg")["features"] == 0
    with pytest.raises(ValueError, match="may not replace"):
        write_vectors(features, tmp_path / "x.geojson", crs, extra_properties=[{"class": "x"}] * 4)


def test_png_without_georeference_works_in_pixel_coordinates(tmp_path):
    path_a, path_b, change = mg.make_png_pair(tmp_path)
    out = tmp_path / "changes.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotGeoreferencedWarning)
        with aligned_pair(path_a, path_b) as aligned:
            assert not aligned.georeferenced and aligned.crs is None and aligned.transform.is_identity
            run_tiles(aligned, diff_predictor, out, 2, tile=64, overlap=8)
        features = polygonize(out, CLASSES)
    _, profile = read_band(out)
    assert profile["crs"] is None
    (found,) = features
    assert found["area_m2"] is None and found["centroid_lonlat"] is None
    assert found["centroid"] == pytest.approx(change.centre) and found["pixels"] == 80
    write_vectors(features, tmp_path / "changes.geojson", None)
    collection = json.loads((tmp_path / "changes.geojson").read_text())
    assert "pixel" in collection["note"]
    xs, ys = zip(*collection["features"][0]["geometry"]["coordinates"][0], strict=True)
    assert (min(xs), min(ys), max(xs), max(ys)) == (60, 40, 70, 48)
    write_vectors(features, tmp_path / "changes.gpkg", None, "gpkg")
    assert pyogrio.read_info(tmp_path / "changes.gpkg")["crs"] is None
    small_b = tmp_path / "small.png"
    shutil.copyfile(mg.make_png_pair(tmp_path / "s", size=(50, 40), change=mg.Change(5, 5, 4, 4))[1], small_b)
    with pytest.raises(DataError, match="images without georeference must have the same size"):
        aligned_pair(path_a, small_b)


# a real scene ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def landsat() -> Path:
    """L7_ETMs.tif (Landsat 7, 349 x 352, 6 bands, EPSG:31985) from Debian's r-cran-stars package, fetched
    by `make test` (tests/data/fetch_inputs.py); CHANGESCOPE_L7_ETMS names another copy."""
    from conftest import missing_input

    path = Path(os.environ.get("CHANGESCOPE_L7_ETMS") or TEST_INPUTS / "L7_ETMs.tif")
    if not path.is_file():
        missing_input(f"{path} is missing: run `make test-inputs` (tests/data/fetch_inputs.py)")
    return path


def _warp_copy(src: Path, dst: Path, crs: str) -> Path:
    """``src`` reprojected (bilinear) to ``crs``, 0 = nodata: B as another provider would deliver it."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src) as source:
        transform, width, height = calculate_default_transform(
            source.crs, crs, source.width, source.height, *source.bounds
        )
        profile = source.profile | {
            "crs": crs,
            "transform": transform,
            "width": width,
            "height": height,
            "nodata": 0,
        }
        with rasterio.open(dst, "w", **profile) as target:
            for band in range(1, source.count + 1):
                reproject(
                    rasterio.band(source, band), rasterio.band(target, band), resampling=Resampling.bilinear
                )
    return dst


def test_real_landsat_scene_change_is_found(tmp_path, landsat):
    change = mg.Change(200, 150, 12, 10)
    painted = mg.paint_copy(landsat, tmp_path / "l7_painted.tif", change, value=255)
    b = _warp_copy(painted, tmp_path / "l7_b_wgs84.tif", "EPSG:4326")  # B in another CRS and grid
    out = tmp_path / "changes.tif"
    with aligned_pair(landsat, b, bands=(3, 2, 1)) as aligned:
        # 8-bit DN in a narrow dark range (widest band 2nd-98th percentile spread about 81 of 255): "auto"
        # stretches it, which would also make diff_predictor's fixed threshold 3 x more sensitive
        assert not aligned.rule.is_identity and "dark or low in contrast" in aligned.rule.reason
        assert 70 < (aligned.rule.high - aligned.rule.low).max() < 90
    with aligned_pair(landsat, b, bands=(3, 2, 1), stretch="none") as aligned:  # co-registration as such
        assert aligned.crs == "EPSG:31985" and (aligned.width, aligned.height) == (349, 352)
        assert aligned.rule.is_identity
        run_tiles(aligned, diff_predictor, out, 2, tile=128, overlap=16)
    features = polygonize(out, CLASSES)
    found, distance = nearest_polygon(features, aligned.transform, change.centre)
    assert distance <= 2 and found["pixels"] >= 0.8 * 120
    assert sum(f["pixels"] for f in features) <= 1.2 * 120  # two bilinear resamplings add no false changes
    assert found["area_m2"] == pytest.approx(found["pixels"] * 28.5**2, rel=1e-6)
    lon, lat = found["centroid_lonlat"]
    assert -35.1 < lon < -34.7 and -8.2 < lat < -7.8  # Olinda, Brazil
