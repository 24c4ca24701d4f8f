"""The predictor layer: resolve MODEL, load it once per process, caption pairs of images.

Scoring a dataset split lives one layer up, in ``tasks/evaluation.py``.

``MODEL`` is a directory written by ``save_pretrained``, a training run directory (its ``model/`` is used),
or the word ``default``: the model shipped inside the package (trained on SynthChange only).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from changescope.errors import DataError
from changescope.fileio import atomic_path
from changescope.models.change_model import ChangeModel
from changescope.models.hub import CONFIG_NAME, from_pretrained
from changescope.models.processor import ChangeProcessor

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "pretrained" / "default"


def default_precision(device: str | torch.device = "cpu") -> str:
    """The inference precision used when none is asked for: bf16 where the hardware computes it natively
    (a CPU with AMX or AVX-512 BF16 units, a CUDA GPU that supports it), else fp32.

    Measured in benchmarks/RESULTS.md ("Precision"): on this project's CPUs bf16 evaluates 1.7-2.3x faster
    and moves every score by less than the bars of issue 13 (CIDEr-D +0.5, masks -0.01 points); without
    native units autocast would emulate bf16 and be slower than fp32."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if kind != "cpu":
        return "fp32"
    native = (
        getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )
    return "bf16" if any(check is not None and check() for check in native) else "fp32"


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


def load(
    spec: str | Path, precision: str | None = None, tta: int | None = None, fold: bool = True
) -> tuple[ChangeModel, ChangeProcessor, Path]:
    """``(model, processor, path)`` for a model directory, run directory or 'default'; ``precision``
    ('fp32', 'bf16', 'fp16'; None: ``default_precision()``) is the inference autocast (``set_precision``),
    ``tta`` the test-time views its change masks average (1, 2, 4, 8; None: the model's ``config.tta``;
    ``set_tta``); ``fold``: batch norms folded into their convolutions (``fold_batchnorm``; False for a
    model that will be saved again, e.g. inside a ChangeLLM)."""
    path = resolve_model(spec)
    model, processor = from_pretrained(path)
    if fold:
        model.fold_batchnorm()
    model.set_precision(precision or default_precision())
    model.set_tta(tta or model.config.tta)
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


def batches(items: list, size: int) -> Iterator[list]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def caption_pairs(
    model: ChangeModel, processor: ChangeProcessor, images: torch.Tensor, decoding: Decoding
) -> list[str]:
    """Captions for a batch of pairs ``[B, T, 3, H, W]`` in [0, 1] (any H, W: resized here)."""
    sequences = model.generate(processor.resize(images), **decoding.kwargs())
    return processor.decode(sequences)


def write_jsonl(path: str | Path, rows) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
