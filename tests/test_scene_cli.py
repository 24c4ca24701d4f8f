"""`changescope scene` end to end with the shipped model, on GeoTIFF mosaics of SynthChange pairs.

The geo layer's own tests (test_geo.py) cover CRSs, dtypes, nodata, co-registration, tiling and areas with
a deterministic stand-in predictor; here the real default model runs through the real command.
"""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from test_train_cli import cli

rasterio = pytest.importorskip("rasterio")

from changescope.geo.synth_scene import write_synth_scene  # noqa: E402
from changescope.tasks.inference import DEFAULT_MODEL  # noqa: E402


def _needs_mask_model():
    config = DEFAULT_MODEL / "config.json"
    if not config.is_file() or not json.loads(config.read_text()).get("classes"):
        pytest.skip("the shipped model has no change-mask head in this checkout")


@pytest.fixture(scope="module")
def utm_scene(tmp_path_factory):
    return write_synth_scene(tmp_path_factory.mktemp("scene"), size=512, seed=3, changed=True)


def test_scene_maps_changes_on_a_grid_and_reports_them(tmp_path, utm_scene):
    _needs_mask_model()
    out = tmp_path / "out"
    printed = cli("scene", utm_scene["A"], utm_scene["B"], "--out", out, "--tile", "256", "--overlap", "32")
    assert "changed regions" in printed.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "changes.geojson",
        "changes.tif",
        "report.html",
        "summary.json",
    ]
    with rasterio.open(out / "changes.tif") as changes, rasterio.open(utm_scene["A"]) as a:
        assert changes.crs == a.crs and changes.transform == a.transform and changes.shape == a.shape
        assert changes.nodata == 255 and changes.profile["tiled"]
        predicted = changes.read(1)
    with rasterio.open(utm_scene["truth"]) as truth_file:
        truth = truth_file.read(1)
    # the change is found where it is: binary change IoU against the exact SynthChange truth
    hit = ((predicted > 0) & (predicted != 255) & (truth > 0)).sum()
    union = (((predicted > 0) & (predicted != 255)) | (truth > 0)).sum()
    assert hit / union > 0.5

    summary = json.loads((out / "summary.json").read_text())
    geojson = json.loads((out / "changes.geojson").read_text())
    features = geojson["features"]
    assert len(features) == summary["regions_total"] > 0
    # 0.5 m pixels in UTM: every polygon's area is its pixel count x 0.25 m2
    for feature in features:
        props = feature["properties"]
        assert props["area_m2"] == pytest.approx(props["pixels"] * 0.25, rel=1e-6)
        lon, lat = feature["geometry"]["coordinates"][0][0]
        assert 14 < lon < 16 and 44 < lat < 46  # EPSG:32633 near (500000, 5000000): lon/lat per RFC 7946
    captioned = [f for f in features if f["properties"]["caption"]]
    assert len(captioned) == summary["regions_captioned"] == min(50, len(features))
    for name, row in summary["classes"].items():
        mine = [f["properties"] for f in features if f["properties"]["class"] == name]
        assert row["regions"] == len(mine)
        assert row["area_m2"] == pytest.approx(sum(p["area_m2"] for p in mine), abs=0.05)
    assert summary["crs"] == "EPSG:32633" and summary["stretch"]["rule"].startswith("identity")
    assert summary["stretch"]["mode"] == "auto" and "already using the range" in summary["stretch"]["reason"]
    assert summary["bands"] == {
        "rgb": [1, 2, 3],
        "source": "first three bands",
        "labels": ["red", "green", "blue"],
    }
    assert summary["area_method"] == "planar (projected CRS units, converted to m2)"
    assert "within 1 % of 1" in summary["area_method_reason"]
    assert {f["properties"]["area_method"] for f in features} == {summary["area_method"]}
    assert summary["resolution"]["gsd_m"] == 0.5 and summary["resolution"]["gsd_source"] == "georeference"
    assert "<img" in (out / "report.html").read_text()


def test_scene_from_plain_images_works_in_pixels(tmp_path, utm_scene):
    _needs_mask_model()
    for name in ("A", "B"):
        with rasterio.open(utm_scene[name]) as src:
            Image.fromarray(src.read()[:, :300, :280].transpose(1, 2, 0)).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    args = ("--out", out, "--json", "--max-captions", "2", "--vector-format", "gpkg")
    summary = json.loads(cli("scene", tmp_path / "A.png", tmp_path / "B.png", *args).stdout)
    assert summary["georeferenced"] is False and "pixel" in summary["note"]
    assert summary["area_method"] == "unknown (no georeference)"
    assert summary["bands"]["source"] == "colour interpretation"  # a PNG's RGB is the format's own
    assert summary["size"] == [280, 300]  # not a multiple of the tile; smaller than two tiles
    assert all(r["area_m2"] is None for r in summary["regions"])
    pyogrio = pytest.importorskip("pyogrio")
    meta, _, geometry, fields = pyogrio.raw.read(out / "changes.gpkg")
    columns = dict(zip(meta["fields"], fields, strict=True))
    assert len(geometry) == summary["regions_total"] and "caption" in columns
    assert sorted(columns["pixels"]) == sorted(r["pixels"] for r in summary["regions"])
    assert set(columns["area_method"]) == {"unknown (no georeference)"}
    with rasterio.open(out / "changes.tif") as changes:
        assert changes.shape == (300, 280) and changes.crs is None
        assert (changes.read(1) != 255).all()  # every pixel covered, edges included


