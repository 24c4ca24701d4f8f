"""Raster geometry for the generator: local grids, shapes, shadow sweeps, component boxes.

Every shape is evaluated on a small local window around the object, never on the whole image, which is
what keeps a scene with dozens of objects cheap to draw.
"""

from __future__ import annotations

import numpy as np

from changescope import postprocess

#: 3 x 3 grid cell (row, col) -> position phrases; row 0 always says "top"/"upper", row 2
#: "bottom"/"lower", column 0 "left", column 2 "right", and the middle row / column say neither
POSITIONS: dict[tuple[int, int], tuple[str, ...]] = {
    (0, 0): ("at the top left", "in the top left corner", "at the upper left"),
    (0, 1): ("at the top", "on the top side", "in the upper part"),
    (0, 2): ("at the top right", "in the top right corner", "at the upper right"),
    (1, 0): ("on the left side", "on the left", "at the left"),
    (1, 1): ("in the center", "in the middle", "in the middle of the scene"),
    (1, 2): ("on the right side", "on the right", "at the right"),
    (2, 0): ("at the bottom left", "in the bottom left corner", "at the lower left"),
    (2, 1): ("at the bottom", "on the bottom side", "in the lower part"),
    (2, 2): ("at the bottom right", "in the bottom right corner", "at the lower right"),
}


def grid_cell(cy: float, cx: float, size: int) -> tuple[int, int]:
    """The 3 x 3 grid cell (row, col) of a point in pixel coordinates."""
    row = min(int(3 * cy / size), 2)
    col = min(int(3 * cx / size), 2)
    return max(row, 0), max(col, 0)


class Grid:
    """Pixel-centre coordinates of a window ``[y0, y0 + h) x [x0, x0 + w)`` (may extend past the image)."""

    def __init__(self, y0: int, x0: int, h: int, w: int):
        self.y0, self.x0, self.h, self.w = y0, x0, h, w
        self.y = np.arange(y0, y0 + h, dtype=np.float32)[:, None] + 0.5
        self.x = np.arange(x0, x0 + w, dtype=np.float32)[None, :] + 0.5

    @classmethod
    def around(cls, cy: float, cx: float, ry: float, rx: float) -> Grid:
        y0, x0 = int(np.floor(cy - ry)), int(np.floor(cx - rx))
        y1, x1 = int(np.ceil(cy + ry)) + 1, int(np.ceil(cx + rx)) + 1
        return cls(y0, x0, y1 - y0, x1 - x0)

    def crop(self, size: int) -> tuple[slice, slice, slice, slice] | None:
        """(local rows, local cols, image rows, image cols) of the part inside a ``size`` image."""
        iy0, ix0 = max(self.y0, 0), max(self.x0, 0)
        iy1, ix1 = min(self.y0 + self.h, size), min(self.x0 + self.w, size)
        if iy1 <= iy0 or ix1 <= ix0:
            return None
        return (
            slice(iy0 - self.y0, iy1 - self.y0),
            slice(ix0 - self.x0, ix1 - self.x0),
            slice(iy0, iy1),
            slice(ix0, ix1),
        )


def rect_coords(grid: Grid, cy: float, cx: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (u along ``angle``, v across it) of the grid relative to a rotated frame at (cy, cx)."""
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dy, dx = grid.y - np.float32(cy), grid.x - np.float32(cx)
    return dx * c + dy * s, dy * c - dx * s


def sweep(mask: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Union of ``mask`` shifted along the segment (0, 0) -> (dy, dx): the ground an object shades.

    Built by doubling (shift by 1, 2, 4, ... steps and OR), so a shadow of length L costs about log2(L)
    array operations instead of L; the rounding of each doubling step is at most half a pixel.
    """
    steps = max(int(np.ceil(max(abs(dy), abs(dx)))), 1)
    h, w = mask.shape
    out = mask.copy()
    reach = 1
    while reach < steps + 1:
        k = min(reach, steps + 1 - reach)  # never reach past the full length
        sy, sx = int(round(dy * k / steps)), int(round(dx * k / steps))
        if abs(sy) < h and abs(sx) < w and (sy or sx):
            src = out[max(-sy, 0) : h - max(sy, 0), max(-sx, 0) : w - max(sx, 0)]
            out[max(sy, 0) : h - max(-sy, 0), max(sx, 0) : w - max(-sx, 0)] |= src
        reach += k
    return out


def polyline_distance(points: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Distance from each grid pixel to a polyline and the arc length of its nearest point."""
    best = np.full((grid.h, grid.w), np.inf, np.float32)
    arc = np.zeros((grid.h, grid.w), np.float32)
    start = 0.0
    for (py, px), (qy, qx) in zip(points[:-1], points[1:], strict=True):
        sy, sx = np.float32(qy - py), np.float32(qx - px)
        length2 = max(float(sy * sy + sx * sx), 1e-6)
        ry, rx = grid.y - np.float32(py), grid.x - np.float32(px)
        t = np.clip((ry * sy + rx * sx) / np.float32(length2), 0.0, 1.0)
        d2 = (ry - t * sy) ** 2 + (rx - t * sx) ** 2
        closer = d2 < best
        np.copyto(best, d2, where=closer)
        np.copyto(arc, start + t * np.float32(np.sqrt(length2)), where=closer)
        start += float(np.sqrt(length2))
    return np.sqrt(best), arc


def component_boxes(mask: np.ndarray) -> list[list[float]]:
    """Boxes of the 8-connected components of a binary mask, xyxy normalised to [0, 1] by pixel edges,
    sorted by (y0, x0): ``postprocess.component_boxes`` (the same objects inference counts)."""
    return [list(box) for box in postprocess.component_boxes(mask, order="top_left")]


def point_gap(a: np.ndarray, b: np.ndarray, limit: int = 256) -> float:
    """Smallest distance between two ``[N, 2]`` point sets, each thinned to at most ``limit`` points."""
    if len(a) == 0 or len(b) == 0:
        return float("inf")
    a = a[:: max(len(a) // limit, 1)]
    b = b[:: max(len(b) // limit, 1)]
    d = a[:, None, :].astype(np.float32) - b[None, :, :].astype(np.float32)
    return float(np.sqrt((d * d).sum(-1).min()))


def polyline_gap(points: np.ndarray, polyline: np.ndarray) -> float:
    """Smallest distance from ``[N, 2]`` points to a polyline's centre line."""
    if len(points) == 0:
        return float("inf")
    pts = points.astype(np.float64) + 0.5
    best = np.inf
    for p, q in zip(polyline[:-1].astype(np.float64), polyline[1:].astype(np.float64), strict=True):
        seg = q - p
        t = np.clip(((pts - p) @ seg) / max(float(seg @ seg), 1e-9), 0, 1)
        d = pts - (p + t[:, None] * seg)
        best = min(best, float(np.sqrt((d * d).sum(axis=1).min())))
    return best
