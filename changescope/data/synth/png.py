"""A minimal, fast PNG encoder for 8-bit grey and RGB arrays.

Pillow's PNG writer tries every row filter on every row (adaptive filtering), which costs more than the
compression itself at low zlib levels; here every row uses the "Up" filter (a single vectorised numpy
subtraction) and zlib level 1. Strategy: run-length (``Z_RLE``) by default, which suits label masks
(mostly one value); for photographs ``PHOTO = Z_HUFFMAN_ONLY`` gives the same size about 15 % faster,
since level-1 string matching finds little in filtered noisy rows. On the development machine this
encodes generated scenes about 2.5x faster than Pillow at ``compress_level=1``. The output is a
standard PNG (IHDR, one IDAT, IEND) that any reader, Pillow included, decodes.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_UP = 2  # PNG filter type "Up": each byte minus the byte above it
PHOTO = zlib.Z_HUFFMAN_ONLY


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(array: np.ndarray, level: int = 1, strategy: int = zlib.Z_RLE) -> bytes:
    """PNG bytes of a uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB) array."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"encode_png needs uint8 [H, W] or [H, W, 3], got {array.dtype} {array.shape}")
    height, width = array.shape[:2]
    rows = np.ascontiguousarray(array).reshape(height, -1)
    raw = np.empty((height, rows.shape[1] + 1), np.uint8)
    raw[:, 0] = _UP
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])  # uint8 arithmetic wraps modulo 256, as PNG wants
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    data = compressor.compress(raw.tobytes()) + compressor.flush()
    color_type = 0 if array.ndim == 2 else 2
    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return _SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def write_png(path: str | Path, array: np.ndarray, level: int = 1, strategy: int = zlib.Z_RLE) -> None:
    Path(path).write_bytes(encode_png(array, level, strategy))
