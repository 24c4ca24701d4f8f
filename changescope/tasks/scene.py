"""Scenes: two rasters of any size -> a change-class GeoTIFF, polygons with captions, a summary, a report.

The pipeline (DESIGN.md section 8): open A and B, put B on A's grid and fit one stretch rule for both
(``geo.raster.aligned_pair``); predict class probabilities tile by tile over the overlap and blend them into
``changes.tif`` with memory flat in scene size (``geo.tiling.run_tiles``); polygonize it
(``geo.vectors.polygonize``); caption the largest regions, each from a window around it; write
``changes.geojson`` (or ``.gpkg``), ``summary.json`` and ``report.html``.

Every output is written into a temporary folder beside ``OUT`` that becomes ``OUT`` only when the run
succeeds (``fileio.output_dir``): a run interrupted at any point leaves ``OUT`` as it was, and an earlier
run's files never stay beside the new ones. A non-empty ``OUT`` needs ``overwrite``.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changescope.errors import ChangescopeError
from changescope.fileio import write_json_atomic, write_text_atomic
from changescope.postprocess import MIN_AREA

#: GDAL block cache for a scene run, in MB: enough for a few rows of 256 x 256 blocks of A, B and the output
GDAL_CACHE_MB = 64


@dataclass
class SceneOptions:
    #: 1-based band indices read as R, G, B (None: from the band descriptions or colour interpretation,
    #: else 1, 2, 3; ``geo.raster`` module docstring)
    bands: tuple[int, ...] | None = None
    #: B's own R, G, B band indices when they differ from A's (None: as ``bands``)
    bands_b: tuple[int, ...] | None = None
    #: "auto" (16-bit / float: percentile stretch; 8-bit: as it is unless dark or low in contrast), "none"
    #: (8-bit values as they are) or "percentile" (always the pooled 2nd-98th percentile stretch)
    stretch: str = "auto"
    tile: int = 256
    overlap: int = 32
    batch_size: int = 8
    #: "geojson" or "gpkg"
    vector_format: str = "geojson"
    #: polygons under this many pixels are not reported (they stay in changes.tif)
    min_area: int = MIN_AREA
    #: the largest regions get a caption each (0: none)
    max_captions: int = 50
    #: caption window = the region's box grown by this factor, at least one tile, square
    caption_context: float = 1.5
    #: beam size of the captions
    beam: int = 1
    device: str = "cpu"
    #: inference autocast: "fp32", "bf16" or "fp16" (None: tasks.inference.default_precision())
    precision: str | None = None
    #: metres per pixel of the scenes (None: from A's georeference); far from the model's GSD, tiles are
    #: read larger or smaller so the model sees its own GSD
    gsd: float | None = None

    def validate(self) -> None:
        if self.tile < 32 or not 0 <= self.overlap < self.tile // 2:
            raise ChangescopeError("--tile must be >= 32 and 0 <= --overlap < tile / 2")
        if self.vector_format not in ("geojson", "gpkg"):
            raise ChangescopeError("--vector-format must be geojson or gpkg")
        if self.stretch not in ("auto", "none", "percentile"):
            raise ChangescopeError(f"--stretch must be auto, none or percentile, not {self.stretch!r}")
        for name in ("batch_size", "beam"):
            if getattr(self, name) < 1:
                raise ChangescopeError(f"--{name.replace('_', '-')} must be >= 1")


def parse_bands(text: str | None, option: str = "--bands") -> tuple[int, int, int] | None:
    """'3,2,1' -> (3, 2, 1): three 1-based band numbers (None or blank: None); for the CLI and the API."""
    if text is None or not text.strip():
        return None
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise ChangescopeError(f"{option}: '{text}' is not comma-separated band numbers (3,2,1)") from None
    if len(bands) != 3 or min(bands) < 1:
        raise ChangescopeError(f"{option}: give exactly 3 band numbers (R,G,B), each >= 1, not '{text}'")
    return bands  # type: ignore[return-value]


def _predictor(model, processor, device: torch.device):
    """Tiles ``[N, 2, 3, t, t]`` -> class probabilities ``[N, K, t, t]`` (resized to and from the model)."""

    def predict(images: torch.Tensor) -> torch.Tensor:
        logits = model(processor.resize(images).to(device)).mask_logits
        return processor.resize_logits(logits, images.shape[-2:]).softmax(dim=1).cpu()

    return predict


def _caption_window(bbox: tuple[int, int, int, int], tile: int, context: float):
    from rasterio.windows import Window

    col0, row0, col1, row1 = bbox
    side = max(tile, math.ceil(max(col1 - col0, row1 - row0) * context))
    centre_col, centre_row = (col0 + col1) / 2, (row0 + row1) / 2
    return Window(round(centre_col - side / 2), round(centre_row - side / 2), side, side)


def caption_regions(model, processor, pair, features: list[dict], options: SceneOptions) -> list[str | None]:
    """A caption for each of the ``max_captions`` largest regions (None for the rest), batched."""
    from changescope.tasks.consistency import region_caption, says_no_change
    from changescope.tasks.inference import Decoding, caption_pairs

    captions: list[str | None] = [None] * len(features)
    if model.decoder is None or options.max_captions == 0:
        return captions
    chosen = list(range(min(options.max_captions, len(features))))  # features come largest first
    decoding = Decoding(beam_size=options.beam)
    for start in range(0, len(chosen), options.batch_size):
        batch = chosen[start : start + options.batch_size]
        windows = [
            _caption_window(features[i]["bbox_pixels"], options.tile, options.caption_context) for i in batch
        ]
        images = torch.stack([processor.resize(pair.read(w)[0]) for w in windows])
        for i, text in zip(batch, caption_pairs(model, processor, images, decoding), strict=True):
            # every region is a changed object of the mask: a "no change" caption yields to it
            captions[i] = region_caption(features[i]["class_name"]) if says_no_change(text) else text
    return captions


def _crs_text(crs) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_wkt()


def class_totals(features: list[dict], classes: list[str]) -> dict[str, dict[str, Any]]:
    totals = {name: {"regions": 0, "pixels": 0, "area_m2": 0.0} for name in classes[1:]}
    for feature in features:
        row = totals[feature["class_name"]]
        row["regions"] += 1
        row["pixels"] += feature["pixels"]
        if feature["area_m2"] is None:
            row["area_m2"] = None
        elif row["area_m2"] is not None:
            row["area_m2"] += feature["area_m2"]
    for row in totals.values():
        if row["area_m2"] is not None:
            row["area_m2"] = round(row["area_m2"], 2)
    return totals


def run_scene(
    a: str | Path,
    b: str | Path,
    out: str | Path,
    model: str | Path | tuple = "default",
    options: SceneOptions | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the whole scene pipeline; return the summary (also written to ``OUT/summary.json``).

    ``model`` is a model spec (directory, run directory, 'default') or an already loaded
    ``(model, processor, path)`` triple as ``tasks.inference.load`` returns (so a server or an agent that
    holds the model does not load a second copy).
    """
    from changescope.errors import require
    from changescope.fileio import check_output_dir, output_dir
    from changescope.tasks.inference import load

    rasterio = require("rasterio", "geo", "scenes")
    from changescope.geo.raster import aligned_pair
    from changescope.geo.tiling import run_tiles
    from changescope.geo.vectors import polygonize, write_vectors

    options = options or SceneOptions()
    options.validate()
    out = check_output_dir(out, overwrite)  # before any work: a refusal costs nothing
    start = time.perf_counter()
    # GDAL's block cache defaults to 5 % of RAM and fills with every block read or written, so without a
    # cap peak memory grows with the scene until that limit (measured: +355 MiB from 4096 to 8192 px)
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB),
        aligned_pair(a, b, options.bands, bands_b=options.bands_b, stretch=options.stretch) as pair,
        output_dir(out, overwrite) as tmp,
    ):
        model, processor, model_path = model if isinstance(model, tuple) else load(model, options.precision)
        model.require("mask")
        resolution = _resolution(model, pair, options)
        device = torch.device(options.device)
        model.to(device)
        classes = list(model.config.classes)
        changes = tmp / "changes.tif"
        with _progress_bar(progress) as bar:
            run_tiles(
                pair,
                _predictor(model, processor, device),
                changes,
                len(classes),
                resolution["tile_source_px"],
                resolution["overlap_source_px"],
                options.batch_size,
                progress=bar,
            )
        features = polygonize(changes, classes, min_area_px=options.min_area)
        with torch.inference_mode():
            captions = caption_regions(model, processor, pair, features, options)
        vectors = tmp / f"changes.{options.vector_format}"
        extra = [{"caption": c or ""} for c in captions]
        write_vectors(features, vectors, pair.crs, options.vector_format, extra_properties=extra)
        summary = _summary(a, b, model_path, pair, features, captions, classes, options)
        summary["resolution"] = resolution
        summary["seconds"] = round(time.perf_counter() - start, 2)
        summary["outputs"] = ["changes.tif", vectors.name, "report.html", "summary.json"]
        write_scene_report(pair, changes, summary, classes, tmp / "report.html")
        write_json_atomic(tmp / "summary.json", summary)
    return summary


