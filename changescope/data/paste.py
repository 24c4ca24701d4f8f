"""Building change pasted into real pairs: more 0.5 m-style "new building" examples from few labels.

Real building-change labels are scarce here (no LEVIR-CD / WHU-CD), but the xBD / Ida-BD releases ship a
building-footprint mask for every pre-disaster image: hundreds of real roofs at 0.5 m. ``PastedChange``
cuts those roofs out (:class:`FootprintBank`) and pastes a few into one date of a real pair's tile, with
the roof's label added to the pair's own change mask, in the spirit of copy-paste augmentation for change
detection (a building that appears, or with ``reverse`` that disappears). The pair's real differences
(illumination, season, misregistration, its own labelled changes) stay as they are, so the pasted
roof is the one new thing a model has to find among real nuisances.

What a paste does, per tile (deterministic in ``seed`` and the item's index, so cached features match):
- 1 to ``per_tile`` roofs, each resampled from the bank's GSD to the tile's (``sample["gsd"]``), turned
  by a random quarter turn and mirror, placed where the tile is labelled;
- its colours pulled a third of the way toward the tile's mean (a roof photographed on another day), the edge
  feathered over one pixel, and a soft shadow cast on the same side for every roof of the tile (shadows
  are not labelled, as in LEVIR-CD);
- its footprint labelled change (1) where the tile is labelled; with probability ``reverse`` pasted into
  the earlier date instead (a demolished building).

Mix files turn it on per source (``paste:`` in :mod:`changescope.data.mix`), for the training split only.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from changescope.data.sample import IGNORE_INDEX
from changescope.errors import DataError

#: roofs smaller than this many pixels at the bank's GSD are not kept (label noise, slivers)
MIN_PIXELS = 40
#: the least summed |RGB difference| between a roof and the ground it replaces (else another place)
MIN_CONTRAST = 0.15
#: the largest share of a tile one pasted roof may cover
MAX_SHARE = 0.15


@dataclass
class Footprint:
    rgb: torch.Tensor  # [3, h, w] float in [0, 1]: the roof's bounding box, two pixels of margin
    mask: torch.Tensor  # [h, w] bool: the roof

    @property
    def area(self) -> int:
        return int(self.mask.sum())


class FootprintBank:
    """Roofs cut from single-date images with building-footprint masks, at one GSD (metres / pixel)."""

    def __init__(self, pieces: list[Footprint], gsd: float):
        if not pieces:
            raise ValueError("a footprint bank needs at least one roof")
        self.pieces, self.gsd = pieces, gsd

    def __len__(self) -> int:
        return len(self.pieces)

    @classmethod
    def from_dataset(
        cls, path: str | Path, split: str = "train", min_pixels: int = MIN_PIXELS
    ) -> FootprintBank:
        """The roofs of a dataset that ships footprint masks: the pre-disaster images of an ``xbd``
        release (``masks/<name>_pre_disaster.png``), ``split`` pairs only."""
        from changescope.data.readers.changedetection import XBD

        root = Path(path)
        if not XBD.matches(root):
            raise DataError(root, "paste objects must be an xbd release (pre-disaster footprint masks)")
        dataset = XBD(root, split)
        pairs = []
        for entry in dataset.entries:
            pre = entry.images[0]
            mask = entry.label.with_name(pre.name)
            if not mask.is_file():
                raise DataError(mask, "missing: the footprint mask of the pre-disaster image")
            pairs.append((pre, mask))
        pieces = cut_roofs(pairs, min_pixels)
        if not pieces:
            raise DataError(root, f"no roof of {min_pixels} pixels or more in the {split} footprint masks")
        return cls(pieces, XBD.gsd)


def cut_roofs(pairs: list[tuple[Path, Path]], min_pixels: int = MIN_PIXELS) -> list[Footprint]:
    """The roofs (connected components of mask values > 127) of each ``(image, footprint mask)`` file
    pair that cover at least ``min_pixels``, each with two pixels of the ground around it."""
    from scipy import ndimage

    from changescope.data.imageio import read_array
    from changescope.data.readers.changedetection import read_label, to_rgb

    pieces = []
    for image_path, mask_path in pairs:
        rgb = to_rgb(image_path, read_array(image_path))
        building = read_label(mask_path, rgb.shape[:2]) > 127
        labels, _ = ndimage.label(building)
        image = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).float() / 255
        for index, found in enumerate(ndimage.find_objects(labels), start=1):
            if found is None:
                continue
            rows, cols = found
            top, left = max(rows.start - 2, 0), max(cols.start - 2, 0)
            bottom, right = min(rows.stop + 2, rgb.shape[0]), min(cols.stop + 2, rgb.shape[1])
            mask = labels[top:bottom, left:right] == index
            if mask.sum() >= min_pixels:
                pieces.append(
                    Footprint(image[:, top:bottom, left:right].clone(), torch.from_numpy(mask.copy()))
                )
    return pieces


class PastedChange(torch.utils.data.Dataset):
    """A binary change dataset's samples with roofs from ``bank`` pasted in (module docstring).

    ``copies`` variants of each base sample (item ``j`` reads base sample ``j % len(base)``); labels keep
    the base's values (0 / 1 / ``IGNORE_INDEX``), so a mix remaps them like the base's own.
    """

    def __init__(
        self,
        dataset,
        bank: FootprintBank,
        per_tile: int = 4,
        reverse: float = 0.3,
        copies: int = 1,
        seed: int = 0,
        gsd: float | None = None,
    ):
        if per_tile < 1 or copies < 1 or not 0 <= reverse <= 1:
            raise ValueError("per_tile and copies must be >= 1, reverse in [0, 1]")
        self.dataset, self.bank = dataset, bank
        self.per_tile, self.reverse, self.copies, self.seed = per_tile, reverse, copies, seed
        #: metres per pixel of the base's native pairs when its samples do not say (``sample["gsd"]``)
        self.gsd = gsd
        self.classes, self.no_change_sentences = dataset.classes, dataset.no_change_sentences
        base = dataset.entries
        self.entries = [
            replace(base[j % len(base)], id=f"{base[j % len(base)].id}+paste{j // len(base)}")
            for j in range(len(base) * copies)
        ]

    @property
    def has_masks(self) -> bool:
        return True

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index % len(self.dataset)]
        entry = self.entries[index]
        rng = np.random.default_rng([self.seed, index, zlib.crc32(entry.id.encode())])
        image, mask = sample["image"].clone(), sample["mask"].clone()
        scale = self.bank.gsd / self._tile_gsd(sample, entry)
        date = 0 if rng.random() < self.reverse else 1
        angle = rng.uniform(0, 2 * math.pi)
        largest = MAX_SHARE * mask.numel() / scale**2  # in the bank's pixels
        for _ in range(int(rng.integers(1, self.per_tile + 1))):
            for _draw in range(8):  # a roof bigger than the tile allows is drawn again
                piece = self.bank.pieces[int(rng.integers(len(self.bank)))]
                if piece.area <= largest:
                    break
            else:
                continue
            rgb, roof = _resampled(piece, scale)
            k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
            rgb, roof = _turn(rgb, k, flip), _turn(roof, k, flip)
            _paste(image[date], mask, rgb, roof, rng, angle, scale)
        out = {**sample, "id": entry.id, "image": image, "mask": mask}
        out["changed"] = bool((mask == 1).any())
        return out

    def _tile_gsd(self, sample: dict[str, Any], entry) -> float:
        if sample.get("gsd"):
            return sample["gsd"]
        if self.gsd is None:
            return self.bank.gsd  # unknown: roofs pasted at the bank's pixel size
        return self.gsd / entry.extra.get("window", (1.0,))[0]  # a tile resampled by the mix's scale


def _resampled(piece: Footprint, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    if abs(scale - 1) < 1e-3:
        return piece.rgb, piece.mask
    h, w = piece.mask.shape
    size = (max(3, round(h * scale)), max(3, round(w * scale)))
    rgb = F.interpolate(piece.rgb[None], size=size, mode="bilinear", antialias=True, align_corners=False)
    roof = F.interpolate(piece.mask[None, None].float(), size=size, mode="bilinear", align_corners=False)
    return rgb[0].clamp(0, 1), roof[0, 0] > 0.5


def _turn(tensor: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    tensor = torch.rot90(tensor, k, dims=(-2, -1))
    return tensor.flip(-1) if flip else tensor


def _paste(date: torch.Tensor, mask: torch.Tensor, rgb, roof, rng, angle: float, scale: float) -> None:
    """Blend one roof into ``date`` ([3, H, W], in place) at a random place where it shows; label it."""
    height, width = mask.shape
    h, w = roof.shape
    if h >= height or w >= width or not roof.any():
        return
    # a roof from another photograph: its colours pulled a third of the way toward this tile's
    rgb = (rgb + 0.3 * (date.mean(dim=(1, 2)) - rgb.mean(dim=(1, 2)))[:, None, None]).clamp(0, 1)
    colour = rgb[:, roof].mean(dim=1)
    for _try in range(6):
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        window = (slice(None), slice(top, top + h), slice(left, left + w))
        # a roof the colour of the ground it lands on would be labelled change that no one can see;
        # one on padding or unlabelled ground teaches nothing
        labelled = (mask[window[1:]][roof] != IGNORE_INDEX).float().mean() > 0.9
        if labelled and (date[window][:, roof].mean(dim=1) - colour).abs().sum() >= MIN_CONTRAST:
            break
    else:
        return
    region = date[window]
    alpha = F.avg_pool2d(
        F.max_pool2d(roof[None, None].float(), 3, stride=1, padding=1), 3, stride=1, padding=1
    )[0, 0]
    # a soft shadow beside the roof (not labelled), the same side for every roof of the tile
    reach = max(1, round(3 * min(scale, 2.0)))
    dy, dx = round(reach * math.sin(angle)), round(reach * math.cos(angle))
    shadow = torch.roll(alpha, shifts=(dy, dx), dims=(0, 1)) * (1 - alpha)
    shaded = region * (1 - 0.35 * shadow)
    date[window] = shaded * (1 - alpha) + rgb * alpha
    labels = mask[window[1:]]
    labels[roof & (labels != IGNORE_INDEX)] = 1
