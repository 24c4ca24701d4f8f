"""Scenes: two rasters of any size -> a change-class GeoTIFF, polygons with captions, a summary, a report;
a stack of T >= 3 dates -> the same per interval, and when each pixel first changed.

The pipeline (DESIGN.md section 8): open the dates, put every later date on the first date's grid and fit
one stretch rule for all of them (``geo.raster.aligned_stack``; a pair is the stack of two); predict class
probabilities of every interval (date t -> t + 1) tile by tile over the common overlap
(``tasks.sequence.interval_probabilities``) and blend them into ``changes.tif``, one band per interval, with
memory flat in scene size (``geo.tiling.run_tiles``); polygonize it (``geo.vectors.polygonize``); caption
the largest regions, each from a window around it in its interval's two dates; write ``changes.geojson``
(or ``.gpkg``), ``summary.json`` and ``report.html``. A stack also gets ``date_of_change.tif`` (the first
interval with change per pixel, ``geo.tiling.write_first_change``), dates per file (``geo.dates``), the
interval of every polygon and a timeline in the report.

Every output is written into a temporary folder beside ``OUT`` that becomes ``OUT`` only when the run
succeeds (``fileio.output_dir``): a run interrupted at any point leaves ``OUT`` as it was, and an earlier
run's files never stay beside the new ones. A non-empty ``OUT`` needs ``overwrite``.
"""

from __future__ import annotations

import functools
import html
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changescope.errors import ChangescopeError
from changescope.fileio import write_json_atomic, write_text_atomic
from changescope.models.views import check_views
from changescope.postprocess import MIN_AREA

#: GDAL block cache for a scene run, in MB: enough for a few rows of 256 x 256 blocks of A, B and the output
GDAL_CACHE_MB = 64


@dataclass
class SceneOptions:
    #: 1-based band indices read as R, G, B (None: from the band descriptions or colour interpretation,
    #: else 1, 2, 3; ``geo.raster`` module docstring)
    bands: tuple[int, ...] | None = None
    #: the R, G, B band indices of B (of every date after the first, in a stack) when they differ from A's
    #: (None: as ``bands``)
    bands_b: tuple[int, ...] | None = None
    #: "auto" (16-bit / float: percentile stretch; 8-bit: as it is unless dark or low in contrast), "none"
    #: (8-bit values as they are) or "percentile" (always the pooled 2nd-98th percentile stretch)
    stretch: str = "auto"
    tile: int = 256
    overlap: int = 32
    #: pairs of tiles per forward pass (a stack's tile counts once per interval)
    batch_size: int = 8
    #: "geojson" or "gpkg"
    vector_format: str = "geojson"
    #: polygons under this many pixels are not reported (they stay in changes.tif)
    min_area: int = MIN_AREA
    #: the largest regions (of each interval, in a stack) get a caption each (0: none)
    max_captions: int = 50
    #: caption window = the region's box grown by this factor, at least one tile, square
    caption_context: float = 1.5
    #: beam size of the captions
    beam: int = 1
    device: str = "cpu"
    #: inference autocast: "fp32", "bf16" or "fp16" (None: tasks.inference.default_precision())
    precision: str | None = None
    #: test-time views averaged for the change masks when scene loads the model (1, 2, 4, 8; ``set_tta``);
    #: None: the model's own setting
    tta: int | None = None
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
        if self.tta is not None:
            check_views(self.tta)


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


def _loaded(model, options: SceneOptions):
    """``(model, processor, path)``: ``model`` as given when already loaded, else loaded with the options'
    precision and test-time views."""
    from changescope.tasks.inference import load

    if not isinstance(model, tuple):
        return load(model, options.precision, options.tta)
    if options.tta is not None and options.tta != model[0].tta:
        raise ChangescopeError(f"tta={options.tta}: test-time views are set when the model is loaded (tta=)")
    return model


