"""Small random helpers: ``Generator.choice`` converts its argument to an array on every call, which
costs more than the draw itself when done thousands of times per pair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    """One element of ``options``, uniformly."""
    return options[int(rng.integers(len(options)))]
