"""Write a SynthChange dataset: the LEVIR-MCI layout plus JSONL records and a summary.

Layout of ``out`` (docs/SYNTHCHANGE.md)::

    LevirCCcaptions.json                        Karpathy style, with changeflag
    images/<split>/{A,B,label}/<split>_NNNNNN.png
    grounding/<split>/<split>_NNNNNN_<k>.png    binary 0/255 grounding targets
    records.jsonl                               vqa, grounding and retrieval records
    synthchange.json                            the summary ``generate`` returns

Everything is written into a hidden sibling directory that is renamed to ``out`` only at the end, so
an interrupted run never leaves a directory that looks complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np

from changescope.data.records import Record, write_records
from changescope.data.synth.captions import captions, retrieval_query
from changescope.data.synth.classes import (
    CHANGE_TYPES,
    LABEL_COLORS,
    LAND_COVER,
    MASK_CLASSES,
    MASK_PRIORITY,
)
from changescope.data.synth.png import PHOTO, encode_png, write_png
from changescope.data.synth.questions import ANSWERS, grounding, vqa
from changescope.data.synth.scene import SynthPair, make_pair
from changescope.data.text import tokenize
from changescope.errors import DataError

GENERATOR_VERSION = "1.0"
SPLITS = ("train", "val", "test")
MIN_SIZE = 64
_LABEL_LUT = np.array([LABEL_COLORS[i] for i in range(len(MASK_CLASSES))], np.uint8)


def label_rgb(mask: np.ndarray) -> np.ndarray:
    """The label PNG's RGB colours (``classes.LABEL_COLORS``) of a class-id mask."""
    return np.take(_LABEL_LUT, mask.ravel(), axis=0).reshape(*mask.shape, 3)


def text_rng(seed: int, index: int) -> np.random.Generator:
    """The RNG for a pair's text (captions, questions, queries); its pixels use ``[seed, index]``."""
    return np.random.default_rng([seed, index, 1])


def split_counts(pairs: int, fractions: tuple[float, float, float]) -> dict[str, int]:
    """Pairs per split: train and val rounded from their fractions, test takes the rest."""
    train = int(round(pairs * fractions[0]))
    val = min(int(round(pairs * fractions[1])), pairs - train)
    return {"train": train, "val": val, "test": pairs - train - val}


def assign_splits(pairs: int, seed: int, fractions: tuple[float, float, float]) -> list[tuple[str, int]]:
    """``(split, number within split)`` per pair index, from a seeded permutation."""
    counts = split_counts(pairs, fractions)
    order = np.random.default_rng([seed, 0x5B11]).permutation(pairs)
    split_of = np.empty(pairs, dtype=object)
    bounds = np.cumsum([counts[s] for s in SPLITS])
    for position, index in enumerate(order.tolist()):
        split_of[index] = SPLITS[int(np.searchsorted(bounds, position, side="right"))]
    numbers = {s: 0 for s in SPLITS}
    out = []
    for index in range(pairs):  # numbering follows the pair index inside each split
        split = str(split_of[index])
        out.append((split, numbers[split]))
        numbers[split] += 1
    return out


def check_arguments(
    out: Path, pairs: int, size: int, seed: int, fractions: tuple[float, float, float], noun: str = "pairs"
) -> None:
    """What a writer checks before it writes anything (``noun``: what ``pairs`` counts, for the message)."""
    if not isinstance(pairs, Integral) or pairs < 1:
        raise ValueError(f"{noun} must be a positive integer, got {pairs!r}")
    if not isinstance(size, Integral) or size < MIN_SIZE:
        raise ValueError(f"size must be an integer >= {MIN_SIZE}, got {size!r}")
    if not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    try:
        values = [float(v) for v in fractions]
    except (TypeError, ValueError):
        raise ValueError(f"split_fractions must be three numbers, got {fractions!r}") from None
    if len(values) != 3 or any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1) > 1e-6:
        raise ValueError(
            f"split_fractions must be three non-negative numbers summing to 1, got {fractions!r}"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, "exists and is not an empty directory; refusing to overwrite it")