def _predictor(model, processor, batch_size: int, gsd: float | None = None, coarse: bool | None = None):
    """Tiles ``[N, T, 3, t, t]`` -> class probabilities ``[N, T - 1, K, t, t]`` of every interval (resized
    to and from the model) by ``tasks.sequence.interval_probabilities``, one function for pairs and stacks.
    At most ``batch_size`` pairs of dates go through one forward pass: a pass's activations, more than the
    blending, set a scene's peak memory (a 512 px 3-date stack whose 8 tiles went through at once peaked
    30 % above the pair), so the network costs a stack no more memory than a pair."""
    from changescope.tasks.sequence import interval_probabilities

    def predict(images: torch.Tensor) -> torch.Tensor:
        step = max(1, batch_size // (images.shape[1] - 1))
        parts = [
            interval_probabilities(model, processor, images[i : i + step], gsd, coarse)
            for i in range(0, len(images), step)
        ]
        return torch.cat(parts)

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
    dates: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run the whole scene pipeline on a pair; return the summary (also written to ``OUT/summary.json``).

    ``model`` is a model spec (directory, run directory, 'default') or an already loaded
    ``(model, processor, path)`` triple as ``tasks.inference.load`` returns (so a server or an agent that
    holds the model does not load a second copy). ``dates`` (optional, one per file, increasing) are
    checked and recorded in the summary; a pair needs none.
    """
    found = _stack_dates([a, b], dates) if dates is not None else None
    finish = functools.partial(_pair_outputs, dates=found)
    return _run([a, b], out, model, options, progress, overwrite, finish)


def run_scene_stack(
    paths: Sequence[str | Path],
    out: str | Path,
    model: str | Path | tuple = "default",
    options: SceneOptions | None = None,
    dates: Sequence[str] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the scene pipeline on T >= 2 dates of one place, oldest first; return the summary (also written
    to ``OUT/summary.json``).

    Every date is put on the first date's grid; ``changes.tif`` holds one band per interval (date i ->
    date i + 1), ``date_of_change.tif`` the first interval that changed at each pixel (0: none), and the
    polygons, summary and report are per interval. ``dates`` are one per file (``YYYY-MM-DD``, ``YYYYMMDD``
    or ``YYYY``); without them each file's date comes from its metadata or its name (``geo.dates``), and
    they must increase from file to file. ``model`` as in :func:`run_scene`. Two paths give these outputs
    for one interval (:func:`run_scene` gives a pair's).
    """
    paths = list(paths)
    if len(paths) < 2:
        raise ChangescopeError(f"a scene needs at least 2 dates, got {len(paths)} file(s)")
    found = _stack_dates(paths, dates)
    labels = _interval_labels(found)
    finish = functools.partial(_stack_outputs, dates=found)
    return _run(paths, out, model, options, progress, overwrite, finish, labels)


def _stack_dates(paths: Sequence[str | Path], dates: Sequence[str] | None):
    from changescope.errors import require

    require("rasterio", "geo", "scenes")
    from changescope.geo.dates import stack_dates

    return stack_dates(paths, dates)


@dataclass
class _Run:
    """A scene run once its class maps are written: what every output is made from."""

    paths: list[str | Path]
    stack: Any  # geo.raster.AlignedStack (an AlignedPair for two dates)
    model: Any
    processor: Any
    model_path: Any
    classes: list[str]
    options: SceneOptions
    folder: Path  # the temporary output folder
    changes: Path
    resolution: dict[str, Any]
    start: float

    def close_summary(self, summary: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
        summary["resolution"] = self.resolution
        summary["tta"] = self.model.tta
        summary["seconds"] = round(time.perf_counter() - self.start, 2)
        summary["outputs"] = outputs
        return summary


def _run(paths, out, model, options, progress, overwrite, finish, labels=None) -> dict[str, Any]:
    """The pipeline both scene kinds share: tiles -> ``changes.tif``, then ``finish(run)`` writes the rest
    and returns the summary, written last as ``summary.json``."""
    from changescope.errors import require
    from changescope.fileio import check_output_dir, output_dir

    rasterio = require("rasterio", "geo", "scenes")
    from changescope.geo.raster import aligned_stack
    from changescope.geo.tiling import run_tiles

    options = options or SceneOptions()
    options.validate()
    out = check_output_dir(out, overwrite)  # before any work: a refusal costs nothing
    start = time.perf_counter()
    # GDAL's block cache defaults to 5 % of RAM and fills with every block read or written, so without a
    # cap peak memory grows with the scene until that limit (measured: +355 MiB from 4096 to 8192 px)
    with (
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB),
        aligned_stack(paths, options.bands, bands_b=options.bands_b, stretch=options.stretch) as stack,
        output_dir(out, overwrite) as tmp,
    ):
        model, processor, model_path = _loaded(model, options)
        model.require("mask")
        model.to(torch.device(options.device))
        resolution = _resolution(model, stack, options)
        coarse = _probed_head(model, processor, stack, resolution)
        classes = list(model.config.classes)
        changes = tmp / "changes.tif"
        with _progress_bar(progress) as bar:
            run_tiles(
                stack,
                _predictor(model, processor, options.batch_size, resolution["gsd_m"], coarse),
                changes,
                len(classes),
                resolution["tile_source_px"],
                resolution["overlap_source_px"],
                options.batch_size,
                progress=bar,
                **(labels or {}),
            )
        loaded = (model, processor, model_path)
        summary = finish(_Run(list(paths), stack, *loaded, classes, options, tmp, changes, resolution, start))
        write_json_atomic(tmp / "summary.json", summary)
    return summary


def _polygons(run: _Run, stack, band: int = 1) -> tuple[list[dict], list[str | None]]:
    """The polygons of one band of ``changes.tif``, largest first, and the captions of the largest, each
    from ``stack``'s dates (the pair, or the interval's two dates)."""
    from changescope.geo.vectors import polygonize

    features = polygonize(run.changes, run.classes, min_area_px=run.options.min_area, band=band)
    with torch.inference_mode():
        captions = caption_regions(run.model, run.processor, stack, features, run.options)
    return features, captions


def _write_polygons(run: _Run, features: list[dict], extra: list[dict]) -> str:
    from changescope.geo.vectors import write_vectors

    vectors = run.folder / f"changes.{run.options.vector_format}"
    write_vectors(features, vectors, run.stack.crs, run.options.vector_format, extra_properties=extra)
    return vectors.name


def _pair_outputs(run: _Run, dates=None) -> dict[str, Any]:
    features, captions = _polygons(run, run.stack)
    vectors = _write_polygons(run, features, [{"caption": c or ""} for c in captions])
    a, b = run.paths
    summary = _summary(a, b, run.model_path, run.stack, features, captions, run.classes, run.options)
    if dates is not None:
        summary["dates"] = _dates_summary(run.paths, dates)
    run.close_summary(summary, ["changes.tif", vectors, "report.html", "summary.json"])
    write_scene_report(run.stack, run.changes, summary, run.classes, run.folder / "report.html")
    return summary


def _interval_names(dates) -> list[str]:
    """ISO 8601 intervals, 'FROM/TO', one per interval."""
    return [f"{earlier.text}/{later.text}" for earlier, later in itertools.pairwise(dates)]


#: what the values of date_of_change.tif mean (its VALUES tag and summary.json)
DATE_OF_CHANGE_VALUES = "0: no change; i: first change in interval i (date i -> date i + 1)"


def _interval_labels(dates) -> dict[str, Any]:
    """Band descriptions and tags of a stack's ``changes.tif``: what each band and interval is."""
    names = _interval_names(dates)
    tags = {"DATES": ",".join(d.text for d in dates)}
    tags.update({f"INTERVAL_{i}": name for i, name in enumerate(names, start=1)})
    return {"descriptions": [f"interval {i}: {name}" for i, name in enumerate(names, start=1)], "tags": tags}


def _stack_outputs(run: _Run, dates) -> dict[str, Any]:
    from changescope.geo.tiling import write_first_change

    labels = _interval_labels(dates)
    counts = write_first_change(
        run.changes, run.folder / "date_of_change.tif", {**labels["tags"], "VALUES": DATE_OF_CHANGE_VALUES}
    )
    names = _interval_names(dates)
    found = [_polygons(run, run.stack.interval(i), band=i + 1) for i in range(len(names))]
    extra = [
        {"interval": i + 1, "date_from": dates[i].text, "date_to": dates[i + 1].text, "caption": c or ""}
        for i, (_, captions) in enumerate(found)
        for c in captions
    ]
    vectors = _write_polygons(run, [f for features, _ in found for f in features], extra)
    summary = _stack_summary(run, dates, found, counts)
    outputs = ["changes.tif", "date_of_change.tif", vectors, "report.html", "summary.json"]
    run.close_summary(summary, outputs)
    write_stack_report(run, summary, run.folder / "report.html")
    return summary


def _dates_summary(paths, dates) -> list[dict[str, str]]:
    return [{"file": str(p), "date": d.text, "source": d.source} for p, d in zip(paths, dates, strict=True)]


def _stack_summary(run: _Run, dates, found, counts) -> dict[str, Any]:
    from changescope.geo.tiling import first_change_format

    intervals, regions = [], []
    for i, (features, captions) in enumerate(found):
        totals = class_totals(features, run.classes)
        areas = [row["area_m2"] for row in totals.values()]
        intervals.append(
            {
                "interval": i + 1,
                "date_from": dates[i].text,
                "date_to": dates[i + 1].text,
                "file_from": str(run.paths[i]),
                "file_to": str(run.paths[i + 1]),
                "classes": totals,
                "regions_total": len(features),
                "regions_captioned": sum(c is not None for c in captions),
                "changed_pixels": sum(row["pixels"] for row in totals.values()),
                "changed_area_m2": None if None in areas else round(sum(areas), 2),
                "first_change_pixels": int(counts[i + 1]),
            }
        )
        regions += [{"interval": i + 1, **r} for r in _regions(features, captions)]
    names = _interval_names(dates)
    return {
        "files": [str(p) for p in run.paths],
        "dates": _dates_summary(run.paths, dates),
        "model": str(run.model_path),
        **_grid_summary(run.stack, run.options),
        "intervals": intervals,
        "date_of_change": {
            "file": "date_of_change.tif",
            "values": DATE_OF_CHANGE_VALUES,
            "nodata": first_change_format(len(names))[1],
            "intervals": {str(i): name for i, name in enumerate(names, start=1)},
            "pixels": {str(i): int(n) for i, n in enumerate(counts)},
        },
        "regions_total": len(regions),
        "regions_captioned": sum(r["caption"] is not None for r in regions),
        "regions": regions,
    }


def _probed_head(model, processor, stack, resolution: dict[str, Any]) -> bool | None:
    """For a scene of unknown GSD and a model with a GSD probe: whether the coarse change head decides every
    tile, by the probe's verdict on a few tiles spread over the scene (``detection.probe_says_coarse``);
    ``resolution`` then names the head it chose. None otherwise (the GSD, or its absence, decides)."""
    from changescope.geo.tiling import tile_windows
    from changescope.tasks.detection import probe_says_coarse, spread

    if resolution["gsd_m"] is not None or getattr(model, "gsd_probe", None) is None:
        return None
    windows = tile_windows(stack.window, resolution["tile_source_px"], resolution["overlap_source_px"])
    tiles = [image for image, valid in (stack.read(w) for w in spread(windows, 8)) if valid.any()]
    if not tiles:
        return None
    coarse = probe_says_coarse(model, processor, tiles)
    resolution["change_head"] = model.change_head_name(None, coarse)
    resolution["change_head_source"] = "GSD probe"
    return coarse


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
        # the head that decides change here (a model with two reads the coarse one at 5 m or coarser)
        "change_head": model.change_head_name(gsd),
        "resampled_by": round(scale, 4),
        "tile_source_px": tile,
        "overlap_source_px": overlap,
        "note": "no resampling: the GSD is unknown or close to one the model was trained at"
        if scale == 1
        else f"tiles of {tile} source pixels are resized to the model's {model.config.image_size} px",
    }


