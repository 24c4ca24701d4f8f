"""Datasets and loaders that turn reader samples into model batches (one path for train, eval, predict)."""

from __future__ import annotations

import random
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from changescope.data.readers.base import CaptionPairDataset
from changescope.data.sample import BINARY_CLASSES, IGNORE_INDEX, UNKNOWN_CHANGE
from changescope.models.processor import ChangeProcessor
from changescope.postprocess import MIN_AREA, remove_small_objects, summarize_mask
from changescope.tasks.consistency import NO_CHANGE_SENTENCE, caption_from_mask


def binary_target(mask: torch.Tensor) -> torch.Tensor:
    """Class or binary change labels -> 0 no change / 1 change / ``IGNORE_INDEX`` (``UNKNOWN_CHANGE`` and
    every class id count as change)."""
    return torch.where(mask == IGNORE_INDEX, IGNORE_INDEX, (mask > 0).to(mask.dtype))


def binary_remap(dataset_classes, model_classes) -> bool:
    """True when binary change labels (background / change) train a model that names change classes: their
    "change" then becomes ``UNKNOWN_CHANGE`` (trains the change logit, no class)."""
    return tuple(dataset_classes) == BINARY_CLASSES and tuple(model_classes) not in ((), BINARY_CLASSES)


def describe_mask(mask: torch.Tensor) -> str:
    """A label mask's sentence (``tasks.consistency.caption_from_mask`` on its changed pixels, any class,
    objects under ``MIN_AREA`` dropped), or ``NO_CHANGE_SENTENCE``: how a caption-less change-detection
    tile is described for retrieval training, as ``benchmarks/retrieval_quality.py`` describes its queries."""
    binary = ((mask > 0) & (mask != IGNORE_INDEX)).to(torch.uint8).numpy()
    summary = summarize_mask(remove_small_objects(binary, MIN_AREA), list(BINARY_CLASSES))
    return caption_from_mask(summary) or NO_CHANGE_SENTENCE


class CaptionPairs(Dataset):
    """Reader samples resized for the model; in training, one reference caption drawn per visit.

    Drawing one of the five references each epoch (instead of expanding every pair five times, as
    RSICC does) keeps an epoch at one pass over the images, which is what costs time on a CPU. With
    ``masks`` each item also carries its change mask at the model's size (``IGNORE_INDEX`` if unlabelled).
    """

    def __init__(
        self,
        dataset: CaptionPairDataset,
        processor: ChangeProcessor,
        train: bool,
        seed: int = 0,
        masks: bool = False,
        captions: bool = True,
        remap_binary: bool = False,
    ):
        self.dataset, self.processor, self.train = dataset, processor, train
        self.masks, self.captions, self.remap_binary = masks, captions, remap_binary
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
        if sample.get("describe") and "mask" in sample:
            sentence = describe_mask(sample["mask"])
            item["captions"], item["changed"] = [sentence], sentence != NO_CHANGE_SENTENCE
        if self.masks:
            size = (self.processor.image_size,) * 2
            mask = sample.get("mask")
            if mask is not None and self.remap_binary:
                mask = torch.where(mask == 1, UNKNOWN_CHANGE, mask)
            item["mask"] = (
                self.processor.resize_mask(mask).to(torch.uint8)
                if mask is not None
                else torch.full(size, IGNORE_INDEX, dtype=torch.uint8)
            )
        if self.train and self.captions:
            item["caption"] = self.rng.choice(item["captions"]) if item["captions"] else ""
        return item


class CachedFeatures(Dataset):
    """Pairs as precomputed backbone levels (each ``[2, C, h, w]``, fp16), for a frozen backbone.

    A frozen backbone without augmentation gives every image the same features each epoch; computing them
    once makes a training step cost only the change encoder and the heads (about 5x less on a CPU).
    Only the levels the model's heads read are kept (the last one for a caption-only model).
    """

    def __init__(
        self,
        ids,
        features,
        captions,
        changed,
        train: bool,
        seed: int = 0,
        masks=None,
        draw=True,
        mask_key="mask",
    ):
        self.ids, self.features, self.captions, self.changed = ids, features, captions, changed
        self.masks, self.draw, self.mask_key = masks, draw, mask_key
        self.train, self.rng = train, random.Random(seed)
        #: in training, flip / rotate each item's feature maps and mask together (see ``_dihedral``)
        self.augment = False

    @classmethod
    def compute(
        cls, model, pairs: CaptionPairs | SequenceItems, batch_size: int, train: bool, seed: int = 0
    ) -> CachedFeatures:
        """Features of every item: the levels the pair heads read (``model.backbone_features``), or for
        sequences every date's levels (``model.date_levels``, each ``[T, C, h, w]``)."""
        sequences = isinstance(pairs, SequenceItems)
        levels_of, mask_key = (
            (model.date_levels, "interval_masks") if sequences else (model.backbone_features, "mask")
        )
        ids, chunks, captions, changed, masks = [], [], [], [], []
        loader = DataLoader(pairs, batch_size=batch_size, collate_fn=_Collate(pairs.processor))
        with torch.inference_mode():
            for batch in loader:
                chunks.append([level.half() for level in levels_of(batch["image"])])
                ids += batch["id"]
                captions += batch["captions"]
                changed += batch["changed"].tolist()
                if mask_key in batch:
                    masks.append(batch[mask_key].to(torch.uint8))
        features = [torch.cat(level) for level in zip(*chunks, strict=True)]
        masks = torch.cat(masks) if masks else None
        draw = pairs.captions and not sequences
        return cls(ids, features, captions, changed, train, seed, masks, draw, mask_key)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = {
            "id": self.ids[index],
            "features": [level[index] for level in self.features],
            "captions": self.captions[index],
            "changed": self.changed[index],
        }
        if self.masks is not None:
            item[self.mask_key] = self.masks[index]
        if self.train and self.draw:
            item["caption"] = self.rng.choice(self.captions[index]) if self.captions[index] else ""
        if self.train and self.augment and self.masks is not None:
            k, flip = self.rng.randrange(4), self.rng.random() < 0.5
            item["features"] = [_dihedral(level, k, flip) for level in item["features"]]
            item[self.mask_key] = _dihedral(item[self.mask_key], k, flip)
        return item


