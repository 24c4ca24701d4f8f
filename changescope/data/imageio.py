"""Reading image and label files with errors that name the file.

Band rule for images: 3-band images are used as they are; images with more than 3 bands (RGBA, or
multispectral PNG/TIFF that Pillow reads) use their first 3 bands; palette images are converted to RGB;
1-band (grayscale) and 2-band images are refused, since every model here expects RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from changescope.errors import DataError


def _open(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        img = Image.open(path)
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(path, f"not a readable image ({err.__class__.__name__}: {err})") from None
    return img


def read_rgb(path: str | Path) -> np.ndarray:
    """Return an ``[H, W, 3]`` uint8 array, applying the band rule of this module."""
    img = _open(path)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I;16", "I;16B", "I", "F"):
        raise DataError(path, f"1-band {img.mode} image; expected 3 bands (RGB)")
    arr = np.asarray(img)
    if arr.ndim == 2 or arr.shape[2] < 3:
        bands = 1 if arr.ndim == 2 else arr.shape[2]
        raise DataError(path, f"{bands}-band image; expected 3 bands (RGB)")
    if arr.dtype != np.uint8:
        raise DataError(path, f"{arr.dtype} image; expected 8-bit RGB")
    return np.ascontiguousarray(arr[:, :, :3])


def as_rgb(image, name: str = "image") -> np.ndarray:
    """An image file path, a PIL image or an array (``[H, W, 3+]`` uint8, or float in [0, 1]) ->
    ``[H, W, 3]`` uint8, by the band rule of :func:`read_rgb`; ``name`` words the errors for non-files."""
    if isinstance(image, (str, Path)):
        return read_rgb(image)
    if isinstance(image, Image.Image):
        # palette and other colour encodings become RGB; 1-band images are refused below, as from files
        image = np.asarray(image.convert("RGB") if image.mode in ("P", "CMYK", "YCbCr") else image)
    if not isinstance(image, np.ndarray):
        raise DataError(
            name, f"expected a file path, a PIL image or a numpy array, got {type(image).__name__}"
        )
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] < 3):
        bands = 1 if image.ndim == 2 else image.shape[2]
        raise DataError(name, f"{bands}-band image (shape {image.shape}); expected 3 bands (RGB)")
    if image.ndim != 3:
        raise DataError(name, f"array of shape {image.shape}; expected [H, W, 3] (RGB)")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image[:, :, :3])
    if np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise DataError(name, "a float array must hold values in [0, 1]")
        return np.ascontiguousarray((image[:, :, :3] * 255 + 0.5).astype(np.uint8))
    raise DataError(name, f"{image.dtype} array; expected uint8, or float in [0, 1]")


def image_name(image) -> str:
    """How an input is named in results: its path, else its kind and size."""
    if isinstance(image, (str, Path)):
        return str(image)
    shape = getattr(image, "shape", None) or (getattr(image, "height", "?"), getattr(image, "width", "?"))
    return f"<{type(image).__name__} {shape[1]}x{shape[0]}>"


def read_array(path: str | Path) -> np.ndarray:
    """Return the stored values of a label image (``[H, W]`` or ``[H, W, C]``), no conversion."""
    img = _open(path)
    if img.mode == "P":
        img = img.convert("RGB")
    return np.asarray(img)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(height, width)`` from the header only."""
    img = _open_header(path)
    return img.height, img.width


def _open_header(path: str | Path) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(path, f"not a readable image ({err.__class__.__name__}: {err})") from None


def to_tensor_pair(a: np.ndarray, b: np.ndarray):
    """Stack two ``[H, W, 3]`` uint8 arrays into a float ``[2, 3, H, W]`` tensor in [0, 1]."""
    return to_tensor_series([a, b])


def to_tensor_series(arrays):
    """Stack T ``[H, W, 3]`` uint8 arrays (oldest first) into a float ``[T, 3, H, W]`` tensor in [0, 1]."""
    import torch

    series = np.stack(arrays).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(series)).float().div_(255.0)


#: file suffixes treated as images when scanning folders (anything Pillow reads can still be passed by name)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