def _bands_of(scene) -> dict[str, Any]:
    return {"rgb": list(scene.bands), "source": scene.band_source, "labels": list(scene.labels)}


def _bands(stack) -> dict[str, Any]:
    """Which bands were read as R, G, B and from what (the first date's); a later date's own entry when it
    differs: under "b" for a pair, under "date N" (1-based) for a stack."""
    bands = _bands_of(stack.scenes[0])
    for number, scene in enumerate(stack.scenes[1:], start=2):
        later = _bands_of(scene)
        if (later["rgb"], later["source"]) != (bands["rgb"], bands["source"]):
            bands["b" if len(stack) == 2 else f"date {number}"] = later
    return bands


def _stretch(rule, options: SceneOptions) -> dict[str, Any]:
    return {
        "mode": options.stretch,
        "rule": rule.description,
        "reason": rule.reason,
        "low": np.asarray(rule.low).round(4).tolist(),
        "high": np.asarray(rule.high).round(4).tolist(),
    }


def _regions(features: list[dict], captions: list[str | None]) -> list[dict[str, Any]]:
    return [
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


def _grid_summary(stack, options: SceneOptions) -> dict[str, Any]:
    """What every scene summary says about the grid, the bands, the stretch and the options."""
    from changescope.geo.vectors import area_method

    window = stack.window
    pixel_area = abs(stack.transform.a * stack.transform.e - stack.transform.b * stack.transform.d)
    areas = area_method(stack.crs, stack.transform, (stack.height, stack.width))  # polygonize's rule
    first = "image A" if len(stack) == 2 else "date 1's image"
    pixels = f"no georeference: coordinates are pixel (column, row) positions in {first}; areas are not known"
    return {
        "georeferenced": stack.georeferenced,
        "crs": _crs_text(stack.crs),
        "note": None if stack.georeferenced else pixels,
        "size": [stack.width, stack.height],
        "processed_window": [int(window.col_off), int(window.row_off), int(window.width), int(window.height)],
        "pixel_area_crs_units": pixel_area if stack.georeferenced else None,
        "area_method": areas["method"],
        "area_method_reason": areas["reason"],
        "bands": _bands(stack),
        "stretch": _stretch(stack.rule, options),
        "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()},
    }


def _summary(a, b, model_path, pair, features, captions, classes, options) -> dict[str, Any]:
    return {
        "a": str(a),
        "b": str(b),
        "model": str(model_path),
        **_grid_summary(pair, options),
        "classes": class_totals(features, classes),
        "regions_total": len(features),
        "regions_captioned": sum(c is not None for c in captions),
        "regions": _regions(features, captions),
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


def _overview(scene, rule, max_side: int) -> np.ndarray:
    """One date (on the first date's grid) read decimated to ``max_side``, stretched, ``[h, w, 3]`` uint8."""
    dataset, bands = scene.dataset, scene.bands
    scale = min(1.0, max_side / max(dataset.width, dataset.height))
    shape = (len(bands), max(1, round(dataset.height * scale)), max(1, round(dataset.width * scale)))
    data = dataset.read(list(bands), out_shape=shape).astype(np.float32)
    return rule.apply(data).transpose(1, 2, 0)


def _map_view(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """Band 1 of an output GeoTIFF read decimated to ``shape`` (nearest), nodata shown as 0."""
    import rasterio

    from changescope.geo.raster import _quiet

    with _quiet(), rasterio.open(path) as src:
        values = src.read(1, out_shape=shape[:2])
        return np.where(values == src.nodata, 0, values)


def _figures(views, side: int) -> str:
    from changescope.report import data_uri

    return "".join(
        f"<figure><img alt='{name}' src='{data_uri(img, side)}'><figcaption>{name}</figcaption></figure>"
        for name, img in views
    )


def _read_text(bands: dict[str, Any]) -> str:
    """Which bands were read, in words: the first date's, and each later date's own where it differs."""

    def text(entry):
        return f"bands {', '.join(map(str, entry['rgb']))}"

    read = f"{text(bands)} as R, G, B ({bands['source']})"
    others = [(key, entry) for key, entry in bands.items() if isinstance(entry, dict)]
    if not others:
        return read
    first = "A" if "b" in bands else "date 1"
    rest = "; ".join(f"{'B' if key == 'b' else key}: {text(e)} ({e['source']})" for key, e in others)
    return f"{first}: {read}; {rest}"


def _write_page(path: Path, title: str, summary: dict, views, side: int, body: str) -> None:
    """Write a report: title, the line on grid, model, bands and stretch, the ``views`` (name, image) as
    figures, then ``body``."""
    note = summary["note"] or f"CRS {summary['crs']}; areas in m2, {summary['area_method']}"
    stretch = summary["stretch"]
    text = (
        "<!doctype html><meta charset='utf-8'><title>changescope scene report</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:24px}figure{display:inline-block;margin:8px}"
        "img{max-width:360px;image-rendering:pixelated}td,th{padding:2px 10px;text-align:right}"
        "td:first-child{text-align:left}</style>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{html.escape(note)}. Model {html.escape(summary['model'])}. "
        f"Read {html.escape(_read_text(summary['bands']))}. Stretch: {html.escape(stretch['rule'])} "
        f"({html.escape(stretch['reason'])}).</p>{_figures(views, side)}{body}\n"
    )
    write_text_atomic(path, text)


def _row(cells) -> str:
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _area(row: dict[str, Any]) -> str:
    return "" if row["area_m2"] is None else f"{row['area_m2']:.1f}"


def _captioned(regions: list[dict]) -> str:
    """The captioned regions as list items."""
    items = []
    for region in regions:
        if region["caption"]:
            area = f", {region['area_m2']:.1f} m2" if region["area_m2"] is not None else ""
            items.append(
                f"<li>{html.escape(region['class'])}, {region['pixels']} px{area}: "
                f"{html.escape(region['caption'])}</li>"
            )
    return "".join(items)


def write_scene_report(pair, changes: Path, summary: dict, classes: list[str], path: Path, side: int = 768):
    """``report.html``: overviews of A, B and the change map (decimated reads), the per-class table and the
    captioned regions; one self-contained file."""
    from PIL import Image

    from changescope.overlay import overlay

    view_a, view_b = (_overview(scene, pair.rule, side) for scene in pair.scenes)
    views = (
        ("A (before)", Image.fromarray(view_a)),
        ("B (after, on A's grid)", Image.fromarray(view_b)),
        ("changes", overlay(view_b, _map_view(changes, view_a.shape), classes)),
    )
    unit = "m2" if summary["georeferenced"] else "pixels"
    rows = "".join(
        _row((html.escape(name), row["regions"], row["pixels"], _area(row)))
        for name, row in summary["classes"].items()
    )
    title = f"What changed between {Path(summary['a']).name} and {Path(summary['b']).name}"
    body = (
        f"<table><tr><th>class</th><th>regions</th><th>pixels</th><th>area ({unit})</th></tr>{rows}</table>"
        f"<h2>Captioned regions (largest {summary['regions_captioned']} of {summary['regions_total']})</h2>"
        f"<ol>{_captioned(summary['regions'])}</ol>"
    )
    _write_page(path, title, summary, views, side, body)


def write_stack_report(run: _Run, summary: dict, path: Path, side: int = 768):
    """A stack's ``report.html``: overviews of the first and last dates, the date-of-change map coloured by
    interval with a legend, a timeline (a row per interval: dates, areas per class, regions, first
    changes) and the captioned regions of each interval; one self-contained file."""
    from PIL import Image

    from changescope.overlay import overlay

    stack, dates = run.stack, summary["dates"]
    first, last = (_overview(scene, stack.rule, side) for scene in (stack.scenes[0], stack.scenes[-1]))
    names = [f"{row['interval']}: {row['date_from']} to {row['date_to']}" for row in summary["intervals"]]
    when = _map_view(run.folder / "date_of_change.tif", first.shape)
    views = (
        (f"date 1 ({dates[0]['date']})", Image.fromarray(first)),
        (f"date {len(dates)} ({dates[-1]['date']}, on date 1's grid)", Image.fromarray(last)),
        ("date of change (first interval with change)", overlay(last, when, ["no change", *names])),
    )
    unit = "m2" if summary["georeferenced"] else "pixels"
    areas = [f"{name} ({unit})" for name in run.classes[1:]]
    head = ["interval", "from", "to", "regions", *areas, "first changed (px)"]
    rows, captioned = [], []
    for row in summary["intervals"]:
        amounts = [_area(c) if summary["georeferenced"] else c["pixels"] for c in row["classes"].values()]
        cells = (row["interval"], row["date_from"], row["date_to"], row["regions_total"], *amounts)
        rows.append(_row((*(html.escape(str(c)) for c in cells), row["first_change_pixels"])))
        mine = [r for r in summary["regions"] if r["interval"] == row["interval"]]
        if any(r["caption"] for r in mine):
            dates_text = html.escape(f"{row['date_from']} to {row['date_to']}")
            captioned.append(f"<h3>{row['interval']}: {dates_text}</h3><ol>{_captioned(mine)}</ol>")
    title = f"When it changed: {len(dates)} dates, {dates[0]['date']} to {dates[-1]['date']}"
    body = (
        "<h2>Timeline</h2>"
        f"<table><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr>{''.join(rows)}</table>"
        f"<h2>Captioned regions (largest of each interval: {summary['regions_captioned']} of "
        f"{summary['regions_total']})</h2>{''.join(captioned)}"
    )
    _write_page(path, title, summary, views, side, body)
