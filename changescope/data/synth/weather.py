"""Transient nuisance of one acquisition: clouds with their shadows, haze, a misregistered date.

Real date stacks (yearly mosaics, Sentinel-2 and PlanetScope series) are rarely clean: a cloud and its
shadow on one date, a hazy date, one date off by a few pixels. None of it is change on the ground, but a
model that compares two dates at a time sees two changes around such a date (it appears, then goes).
The sequence generator draws these per date so that a model fusing all dates has something a
consecutive-pairs model cannot resolve from two dates alone: what reverts was not a change.

Labels stay on the ground: a cloud over a new building does not move the building's interval.
"""

from __future__ import annotations

import numpy as np

from changescope.data.synth.noise import fractal_noise
from changescope.data.synth.scene import shift

CLOUD_P = 0.25  # a date has clouds
HAZE_P = 0.12  # a date is hazy
MISREGISTERED_P = 0.35  # one date of a sequence (never the first) is off by 1-3 px
_CLOUD_COLOUR = np.array([236.0, 238.0, 242.0], np.float32)


def cloud_alpha(rng: np.random.Generator, size: int, cover: float) -> np.ndarray:
    """Soft cloud opacity ``[S, S]`` in [0, 1] covering about ``cover`` of the image: fractal noise cut at
    its ``1 - cover`` quantile, with a soft edge and thin (semi-transparent) parts."""
    field = fractal_noise(rng, size, feature=size / 3, octaves=4)
    cut = np.quantile(field, 1 - cover)
    alpha = np.clip((field - cut) / 0.6, 0.0, 1.0)
    return (alpha * rng.uniform(0.75, 1.0)).astype(np.float32)


def _cast(alpha: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """The cloud's shadow: its opacity moved along the sun's direction (no wrap-around)."""
    dy, dx = offset
    out = np.zeros_like(alpha)
    h, w = alpha.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = alpha[ys, xs]
    return out


def add_clouds(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, float]:
    """Clouds and their shadows over ``image`` (uint8 ``[S, S, 3]``); returns the image and the cloud
    cover (fraction of pixels at least half opaque)."""
    size = image.shape[0]
    alpha = cloud_alpha(rng, size, float(rng.uniform(0.05, 0.4)))
    angle = rng.uniform(0, 2 * np.pi)
    reach = rng.uniform(0.04, 0.1) * size
    shadow = _cast(alpha, (int(round(reach * np.sin(angle))), int(round(reach * np.cos(angle)))))
    pixels = image.astype(np.float32)
    pixels *= (1 - 0.5 * shadow * (1 - alpha))[..., None]
    colour = _CLOUD_COLOUR * rng.uniform(0.92, 1.0)
    pixels = pixels * (1 - alpha[..., None]) + colour * alpha[..., None]
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8), float((alpha >= 0.5).mean())


def add_haze(rng: np.random.Generator, image: np.ndarray) -> tuple[np.ndarray, float]:
    """A thin uniform haze: every pixel pulled toward a bright blue-grey by one strength."""
    strength = float(rng.uniform(0.15, 0.35))
    colour = np.array([200.0, 208.0, 220.0], np.float32) * rng.uniform(0.9, 1.05)
    pixels = image.astype(np.float32) * (1 - strength) + colour * strength
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8), strength


def apply_weather(rng: np.random.Generator, images: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Transient nuisance on each date of ``images`` (uint8 ``[T, S, S, 3]``), drawn from ``rng``; returns
    the new images and per date ``{"clouds": cover, "haze": strength, "shift": (dy, dx)}``."""
    count = len(images)
    misregistered = int(rng.integers(1, count)) if count > 1 and rng.random() < MISREGISTERED_P else -1
    out, info = [], []
    for t, image in enumerate(images):
        cover = strength = 0.0
        offset = (0, 0)
        if t == misregistered:
            while offset == (0, 0):
                offset = tuple(int(v) for v in rng.integers(-3, 4, size=2))
            image = shift(image, *offset)
        if rng.random() < CLOUD_P:
            image, cover = add_clouds(rng, image)
        if rng.random() < HAZE_P:
            image, strength = add_haze(rng, image)
        out.append(image)
        info.append({"clouds": round(cover, 4), "haze": round(strength, 4), "shift": offset})
    return np.stack(out), info