class _Writer:
    """Accumulates the index files while pairs are written."""

    def __init__(self, root: Path):
        self.root = root
        self.images: list[dict[str, Any]] = []
        self.records: list[Record] = []
        self._empty: dict[tuple, bytes] = {}
        for split in SPLITS:
            for sub in ("A", "B", "label"):
                (root / "images" / split / sub).mkdir(parents=True)
            (root / "grounding" / split).mkdir(parents=True)

    def add(self, pair: SynthPair, split: str, number: int, rng: np.random.Generator) -> None:
        name = f"{split}_{number:06d}"
        folder = Path("images") / split
        paths = {sub: (folder / sub / f"{name}.png").as_posix() for sub in ("A", "B", "label")}
        write_png(self.root / paths["A"], pair.image_a, strategy=PHOTO)
        write_png(self.root / paths["B"], pair.image_b, strategy=PHOTO)
        self._write_mask(self.root / paths["label"], pair.mask, rgb=True)
        self._caption_entry(pair, split, name, rng)
        images = [{"path": paths["A"], "time": None}, {"path": paths["B"], "time": None}]
        meta = {"split": split, "pair": name}
        for k, (qtype, question, answer) in enumerate(vqa(pair, rng)):
            self.records.append(
                Record(f"{name}_vqa{k}", "vqa", images, question, qtype, answer, meta=dict(meta))
            )
        for k, target in enumerate(grounding(pair, rng)):
            mask_path = (Path("grounding") / split / f"{name}_{k}.png").as_posix()
            self._write_mask(self.root / mask_path, target.mask, rgb=False)
            self.records.append(
                Record(
                    f"{name}_ground{k}",
                    "grounding",
                    images,
                    target.query,
                    target.change,
                    mask=mask_path,
                    boxes=target.boxes,
                    meta={**meta, "negative": target.negative},
                )
            )
        self.records.append(
            Record(
                f"{name}_retrieval",
                "retrieval",
                images,
                retrieval_query(pair, rng),
                "retrieval",
                name,
                meta=meta,
            )
        )

    def _write_mask(self, path: Path, mask: np.ndarray, rgb: bool) -> None:
        """A label (RGB colours) or grounding target (0 / 255) PNG; empty ones are encoded only once,
        since every unchanged pair and every negative query has one."""
        if mask.any():
            path.write_bytes(encode_png(label_rgb(mask) if rgb else mask.astype(np.uint8) * np.uint8(255)))
            return
        key = (mask.shape, rgb)
        if key not in self._empty:
            self._empty[key] = encode_png(np.zeros((*mask.shape, 3) if rgb else mask.shape, np.uint8))
        path.write_bytes(self._empty[key])

    def _caption_entry(self, pair: SynthPair, split: str, name: str, rng: np.random.Generator) -> None:
        """The pair's Karpathy-style entry; ``imgid`` / ``sentid`` are set by ``_renumber`` at the end."""
        texts = captions(pair, rng)
        sentences = [{"imgid": 0, "sentid": 0, "raw": raw, "tokens": tokenize(raw)} for raw in texts]
        self.images.append(
            {
                "filepath": split,
                "filename": f"{name}.png",
                "imgid": 0,
                "split": split,
                "changeflag": int(pair.changed),
                "sentences": sentences,
                "sentids": [],
                "changes": [e.kind for e in pair.events],
            }
        )


def _summary(
    seed: int, size: int, pairs: int, fractions, stats: dict[str, dict], records: list[Record]
) -> dict[str, Any]:
    tasks = {t: sum(r.task == t for r in records) for t in ("vqa", "grounding", "retrieval")}
    return {
        "format": "synthchange",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "size": size,
        "pairs": pairs,
        "ground_sample_distance_m": 0.5 * 256 / size,
        "split_fractions": [float(f) for f in fractions],
        "mask_classes": [
            {"id": i, "name": n, "color": list(LABEL_COLORS[i])} for i, n in enumerate(MASK_CLASSES)
        ],
        "mask_priority": [MASK_CLASSES[c] for c in MASK_PRIORITY],
        "mask_rule": "footprints of the objects that changed; cast shadows are not in the mask",
        "land_cover": list(LAND_COVER),
        "change_types": list(CHANGE_TYPES),
        "answers": {k: list(v) for k, v in ANSWERS.items()},
        "counts": stats,
        "records": tasks,
    }


def generate(
    out: str | Path,
    pairs: int,
    size: int = 256,
    seed: int = 0,
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Generate ``pairs`` SynthChange pairs into the new directory ``out``; return the summary.

    Pair ``i`` depends only on ``(seed, i, size)``, so the same arguments give byte-identical files.
    ``progress`` is called after each pair with the number of pairs written so far.
    """
    out = Path(out)
    check_arguments(out, pairs, size, seed, split_fractions)
    pairs, size, seed = int(pairs), int(size), int(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        writer = _Writer(tmp)
        stats = {
            s: {"pairs": 0, "changed": 0, "unchanged": 0, "changes": {k: 0 for k in CHANGE_TYPES}}
            for s in SPLITS
        }
        for index, (split, number) in enumerate(assign_splits(pairs, seed, split_fractions)):
            pair = make_pair(seed, index, size)
            writer.add(pair, split, number, text_rng(seed, index))
            split_stats = stats[split]
            split_stats["pairs"] += 1
            split_stats["changed" if pair.changed else "unchanged"] += 1
            for event in pair.events:
                split_stats["changes"][event.kind] += 1
            if progress is not None:
                progress(index + 1)
        order = {s: i for i, s in enumerate(SPLITS)}
        writer.images.sort(key=lambda im: (order[im["split"]], im["filename"]))
        _renumber(writer.images)
        writer.records.sort(key=lambda r: (order[r.meta["split"]], r.meta["pair"]))
        (tmp / "LevirCCcaptions.json").write_text(
            json.dumps({"images": writer.images}) + "\n", encoding="utf-8"
        )
        write_records(tmp / "records.jsonl", writer.records)
        summary = _summary(seed, size, pairs, split_fractions, stats, writer.records)
        (tmp / "synthchange.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def publish(tmp: Path, out: Path) -> None:
    """Rename the finished hidden folder ``tmp`` to ``out``: an ``out`` that appeared (non-empty) while we
    were writing is still never overwritten; an empty one is replaced."""
    if out.exists():
        if any(out.iterdir()):
            raise DataError(out, "exists and is not an empty directory; refusing to overwrite it")
        out.rmdir()
    os.rename(tmp, out)


def _renumber(images: list[dict[str, Any]]) -> None:
    """Give ``imgid`` / ``sentid`` in file order (train, val, test), as LEVIR-CC does."""
    sentid = 0
    for imgid, image in enumerate(images):
        image["imgid"] = imgid
        for sentence in image["sentences"]:
            sentence["imgid"] = imgid
            sentence["sentid"] = sentid
            sentid += 1
        image["sentids"] = [s["sentid"] for s in image["sentences"]]
