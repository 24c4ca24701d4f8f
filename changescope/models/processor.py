"""Turns user images and captions into model inputs, and model outputs back into text.

One path for training, evaluation and prediction: images of any size are resized (bilinear, antialiased)
to the model's square ``image_size``; captions are encoded with the model's saved vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from changescope.data.imageio import as_rgb
from changescope.data.text import Vocabulary
from changescope.errors import DataError


class ChangeProcessor:
    """``vocab`` is None for a model without a caption decoder (a mask-only model)."""

    def __init__(self, vocab: Vocabulary | None, image_size: int, max_len: int):
        self.vocab, self.image_size, self.max_len = vocab, image_size, max_len

    def resize_logits(self, logits: Tensor, size: tuple[int, int]) -> Tensor:
        """Mask logits ``[B, K, S, S]`` back to an input's ``size`` (bilinear, before any argmax)."""
        if tuple(logits.shape[-2:]) == tuple(size):
            return logits
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def resize_mask(self, mask: Tensor) -> Tensor:
        """``[..., H, W]`` class ids -> ``[..., S, S]`` by nearest neighbour (ids must not be blended)."""
        if mask.shape[-2:] == (self.image_size, self.image_size):
            return mask
        lead = mask.shape[:-2]
        flat = mask.reshape(-1, 1, *mask.shape[-2:]).float()
        out = F.interpolate(flat, size=(self.image_size,) * 2, mode="nearest-exact")
        return out.to(mask.dtype).reshape(*lead, self.image_size, self.image_size)

    def resize(self, images: Tensor) -> Tensor:
        """``[..., 3, H, W]`` float -> ``[..., 3, S, S]``; a no-op at the model's size."""
        if images.shape[-2:] == (self.image_size, self.image_size):
            return images
        lead = images.shape[:-3]
        flat = images.reshape(-1, *images.shape[-3:])
        out = F.interpolate(
            flat, size=(self.image_size,) * 2, mode="bilinear", antialias=True, align_corners=False
        )
        return out.clamp_(0, 1).reshape(*lead, 3, self.image_size, self.image_size)

    def load_pair(self, before: str | Path, after: str | Path) -> Tensor:
        """Read two images (``read_pair``) -> ``[2, 3, S, S]`` at the model's size."""
        return self.resize(self.read_pair(before, after))

    @staticmethod
    def read_pair(before, after) -> Tensor:
        """Two images (file paths, PIL images or arrays, see ``imageio.as_rgb``) at their own size ->
        ``[2, 3, H, W]`` in [0, 1]; the sizes must agree."""
        return ChangeProcessor.read_stack([before, after], ("before", "after"))

    @staticmethod
    def read_stack(images: Sequence[Any], names: Sequence[str] | None = None) -> Tensor:
        """T images (oldest first) at their own size -> ``[T, 3, H, W]`` in [0, 1]; every size must equal the
        first's. ``names`` label inputs that are not files in errors (default "date 1" ...)."""
        names = list(names) if names is not None else [f"date {t + 1}" for t in range(len(images))]
        arrays = [as_rgb(image, name) for image, name in zip(images, names, strict=True)]
        first = arrays[0]
        for image, name, array in zip(images[1:], names[1:], arrays[1:], strict=True):
            if array.shape != first.shape:
                other = Path(images[0]).name if isinstance(images[0], (str, Path)) else names[0]
                raise DataError(
                    image if isinstance(image, (str, Path)) else name,
                    f"image is {array.shape[1]}x{array.shape[0]} "
                    f"but {other} is {first.shape[1]}x{first.shape[0]}",
                )
        return torch.from_numpy(np.stack(arrays).transpose(0, 3, 1, 2).copy()).float().div_(255)

    def encode_captions(self, captions: Sequence[str]) -> Tensor:
        """Token ids ``[N, L]`` padded with ``<pad>``, each ``<start> ... <end>`` cut to ``max_len``."""
        ids = [self.vocab.encode(c, max_len=self.max_len) for c in captions]
        out = torch.full((len(ids), max(map(len, ids))), self.vocab.pad_id, dtype=torch.long)
        for row, seq in enumerate(ids):
            out[row, : len(seq)] = torch.tensor(seq)
        return out

    def decode(self, sequences: Sequence[Sequence[int]]) -> list[str]:
        return [self.vocab.decode(seq) for seq in sequences]