class SequenceItems(Dataset):
    """Sequence samples (``image`` ``[T, 3, H, W]``, ``interval_masks`` ``[T-1, H, W]``) resized for the
    model; in training, each visit turned by a random quarter turn and mirrored (dates and masks alike):
    only where change happens is learnt here, and aerial views have no up or left."""

    def __init__(
        self, dataset, processor: ChangeProcessor, train: bool, seed: int = 0, augment: bool = False
    ):
        self.dataset, self.processor, self.train, self.augment = dataset, processor, train, augment
        self.rng = random.Random(seed)
        self.captions = False

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.dataset[index]
        item = {
            "id": sample["id"],
            "image": self.processor.resize(sample["image"]),
            "interval_masks": self.processor.resize_mask(sample["interval_masks"]).to(torch.uint8),
            "captions": sample.get("captions", []),
            "changed": sample["changed"],
        }
        if self.train and self.augment:
            k, flip = self.rng.randrange(4), self.rng.random() < 0.5
            item["image"] = _dihedral(item["image"], k, flip)
            item["interval_masks"] = _dihedral(item["interval_masks"], k, flip)
        return item


def _dihedral(tensor: torch.Tensor, k: int, flip: bool) -> torch.Tensor:
    """Rotate the last two dimensions by ``k`` quarter turns, then mirror them left-right if ``flip``.

    On cached features this stands in for rotating and mirroring the images: a convolutional backbone's
    features of a rotated image are close to (not exactly) the rotated features, and aerial views have no
    up or left, so the change head learns orientation-free changes from few real pairs at no extra cost.
    Only for change masks: captions name positions ("in the top left"), so captioning never uses it.
    """
    out = torch.rot90(tensor, k, dims=(-2, -1)) if k else tensor
    return out.flip(-1) if flip else out


def collate_pairs(items: list[dict[str, Any]], processor: ChangeProcessor) -> dict[str, Any]:
    batch: dict[str, Any] = {
        "id": [i["id"] for i in items],
        "captions": [i["captions"] for i in items],
        "changed": torch.tensor([i["changed"] for i in items]),
    }
    if "features" in items[0]:
        batch["features"] = [
            torch.stack(level) for level in zip(*(i["features"] for i in items), strict=True)
        ]
    else:
        batch["image"] = torch.stack([i["image"] for i in items])
    for key in ("mask", "interval_masks"):
        if key in items[0]:
            batch[key] = torch.stack([i[key] for i in items]).long()
    if "caption" in items[0]:
        batch["caption_text"] = [i["caption"] for i in items]
        if processor.vocab is not None:  # a retrieval-only model draws captions but decodes none
            batch["tokens"] = processor.encode_captions(batch["caption_text"])
    if "vqa" in items[0]:
        from changescope.tasks.queries import collate_queries

        collate_queries(items, batch, processor.image_size)
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
    masks: bool = False,
    captions: bool = True,
    queries=None,
    questions: int = 3,
    open_prompts: bool = False,
    remap_binary: bool = False,
    augment: bool = False,
) -> DataLoader:
    """Batches of a split (with change masks if ``masks``; one drawn caption per training pair if
    ``captions``; each pair's questions and grounding queries if ``queries``, see ``WithQueries``); with
    ``model`` whose features can be cached, of precomputed features."""
    generator = torch.Generator().manual_seed(seed)
    pairs = CaptionPairs(
        dataset, processor, train=train, seed=seed, masks=masks, captions=captions, remap_binary=remap_binary
    )
    if model is not None and model.can_cache_features:
        pairs = CachedFeatures.compute(model, pairs, batch_size, train=train, seed=seed)
        pairs.augment = augment and train and not captions
        num_workers = 0
    if queries is not None:
        from changescope.tasks.queries import WithQueries

        pairs = WithQueries(pairs, queries, processor, train, seed, questions, open_prompts)
    return DataLoader(
        pairs,
        batch_size=batch_size,
        shuffle=train,
        num_workers=num_workers,
        collate_fn=_Collate(processor),
        generator=generator,
        persistent_workers=num_workers > 0,
    )


def sequence_loader(
    dataset,
    processor: ChangeProcessor,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    model=None,
    augment: bool = False,
) -> DataLoader:
    """Batches of a sequence split (``image`` ``[B, T, 3, S, S]``, ``interval_masks`` ``[B, T-1, S, S]``;
    equal T within the split); with ``model`` whose backbone is frozen, of every date's precomputed levels."""
    generator = torch.Generator().manual_seed(seed)
    items: Dataset = SequenceItems(dataset, processor, train, seed, augment and train)
    if model is not None and model.backbone.frozen:
        items = CachedFeatures.compute(
            model, SequenceItems(dataset, processor, False), batch_size, train, seed
        )
        items.augment = augment and train
        num_workers = 0
    return DataLoader(
        items,
        batch_size=batch_size,
        shuffle=train,
        num_workers=num_workers,
        collate_fn=_Collate(processor),
        generator=generator,
        persistent_workers=num_workers > 0,
    )
