"""Datasets and loaders that turn reader samples into model batches (one path for train, eval, predict)."""

from __future__ import annotations

import random
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from changescope.data.readers.base import CaptionPairDataset
from changescope.models.processor import ChangeProcessor


class CaptionPairs(Dataset):
    """Reader samples resized for the model; in training, one reference caption drawn per visit.

    Drawing one of the five references each epoch (instead of expanding every pair five times, as
    RSICC does) keeps an epoch at one pass over the images, which is what costs time on a CPU.
    """

    def __init__(self, dataset: CaptionPairDataset, processor: ChangeProcessor, train: bool, seed: int = 0):
        self.dataset, self.processor, self.train = dataset, processor, train
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        item = {
            "id": sample["id"],
            "image": self.processor.resize(sample["image"]),
            "captions": sample["captions"],
            "changed": sample["changed"],
        }
        if self.train:
            item["caption"] = self.rng.choice(sample["captions"])
        return item


class CachedFeatures(Dataset):
    """Pairs as precomputed backbone features ``[2, C, h, w]`` (fp16), for a frozen backbone.

    A frozen backbone without augmentation gives every image the same features each epoch; computing them
    once makes a training step cost only the change encoder and the decoder (about 10x less on a CPU).
    """

    def __init__(self, ids, features, captions, changed, train: bool, seed: int = 0):
        self.ids, self.features, self.captions, self.changed = ids, features, captions, changed
        self.train, self.rng = train, random.Random(seed)

    @classmethod
    def compute(
        cls, model, pairs: CaptionPairs, batch_size: int, train: bool, seed: int = 0
    ) -> CachedFeatures:
        ids, chunks, captions, changed = [], [], [], []
        loader = DataLoader(pairs, batch_size=batch_size, collate_fn=_Collate(pairs.processor))
        with torch.inference_mode():
            for batch in loader:
                chunks.append(model.backbone_features(batch["image"]).half())
                ids += batch["id"]
                captions += batch["captions"]
                changed += batch["changed"].tolist()
        return cls(ids, torch.cat(chunks), captions, changed, train, seed)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {
            "id": self.ids[index],
            "features": self.features[index],
            "captions": self.captions[index],
            "changed": self.changed[index],
        }
        if self.train:
            item["caption"] = self.rng.choice(self.captions[index])
        return item


def collate_pairs(items: list[dict[str, Any]], processor: ChangeProcessor) -> dict[str, Any]:
    key = "features" if "features" in items[0] else "image"
    batch: dict[str, Any] = {
        "id": [i["id"] for i in items],
        key: torch.stack([i[key] for i in items]),
        "captions": [i["captions"] for i in items],
        "changed": torch.tensor([i["changed"] for i in items]),
    }
    if "caption" in items[0]:
        batch["tokens"] = processor.encode_captions([i["caption"] for i in items])
    return batch


class _Collate:
    """A picklable collate function (worker processes need one)."""

    def __init__(self, processor: ChangeProcessor):
        self.processor = processor

    def __call__(self, items):
        return collate_pairs(items, self.processor)


def caption_loader(
    dataset: CaptionPairDataset,
    processor: ChangeProcessor,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    model=None,
) -> DataLoader:
    """Batches of a split; with ``model`` whose features can be cached, of precomputed features."""
    generator = torch.Generator().manual_seed(seed)
    pairs = CaptionPairs(dataset, processor, train=train, seed=seed)
    if model is not None and model.can_cache_features:
        pairs = CachedFeatures.compute(model, pairs, batch_size, train=train, seed=seed)
        num_workers = 0
    return DataLoader(
        pairs,
        batch_size=batch_size,
        shuffle=train,
        num_workers=num_workers,
        collate_fn=_Collate(processor),
        generator=generator,
        persistent_workers=num_workers > 0,
    )
