"""Running a saved model: resolve MODEL; caption / segment a dataset split, a pair of files, or a folder.

``MODEL`` is a directory written by ``save_pretrained``, a training run directory (its ``model/`` is used),
or the word ``default``: the model shipped inside the package (trained on SynthChange only).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from changescope.data.imageio import IMAGE_SUFFIXES, image_name, image_size
from changescope.errors import DataError
from changescope.fileio import atomic_path
from changescope.models.change_model import ChangeModel
from changescope.models.hub import CONFIG_NAME, from_pretrained
from changescope.models.processor import ChangeProcessor

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "pretrained" / "default"
#: inference precision when none is asked for (measured in benchmarks/RESULTS.md, "Precision")
DEFAULT_PRECISION = "fp32"


@dataclass
class Decoding:
    beam_size: int = 1
    length_penalty: float = 1.0
    batch_size: int = 32

    def kwargs(self) -> dict[str, Any]:
        return {"beam_size": self.beam_size, "length_penalty": self.length_penalty}


def resolve_model(spec: str | Path) -> Path:
    if str(spec) == "default":
        if not (DEFAULT_MODEL / CONFIG_NAME).is_file():
            raise DataError(DEFAULT_MODEL, "the shipped default model is missing from this installation")
        return DEFAULT_MODEL
    path = Path(spec)
    if (path / "model" / CONFIG_NAME).is_file() and not (path / CONFIG_NAME).is_file():
        return path / "model"  # a training run directory
    return path


def load(spec: str | Path, precision: str | None = None) -> tuple[ChangeModel, ChangeProcessor, Path]:
    """``(model, processor, path)`` for a model directory, run directory or 'default'; ``precision``
    ('fp32', 'bf16', 'fp16'; None: ``DEFAULT_PRECISION``) is the inference autocast (``set_precision``)."""
    path = resolve_model(spec)
    model, processor = from_pretrained(path)
    model.set_precision(precision or DEFAULT_PRECISION)
    return model, processor, path


@dataclass(frozen=True)
class SharedModel:
    """A model loaded once per process, and the lock that serialises its inference."""

    model: ChangeModel
    processor: ChangeProcessor
    path: Path
    lock: threading.RLock

    def triple(self) -> tuple[ChangeModel, ChangeProcessor, Path]:
        return self.model, self.processor, self.path


_SHARED: dict[Path, SharedModel] = {}
_SHARED_LOCK = threading.Lock()


def shared(spec: str | Path) -> SharedModel:
    """The model ``spec`` names, loaded on first use and then shared by everything in this process that runs
    it (``serve``'s requests and scene jobs, every agent session): one copy of the weights in memory, one
    lock (reentrant) that callers hold around inference."""
    key = resolve_model(spec).resolve()
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = SharedModel(*load(spec), threading.RLock())
        return _SHARED[key]


def shared_model(spec: str | Path) -> tuple[ChangeModel, ChangeProcessor, Path]:
    """``(model, processor, path)`` of ``shared(spec)``, as ``load`` returns them."""
    return shared(spec).triple()


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def caption_pairs(
    model: ChangeModel, processor: ChangeProcessor, images: torch.Tensor, decoding: Decoding
) -> list[str]:
    """Captions for a batch of pairs ``[B, T, 3, H, W]`` in [0, 1] (any H, W: resized here)."""
    sequences = model.generate(processor.resize(images), **decoding.kwargs())
    return processor.decode(sequences)


def caption_split(model, processor, dataset, decoding: Decoding) -> dict[str, str]:
    return predict_split(model, processor, dataset, decoding, masks=False)[0]


def iter_predictions(
    model, processor, dataset, decoding: Decoding, masks: bool = True, captions: bool = True
) -> Iterator[tuple[dict, str | None, torch.Tensor | None]]:
    """``(sample, caption, mask)`` for every pair of a dataset, one backbone pass per batch: the caption
    when the model has a decoder, the class-id mask when ``masks`` and it has a mask head. Masks come at
    the sample's label size (its image size when unlabelled): logits are upsampled bilinearly before argmax.
    """
    from changescope.tasks.detection import mask_probabilities

    masks = masks and "mask" in model.tasks
    captions = captions and model.decoder is not None
    size = processor.image_size
    for indices in _batches(list(range(len(dataset))), decoding.batch_size):
        samples = [dataset[i] for i in indices]
        # pairs larger than the model's size are mapped tile by tile at their own resolution
        large = [max(s["image"].shape[-2:]) > size for s in samples]
        out = model(torch.stack([processor.resize(s["image"]) for s in samples]), masks=masks)
        texts: list[str | None] = [None] * len(samples)
        if captions:
            texts = processor.decode(model.generate_from(out.memory, **decoding.kwargs()))
        for i, sample in enumerate(samples):
            mask = None
            if masks and large[i]:
                mask = mask_probabilities(model, processor, sample["image"], sample.get("gsd")).argmax(0)
            elif masks:
                up = processor.resize_logits(out.mask_logits[i : i + 1], sample["image"].shape[-2:])
                mask = up.argmax(1)[0]
            if mask is not None and "mask" in sample and mask.shape != sample["mask"].shape:
                label = tuple(sample["mask"].shape)
                mask = torch.nn.functional.interpolate(
                    mask[None, None].float(), size=label, mode="nearest-exact"
                )
                mask = mask[0, 0].long()
            yield sample, texts[i], mask


def predict_split(
    model, processor, dataset, decoding: Decoding, masks: bool = True, captions: bool = True
) -> tuple[dict[str, str], Any]:
    """Captions by pair id (if the model has a decoder) and a change-mask confusion matrix (if ``masks``
    and the model has a mask head) over every labelled pair of a split."""
    from changescope.data.sample import BINARY_CLASSES, IGNORE_INDEX
    from changescope.metrics.segmentation import ConfusionMatrix
    from changescope.tasks.data import binary_target

    masks = masks and "mask" in model.tasks
    # binary change labels score a class model's changed / unchanged decision
    binary = masks and tuple(dataset.classes) == BINARY_CLASSES
    classes = BINARY_CLASSES if binary else model.config.classes
    confusion = ConfusionMatrix(len(classes), ignore_index=IGNORE_INDEX) if masks else None
    predictions: dict[str, str] = {}
    for sample, text, mask in iter_predictions(model, processor, dataset, decoding, masks, captions):
        if text is not None:
            predictions[sample["id"]] = text
        if confusion is not None and "mask" in sample:
            confusion.update(binary_target(mask) if binary else mask, sample["mask"])
    return predictions, confusion


def evaluate(
    spec: str | Path,
    data: str | Path,
    split: str = "test",
    format: str | None = None,
    decoding: Decoding | None = None,
    meteor: bool | None = None,
    predictions_out: str | Path | None = None,
    precision: str | None = None,
) -> dict[str, Any]:
    """Run every task the model and the data share on ``split`` and score it: caption keys as ``score``
    gives them, ``detection`` (change masks), ``vqa`` (OA, AA, per type) and ``grounding`` (mIoU, cIoU)."""
    from changescope.metrics.score import score_dataset
    from changescope.tasks.queries import open_pairs
    from changescope.tasks.vqa import score_queries

    decoding = decoding or Decoding()
    model, processor, path = load(spec, precision)
    dataset, records = open_pairs(data, split, format)
    records = [r for r in records if r.task in model.tasks]
    from changescope.data.sample import BINARY_CLASSES

    with_masks = "mask" in model.tasks and dataset.has_masks
    with_captions = model.decoder is not None and any(e.captions for e in dataset.entries)
    binary = tuple(dataset.classes) == BINARY_CLASSES
    if with_masks and not binary and list(dataset.classes) != list(model.config.classes):
        raise DataError(
            data,
            f"the data's mask classes {list(dataset.classes)} differ from the model's "
            f"{list(model.config.classes)}",
        )
    if not (with_captions or with_masks or records):
        raise DataError(
            data,
            "this split has nothing the model can be scored on "
            f"(it was trained for: {', '.join(model.tasks)})",
        )
    predictions, confusion = {}, None
    if with_captions or with_masks:
        with torch.inference_mode():
            predictions, confusion = predict_split(
                model, processor, dataset, decoding, masks=with_masks, captions=with_captions
            )
    result: dict[str, Any] = {}
    if with_captions:
        if predictions_out is not None:
            write_jsonl(predictions_out, ({"id": k, "caption": v} for k, v in predictions.items()))
        result.update(score_dataset(predictions, dataset, data, meteor=meteor))
    if confusion is not None:
        classes = list(BINARY_CLASSES if binary else model.config.classes)
        result["detection"] = {**confusion.compute(classes), "classes": classes, "binary": binary}
    if records:
        result.update(score_queries(model, processor, dataset, records, decoding.batch_size))
    training = path / "training.json"
    result.update(
        {
            "model": str(path),
            "preset": model.config.preset,
            "tasks": list(model.tasks),
            "decoding": {**asdict(decoding), "max_len": processor.max_len},
            "precision": model.precision,
            "vocab_sha256": processor.vocab.sha256 if processor.vocab is not None else None,
            "seed": json.loads(training.read_text())["seed"] if training.is_file() else None,
            "data": str(data),
            "split": split,
            "n": len(dataset),
        }
    )
    return result


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def folder_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """``(id, before, after)`` for ``FOLDER/A/<name>`` and ``FOLDER/B/<name>`` with the same file stem."""
    folder = Path(folder)
    before_dir, after_dir = folder / "A", folder / "B"
    for sub in (before_dir, after_dir):
        if not sub.is_dir():
            raise DataError(
                sub, "not found: a folder of pairs holds A/ (before) and B/ (after) with matching names"
            )
    before = {p.stem: p for p in before_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    after = {p.stem: p for p in after_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    unmatched = sorted(set(before) ^ set(after))
    if unmatched:
        side = "B" if unmatched[0] in before else "A"
        raise DataError(folder / side, f"no image named '{unmatched[0]}' to pair with the other folder")
    if not before:
        raise DataError(before_dir, "no images found")
    return [(stem, before[stem], after[stem]) for stem in sorted(before)]


def check_pair_files(pairs: list[tuple[str, Path, Path]]) -> None:
    """Fail fast, before a model is loaded: every file exists, is an image, and each pair has one size."""
    for _, before, after in pairs:
        size_a, size_b = image_size(before), image_size(after)
        if size_a != size_b:
            raise DataError(
                after,
                f"image is {size_b[1]}x{size_b[0]} but {before.name} is {size_a[1]}x{size_a[0]}; "
                "the images of a pair must have one size",
            )


def describe_files(model, processor, pairs: list[tuple[str, Any, Any]], decoding: Decoding) -> list[dict]:
    """Caption pairs of images (paths, PIL images or arrays); the rows of :func:`iter_descriptions`."""
    return list(iter_descriptions(model, processor, pairs, decoding))


def iter_descriptions(
    model, processor, pairs: list[tuple[str, Any, Any]], decoding: Decoding
) -> Iterator[dict]:
    """One row per pair, ``decoding.batch_size`` pairs decoded and captioned at a time, so memory stays
    flat in the number of pairs (callers check the files first: ``check_pair_files``).

    With a mask head, a caption that says "no change" while the model's own mask (at the model's size)
    holds changed objects is replaced by a sentence written from the mask (``caption_source: "mask"``,
    see ``tasks/consistency.py``)."""
    from changescope.tasks.consistency import reconcile
    from changescope.tasks.detection import MIN_AREA, remove_small_objects, summarize_mask

    model.require("caption")
    masks = "mask" in model.tasks
    with torch.inference_mode():
        for chunk in _batches(pairs, decoding.batch_size):
            images = torch.stack([processor.load_pair(a, b) for _, a, b in chunk])
            out = model(images, masks=masks)
            texts = processor.decode(model.generate_from(out.memory, **decoding.kwargs()))
            for k, ((pair_id, a, b), text) in enumerate(zip(chunk, texts, strict=True)):
                row = {"id": pair_id, "before": image_name(a), "after": image_name(b), "caption": text}
                if masks:
                    mask = out.mask_logits[k].argmax(0).to(torch.uint8).numpy()
                    summary = summarize_mask(remove_small_objects(mask, MIN_AREA), list(model.config.classes))
                    fixed = reconcile(text, summary)
                    row.update(caption=fixed.caption, caption_source=fixed.source, model_caption=text)
                yield row


def complete_rows(partial: Path) -> dict[str, str]:
    """id -> line of the complete rows of an interrupted JSONL, up to the first torn or unreadable line."""
    rows: dict[str, str] = {}
    if not partial.is_file():
        return rows
    for line in partial.read_text(encoding="utf-8").splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            rows[str(json.loads(line)["id"])] = line
        except (json.JSONDecodeError, KeyError, TypeError):
            break
    return rows


def write_jsonl_resumable(path: str | Path, rows_for, pairs: list[tuple[str, Any, Any]]) -> tuple[int, int]:
    """Stream ``rows_for(pending_pairs)`` into ``PATH.part`` row by row, renamed to ``PATH`` at the end.

    A run that stops (Ctrl-C, a crash) leaves ``PATH.part``; the next run with the same ``PATH`` keeps its
    complete rows and captions only the pairs not in it. Returns ``(rows written now, rows kept)``."""
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    # kept: complete rows of pairs still asked for (a torn last line and other pairs' rows are dropped)
    wanted = {p[0] for p in pairs}
    kept = {i: line for i, line in complete_rows(partial).items() if i in wanted}
    pending = [p for p in pairs if p[0] not in kept]
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with partial.open("w", encoding="utf-8") as fh:
        fh.writelines(kept.values())
        fh.flush()
        for row in rows_for(pending):
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            fh.flush()
            written += 1
    os.replace(partial, path)
    return written, len(kept)