def _resolution(model, pair, options: SceneOptions) -> dict[str, Any]:
    """The scene's GSD and how tiles are read: a tile of ``tile / scale`` source pixels is resized to the
    model's size by the predictor, so an input far from every GSD the model was trained at is seen at the
    nearest of them (``detection.working_scale``)."""
    from changescope.geo.raster import pixel_size_m
    from changescope.tasks.detection import working_scale

    gsd, source = options.gsd, "--gsd"
    if gsd is None:
        gsd = pixel_size_m(pair.crs, pair.transform, pair.width, pair.height) if pair.georeferenced else None
        source = "georeference" if gsd is not None else None
    scale = working_scale(model, gsd)
    tile, overlap = options.tile, options.overlap
    if scale != 1:
        tile = max(32, round(options.tile / scale))
        overlap = min(round(options.overlap / scale), tile // 2 - 1)
    return {
        "gsd_m": None if gsd is None else round(gsd, 4),
        "gsd_source": source,
        "model_gsd_m": model.config.gsd,
        "resampled_by": round(scale, 4),
        "tile_source_px": tile,
        "overlap_source_px": overlap,
        "note": "no resampling: the GSD is unknown or close to one the model was trained at"
        if scale == 1
        else f"tiles of {tile} source pixels are resized to the model's {model.config.image_size} px",
    }


def _bands_of(scene) -> dict[str, Any]:
    return {"rgb": list(scene.bands), "source": scene.band_source, "labels": list(scene.labels)}


def _bands(pair) -> dict[str, Any]:
    """Which bands were read as R, G, B and from what; B's own entry under "b" when they differ from A's."""
    bands = _bands_of(pair.a)
    b = _bands_of(pair.b)
    if (b["rgb"], b["source"]) != (bands["rgb"], bands["source"]):
        bands["b"] = b
    return bands


def _stretch(rule, options: SceneOptions) -> dict[str, Any]:
    return {
        "mode": options.stretch,
        "rule": rule.description,
        "reason": rule.reason,
        "low": np.asarray(rule.low).round(4).tolist(),
        "high": np.asarray(rule.high).round(4).tolist(),
    }


def _summary(a, b, model_path, pair, features, captions, classes, options) -> dict[str, Any]:
    from changescope.geo.vectors import area_method

    window = pair.window
    pixel_area = abs(pair.transform.a * pair.transform.e - pair.transform.b * pair.transform.d)
    areas = area_method(pair.crs, pair.transform, (pair.height, pair.width))  # polygonize's rule
    regions = [
        {
            "class": f["class_name"],
            "pixels": f["pixels"],
            "area_m2": None if f["area_m2"] is None else round(f["area_m2"], 2),
            "centroid": [round(v, 6) for v in f["centroid"]],
            "centroid_lonlat": None
            if f["centroid_lonlat"] is None
            else [round(v, 7) for v in f["centroid_lonlat"]],
            "bbox_pixels": list(f["bbox_pixels"]),
            "caption": c,
        }
        for f, c in zip(features, captions, strict=True)
    ]
    return {
        "a": str(a),
        "b": str(b),
        "model": str(model_path),
        "georeferenced": pair.georeferenced,
        "crs": _crs_text(pair.crs),
        "note": None
        if pair.georeferenced
        else "no georeference: coordinates are pixel (column, row) positions in image A; areas are not known",
        "size": [pair.width, pair.height],
        "processed_window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
        "pixel_area_crs_units": pixel_area if pair.georeferenced else None,
        "area_method": areas["method"],
        "area_method_reason": areas["reason"],
        "bands": _bands(pair),
        "stretch": _stretch(pair.rule, options),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
        "classes": class_totals(features, classes),
        "regions_total": len(features),
        "regions_captioned": sum(c is not None for c in captions),
        "regions": regions,
    }


class _progress_bar:
    """A rich progress bar over tiles (a no-op when ``enabled`` is False)."""

    def __init__(self, enabled: bool):
        self.enabled, self.progress, self.task = enabled, None, None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("tiles"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
        )
        self.progress.start()
        return self._update

    def _update(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task("tiles", total=total)
        self.progress.update(self.task, completed=done)

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()


def _overview(dataset, bands, rule, max_side: int) -> np.ndarray:
    scale = min(1.0, max_side / max(dataset.width, dataset.height))
    shape = (len(bands), max(1, round(dataset.height * scale)), max(1, round(dataset.width * scale)))
    data = dataset.read(list(bands), out_shape=shape).astype(np.float32)
    return rule.apply(data).transpose(1, 2, 0)


def write_scene_report(pair, changes: Path, summary: dict, classes: list[str], path: Path, side: int = 768):
    """``report.html``: overviews of A, B and the change map (decimated reads), the per-class table and the
    captioned regions; one self-contained file."""
    import rasterio
    from PIL import Image

    from changescope.overlay import overlay
    from changescope.report import data_uri

    view_a = _overview(pair.a.dataset, pair.a.bands, pair.rule, side)
    view_b = _overview(pair.b.dataset, pair.b.bands, pair.rule, side)
    with rasterio.open(changes) as src:
        classes_map = src.read(1, out_shape=view_a.shape[:2])
    shown = np.where(classes_map == 255, 0, classes_map)
    views = (
        ("A (before)", Image.fromarray(view_a)),
        ("B (after, on A's grid)", Image.fromarray(view_b)),
        ("changes", overlay(view_b, shown, classes)),
    )
    figures = "".join(
        f"<figure><img alt='{name}' src='{data_uri(img, side)}'><figcaption>{name}</figcaption></figure>"
        for name, img in views
    )
    unit = "m2" if summary["georeferenced"] else "pixels"
    rows = []
    for name, row in summary["classes"].items():
        area = "" if row["area_m2"] is None else f"{row['area_m2']:.1f}"
        cells = (html.escape(name), row["regions"], row["pixels"], area)
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    regions = []
    for region in summary["regions"]:
        if region["caption"]:
            area = f", {region['area_m2']:.1f} m2" if region["area_m2"] is not None else ""
            regions.append(
                f"<li>{html.escape(region['class'])}, {region['pixels']} px{area}: "
                f"{html.escape(region['caption'])}</li>"
            )
    note = summary["note"] or f"CRS {summary['crs']}; areas in m2, {summary['area_method']}"
    bands = summary["bands"]
    read = f"bands {', '.join(map(str, bands['rgb']))} as R, G, B ({bands['source']})"
    if "b" in bands:
        b = bands["b"]
        read = f"A: {read}; B: bands {', '.join(map(str, b['rgb']))} ({b['source']})"
    stretch = summary["stretch"]
    title = f"What changed between {Path(summary['a']).name} and {Path(summary['b']).name}"
    text = (
        "<!doctype html><meta charset='utf-8'><title>changescope scene report</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:24px}figure{display:inline-block;margin:8px}"
        "img{max-width:360px;image-rendering:pixelated}td,th{padding:2px 10px;text-align:right}"
        "td:first-child{text-align:left}</style>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(note)}. Model {html.escape(summary['model'])}. "
        f"Read {html.escape(read)}. Stretch: {html.escape(stretch['rule'])} "
        f"({html.escape(stretch['reason'])}).</p>{figures}"
        f"<table><tr><th>class</th><th>regions</th><th>pixels</th><th>area ({unit})</th></tr>"
        f"{''.join(rows)}</table>"
        f"<h2>Captioned regions (largest {summary['regions_captioned']} of {summary['regions_total']})</h2>"
        f"<ol>{''.join(regions)}</ol>"
    )
    write_text_atomic(path, text + "\n")