def test_scene_bad_input_is_one_line(tmp_path, utm_scene):
    far = write_synth_scene(tmp_path / "far", size=256, seed=4, origin=(600000.0, 5100000.0))
    proc = cli("scene", utm_scene["A"], far["B"], "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "does not overlap" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "o" / "summary.json").exists()
    proc = cli("scene", utm_scene["A"], tmp_path / "missing.tif", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 1 and "missing.tif" in proc.stderr
    proc = cli(
        "scene", utm_scene["A"], utm_scene["B"], "--out", tmp_path / "o", "--bands", "3,2", check=False
    )
    assert proc.returncode != 0 and "exactly 3 band numbers" in proc.stderr
    proc = cli(
        "scene", utm_scene["A"], utm_scene["B"], "--out", tmp_path / "o", "--bands", "3,2,9", check=False
    )
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1 and "A.tif" in proc.stderr


# dark 8-bit scenes and band order, in process with one loaded model ----------------------------------------
@pytest.fixture(scope="module")
def shipped():
    _needs_mask_model()
    from changescope.tasks.inference import load

    return load("default")


def _copy(src, dst, order=(1, 2, 3), scale=1.0, colorinterp=None, descriptions=None):
    """``src`` with its bands in ``order``, values x ``scale`` and the given band labels."""
    from rasterio.enums import ColorInterp

    with rasterio.open(src) as source:
        profile, data = source.profile, source.read(list(order))
    with rasterio.open(dst, "w", **profile) as target:
        target.write(np.rint(data * scale).astype(np.uint8))
        if colorinterp:
            target.colorinterp = [ColorInterp[name] for name in colorinterp]
        if descriptions:
            target.descriptions = descriptions
    return dst


@pytest.fixture(scope="module")
def dark_scene(tmp_path_factory):
    """A 256 px SynthChange scene at 22 % brightness (values 0..56, like raw 8-bit DN): A written B, G, R
    with that colour interpretation, B R, G, B with band descriptions."""
    folder = tmp_path_factory.mktemp("dark")
    scene = write_synth_scene(folder, size=256, seed=3, changed=True)
    a = _copy(scene["A"], folder / "dark_a.tif", (3, 2, 1), 0.22, colorinterp=("blue", "green", "red"))
    b = _copy(scene["B"], folder / "dark_b.tif", scale=0.22, descriptions=("Red", "Green", "Blue"))
    return {"A": a, "B": b, "truth": scene["truth"]}


def _change_iou(out, truth_path) -> float:
    with rasterio.open(out / "changes.tif") as changes, rasterio.open(truth_path) as truth_file:
        predicted, truth = changes.read(1), truth_file.read(1) > 0
    changed = (predicted > 0) & (predicted != 255)
    return (changed & truth).sum() / (changed | truth).sum()


def _overview_brightness(report) -> float:
    """Mean brightness (0..1) of the report's first image, the overview of A."""
    first = re.search(r"src='data:image/png;base64,([^']+)'", report.read_text()).group(1)
    return float(np.asarray(Image.open(io.BytesIO(base64.b64decode(first))).convert("L")).mean()) / 255


def test_dark_8bit_scene_is_stretched_and_bands_read_by_their_labels(tmp_path, shipped, dark_scene):
    from changescope.tasks.scene import SceneOptions, run_scene

    out = tmp_path / "out"
    summary = run_scene(
        dark_scene["A"], dark_scene["B"], out, shipped, SceneOptions(max_captions=0), progress=False
    )
    stretch = summary["stretch"]
    assert stretch["mode"] == "auto" and stretch["rule"].startswith("linear from the 2nd to the 98th")
    assert "dark or low in contrast" in stretch["reason"] and max(stretch["high"]) < 60
    assert summary == json.loads((out / "summary.json").read_text())
    bands = summary["bands"]
    assert bands["rgb"] == [3, 2, 1] and bands["source"] == "colour interpretation"
    assert bands["b"] == {"rgb": [1, 2, 3], "source": "band descriptions", "labels": ["Red", "Green", "Blue"]}
    with rasterio.open(dark_scene["A"]) as dataset:
        raw = float(dataset.read().mean()) / 255  # what the identity rule showed
    assert _overview_brightness(out / "report.html") > 3 * raw
    report = (out / "report.html").read_text()
    assert (
        "dark or low in contrast" in report and "bands 3, 2, 1 as R, G, B (colour interpretation)" in report
    )
    assert _change_iou(out, dark_scene["truth"]) > 0.75  # as on the well-exposed scene (about 0.9)


def test_dark_8bit_scene_unstretched_is_what_the_stretch_fixes(tmp_path, shipped, dark_scene):
    from changescope.tasks.scene import SceneOptions, run_scene

    ious = {}
    for mode in ("auto", "none"):
        out = tmp_path / mode
        options = SceneOptions(max_captions=0, stretch=mode)
        summary = run_scene(dark_scene["A"], dark_scene["B"], out, shipped, options, progress=False)
        assert summary["stretch"]["mode"] == mode
        ious[mode] = _change_iou(out, dark_scene["truth"])
    # measured: about 0.92 against 0.67 with the default's pasted-roof change head (0.90 against 0.28
    # with the head before it, which dark unstretched pixels fooled more)
    assert ious["auto"] > ious["none"] + 0.15, ious
