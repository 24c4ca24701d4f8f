"""Tileable multi-octave value noise, made once per ``(seed, size)`` and cropped per pair.

Texture synthesis is the costly part of a scene, so the generator builds a small bank of noise fields
twice the image size once, and every pair reads its textures through random crops of that bank. A pair's
content still depends only on ``(seed, index, size)``: the bank depends on ``(seed, size)`` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

#: field name -> (feature size in pixels at 256 x 256, octaves)
FIELDS = {
    "grain": (1.5, 2),  # pixel-scale texture: asphalt, leaves, rubble
    "fine": (6.0, 3),  # grass mottling, canopy variation
    "mid": (24.0, 3),  # patchy moisture / wear
    "coarse": (80.0, 2),  # slow brightness drift, parcel warping
}
VARIANTS = 2


def _axis(n: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice indices and smoothstep weights along one axis of a field with period ``n``."""
    t = np.arange(n, dtype=np.float64) * (cells / n)
    i0 = np.floor(t).astype(np.intp)
    f = t - i0
    f = (f * f * (3.0 - 2.0 * f)).astype(np.float32)
    return i0 % cells, (i0 + 1) % cells, f


def value_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """One octave of periodic value noise, ``[n, n]`` float32: a random lattice, separably interpolated."""
    lattice = rng.standard_normal((cells, cells)).astype(np.float32)
    i0, i1, f = _axis(n, cells)
    rows = lattice[i0] * (1.0 - f)[:, None] + lattice[i1] * f[:, None]
    return rows[:, i0] * (1.0 - f)[None, :] + rows[:, i1] * f[None, :]


def fractal_noise(rng: np.random.Generator, n: int, feature: float, octaves: int) -> np.ndarray:
    """Octaves of value noise (halving feature size, halving amplitude), normalised to mean 0, std 1."""
    total = np.zeros((n, n), np.float32)
    amplitude = 1.0
    for octave in range(octaves):
        cells = int(np.clip(round(n / (feature / 2**octave)), 2, n))
        total += amplitude * value_noise(rng, n, cells)
        amplitude *= 0.5
    total -= total.mean()
    total /= total.std() + 1e-6
    return total


@dataclass(frozen=True)
class NoiseBank:
    """Noise fields of side ``2 * size``; ``fields[name][variant]`` is a ``[2S, 2S]`` array: the
    ``FIELDS`` (float32, mean 0, std 1) and two ground textures derived from them."""

    size: int
    fields: dict[str, tuple[np.ndarray, ...]]

    def crops(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One ``[S, S]`` view per field for a pair: a random variant at a random offset (no copy)."""
        out = {}
        for name in self.fields:
            variant = int(rng.integers(VARIANTS))
            oy, ox = (int(v) for v in rng.integers(0, self.size + 1, size=2))
            out[name] = self.fields[name][variant][oy : oy + self.size, ox : ox + self.size]
        return out


@lru_cache(maxsize=4)
def noise_bank(seed: int, size: int) -> NoiseBank:
    """The bank for ``(seed, size)``; its RNG stream is disjoint from the per-pair ``[seed, index]`` ones."""
    rng = np.random.default_rng([seed, 0x5EED, 0xBA4C])
    n = 2 * size
    scale = size / 256.0
    fields = {
        name: tuple(fractal_noise(rng, n, max(feature * scale, 1.0), octaves) for _ in range(VARIANTS))
        for name, (feature, octaves) in FIELDS.items()
    }
    # combinations the ground needs for every pair, precomputed once (crops of them are still random)
    fields["ground_shade"] = tuple(
        1 + 0.07 * f + 0.07 * g + 0.04 * c
        for f, g, c in zip(fields["fine"], fields["grain"], fields["coarse"], strict=True)
    )
    fields["ground_mix"] = tuple(
        (np.clip(0.5 + 0.45 * m, 0, 1) * 15.99).astype(np.int16) for m in fields["mid"]
    )
    for arrays in fields.values():
        for array in arrays:
            array.setflags(write=False)
    return NoiseBank(size=size, fields=fields)
