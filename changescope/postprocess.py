"""Objects in a change mask: connected components, their sizes and boxes, and small-object removal.

An *object* is an 8-connected component of the pixels of one class. Inference (``detect``, ``ask``,
``scene``), the grounding metrics and the SynthChange generator all count and box objects with this one
module, so "how many buildings appeared" means the same thing in a result file, in a score and in the
questions and boxes of the data the model was trained on. Numpy only: cheap to import from the CLI.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

#: default smallest object kept, in input pixels (about a 3 x 3 blob: speckle, not a building)
MIN_AREA = 10

#: pixels touching at an edge or a corner belong to the same object
CONNECTIVITY = 8

#: orders of ``component_boxes``: ``raster`` = raster order of each component's first pixel,
#: ``top_left`` = by (y0, x0) of the box (ties stay in raster order)
ORDERS = ("raster", "top_left")


class Components(NamedTuple):
    """The 8-connected components of a 2-D mask, numbered 0..n-1 in raster order of their first pixel.

    ``x0, y0, x1, y1`` are the pixel edges of each component's box (x1, y1 exclusive), ``area`` its pixel
    count; ``shape`` is the mask's ``(h, w)``. The runs (maximal horizontal stretches of foreground) are
    kept so that a label image can be painted without labelling again.
    """

    shape: tuple[int, int]
    n: int
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    area: np.ndarray
    #: per run, in raster order: its row, first column, exclusive end column and component
    run_row: np.ndarray
    run_start: np.ndarray
    run_end: np.ndarray
    run_label: np.ndarray


def _foreground(mask: Any) -> np.ndarray:
    if hasattr(mask, "detach"):  # a torch tensor, without importing torch here
        mask = mask.detach().cpu().numpy()
    fg = np.asarray(mask)
    fg = fg if fg.dtype == bool else fg != 0
    if fg.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {fg.shape}")
    return fg


def _touching_runs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, w: int):
    """Index pairs ``(prev, cur)`` of runs in adjacent rows that touch (8-connectivity).

    Runs ``[s, e)`` of rows r - 1 and r touch when they overlap after widening by one pixel:
    ``s_prev <= e_cur`` and ``s_cur <= e_prev``. Keys ``row * (w + 2) + column`` sort all runs' starts
    and ends globally, so two binary searches give, for each run, the contiguous range of runs of the
    row above that it touches.
    """
    stride = w + 2
    start_key = rows * stride + starts
    end_key = rows * stride + ends
    above = (rows - 1) * stride
    lo = np.searchsorted(end_key, above + starts, side="left")  # first run above ending at or after s
    hi = np.searchsorted(start_key, above + ends, side="right")  # first run above starting after e
    count = np.maximum(hi - lo, 0)
    cur = np.repeat(np.arange(rows.size), count)
    offset = np.arange(cur.size) - np.repeat(np.cumsum(count) - count, count)
    return np.repeat(lo, count) + offset, cur


def _roots(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Each node's component root (its smallest index) over the edges ``(u, v)``: vectorised union-find.

    Every round hooks the larger root of each edge whose ends disagree onto the smaller one, then
    compresses paths, so the rounds needed grow with log(component size), not its diameter.
    """
    parent = np.arange(n)
    while u.size:
        ru, rv = parent[u], parent[v]
        differ = ru != rv
        u, v, ru, rv = u[differ], v[differ], ru[differ], rv[differ]
        np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
        while True:  # path compression: afterwards every node points straight at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    return parent


def components(mask: Any) -> Components:
    """The 8-connected components of a 2-D mask (non-zero = foreground), with boxes and areas.

    Run-length labelling: the runs of every row are found with numpy, touching runs of adjacent rows
    are paired with binary searches and merged with a union-find over runs, so the work grows with the
    number of runs rather than pixels and no Python loop visits a row or a run.
    """
    fg = _foreground(mask)
    h, w = fg.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = fg
    edges = np.diff(padded, axis=1).ravel()  # [h, w + 1]: +1 where a run starts, -1 after it ends
    rows, starts = np.divmod(np.flatnonzero(edges == 1), w + 1)  # flat: far faster than 2-D nonzero
    ends = np.flatnonzero(edges == -1) % (w + 1)  # exclusive ends, in the same raster order
    roots = _roots(rows.size, *_touching_runs(rows, starts, ends, w))
    unique, run_label = np.unique(roots, return_inverse=True)  # roots are first runs: raster order
    run_label = run_label.reshape(-1)
    n = int(unique.size)
    x0, x1 = np.full(n, w), np.zeros(n, np.int64)
    y1 = np.zeros(n, np.int64)
    np.minimum.at(x0, run_label, starts)
    np.maximum.at(x1, run_label, ends)
    np.maximum.at(y1, run_label, rows + 1)
    area = np.bincount(run_label, weights=ends - starts, minlength=n).astype(np.int64)
    return Components((h, w), n, x0, rows[unique], x1, y1, area, rows, starts, ends, run_label)


def _paint(comps: Components, values: np.ndarray, dtype=np.int64) -> np.ndarray:
    """An image of the mask's shape holding ``values[label]`` on each component's pixels, 0 elsewhere."""
    h, w = comps.shape
    out = np.zeros(h * w, dtype)
    lengths = comps.run_end - comps.run_start
    first = comps.run_row * w + comps.run_start
    pixels = np.repeat(first - np.cumsum(lengths) + lengths, lengths) + np.arange(int(lengths.sum()))
    out[pixels] = np.repeat(values[comps.run_label], lengths)
    return out.reshape(h, w)


def label_components(mask: Any) -> tuple[np.ndarray, int]:
    """Label the 8-connected components of a 2-D mask (non-zero = foreground).

    Returns ``(labels, n)``: int64 labels of the mask's shape, 0 = background and 1..n numbered in raster
    order of each component's first pixel.
    """
    comps = components(mask)
    return _paint(comps, np.arange(1, comps.n + 1)), comps.n


def component_sizes(mask: Any) -> np.ndarray:
    """Pixel count of each 8-connected component, in raster order of its first pixel."""
    return components(mask).area


def remove_small_objects(mask: np.ndarray, min_area: int = MIN_AREA) -> np.ndarray:
    """A copy of ``mask`` with every per-class component below ``min_area`` pixels set to 0."""
    out = np.array(mask, copy=True)
    if min_area <= 1:
        return out
    for cls in np.unique(out):
        if cls == 0:
            continue
        comps = components(mask == cls)
        small = comps.area < min_area
        if small.any():
            out[_paint(comps, small, bool)] = 0
    return out


def _boxes(comps: Components) -> np.ndarray:
    """``[n, 4]`` float64 boxes ``(x0, y0, x1, y1)``: pixel edges divided by width / height."""
    h, w = comps.shape
    return np.stack([comps.x0 / w, comps.y0 / h, comps.x1 / w, comps.y1 / h], axis=1)


def component_boxes(
    mask: Any, min_pixels: int = 1, order: str = "raster"
) -> list[tuple[float, float, float, float]]:
    """Boxes ``(x0, y0, x1, y1)`` in [0, 1] of the 8-connected components with >= ``min_pixels`` pixels.

    Coordinates are pixel edges divided by width / height (unrounded), so a component covering the whole
    image is ``(0, 0, 1, 1)`` and a single pixel at (row 0, col 0) of a W x H mask is ``(0, 0, 1/W, 1/H)``.
    ``order`` is ``"raster"`` (each component's first pixel) or ``"top_left"`` (by the box's (y0, x0),
    ties in raster order).
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    comps = components(mask)
    boxes = [tuple(box) for box in _boxes(comps)[comps.area >= min_pixels].tolist()]
    if order == "top_left":
        boxes.sort(key=lambda b: (b[1], b[0]))
    return boxes


def boxes_from_mask(mask: Any, min_pixels: int = 1) -> list[tuple[float, float, float, float]]:
    """``component_boxes`` in raster order (the grounding metrics' and ``ask``'s boxes)."""
    return component_boxes(mask, min_pixels)


def objects(binary: Any) -> list[dict[str, Any]]:
    """The objects of a binary mask: ``{"box": [x0, y0, x1, y1] rounded to 6 places, "area": pixels}``,
    in raster order of each object's first pixel."""
    comps = components(binary)
    return [
        {"box": [round(v, 6) for v in box], "area": area}
        for box, area in zip(_boxes(comps).tolist(), comps.area.tolist(), strict=True)
    ]


def summarize_mask(mask: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Per change class: changed pixels, percent of the image, and its objects with boxes.

    Boxes are ``[x0, y0, x1, y1]`` pixel edges divided by width / height (so in [0, 1]), in raster order of
    each object's first pixel; ``area`` is in pixels.
    """
    h, w = mask.shape
    total = h * w
    per_class: dict[str, Any] = {}
    for cls, name in enumerate(classes):
        if cls == 0:
            continue
        binary = mask == cls
        found = objects(binary)
        pixels = int(binary.sum())
        per_class[name] = {
            "pixels": pixels,
            "percent": round(100.0 * pixels / total, 4),
            "objects": len(found),
            "boxes": [o["box"] for o in found],
            "object_areas": [o["area"] for o in found],
        }
    changed = int((mask > 0).sum())
    return {
        "size": [w, h],
        "classes": per_class,
        "changed_pixels": changed,
        "changed_percent": round(100.0 * changed / total, 4),
        "objects": sum(c["objects"] for c in per_class.values()),
    }
