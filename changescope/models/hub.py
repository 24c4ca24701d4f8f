"""``save_pretrained`` / ``from_pretrained``: a model directory that rebuilds without the training code.

A directory holds ``config.json`` (the architecture, :class:`ModelConfig`), ``model.safetensors`` (the
weights; never a pickle) and ``vocab.json`` (the exact token ids the weights were trained with). It is
written to a temporary sibling and renamed into place, so an interrupted save never leaves a directory that
looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from changescope.data.text import Vocabulary
from changescope.errors import DataError
from changescope.fileio import plain_permissions
from changescope.models.change_model import ChangeModel
from changescope.models.config import ModelConfig
from changescope.models.processor import ChangeProcessor

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
VOCAB_NAME = "vocab.json"


@contextlib.contextmanager
def staged_model_dir(directory: str | Path) -> Iterator[Path]:
    """A fresh folder beside ``directory`` to write a model into; it replaces ``directory`` whole when the
    block succeeds (an existing folder only if it holds a model), and is removed when it fails."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(tmp: Path, directory: Path) -> None:
    if directory.exists():
        if any(directory.iterdir()) and not (directory / CONFIG_NAME).is_file():
            raise DataError(
                directory, "exists and is not a changescope model directory; refusing to overwrite"
            )
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, directory)


def save_pretrained(
    model: ChangeModel,
    processor: ChangeProcessor,
    directory: str | Path,
    dtype: torch.dtype | None = None,
    metadata: dict[str, str] | None = None,
    backbone: str = "file",
) -> Path:
    """Write config, weights (optionally cast, e.g. ``torch.float16`` to halve the size) and vocabulary.

    ``backbone="package"`` leaves a frozen backbone out of the weights file when every tensor of it equals
    its packaged pretrained weights (checked; a ValueError otherwise): ``from_pretrained`` loads them from
    the package, as the frozen question encoder is."""
    from safetensors.torch import save_file

    if backbone not in ("file", "package"):
        raise ValueError(f"backbone must be 'file' or 'package', got {backbone!r}")
    if getattr(model, "folded", 0):
        raise ValueError(
            "this model's batch norms are folded for inference (ChangeModel.fold_batchnorm): save the model "
            "loaded with tasks.inference.load(..., fold=False) or from_pretrained"
        )
    if backbone == "package":
        _check_packaged_backbone(model)

    vocab_size = len(processor.vocab) if processor.vocab is not None else 0
    if vocab_size != model.config.vocab_size:
        raise ValueError(f"vocabulary has {vocab_size} tokens, model expects {model.config.vocab_size}")
    with staged_model_dir(directory) as tmp:
        config = ModelConfig.from_dict(model.config.to_dict())
        config.backbone_weights = backbone
        config.save(tmp / CONFIG_NAME)
        if processor.vocab is not None:
            processor.vocab.save(tmp / VOCAB_NAME)
        state = {}
        for name, tensor in model.state_dict().items():
            if backbone == "package" and name.startswith("backbone."):
                continue
            tensor = tensor.detach().cpu()
            if dtype is not None and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            state[name] = tensor.contiguous().clone()  # clone: tied weights must not share storage here
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", **(metadata or {})})
        plain_permissions(tmp / WEIGHTS_NAME)
    return Path(directory)


def _check_packaged_backbone(model: ChangeModel) -> None:
    from changescope.models.backbones import Backbone

    config = model.config
    if not config.backbone_frozen:
        raise ValueError("only a frozen backbone can be loaded from its package")
    packaged = Backbone(config.backbone, pretrained=True, out_indices=config.out_indices, frozen=True)
    mine = model.backbone.state_dict()
    for name, tensor in packaged.state_dict().items():
        ours = mine[name].float()
        if ours.shape != tensor.shape or not torch.allclose(ours, tensor.float(), rtol=1e-3, atol=1e-3):
            raise ValueError(f"backbone tensor {name} differs from the packaged weights: keep it in the file")


def from_pretrained(directory: str | Path) -> tuple[ChangeModel, ChangeProcessor]:
    """Rebuild the model (in eval mode, float32) and its processor; never unpickles, never downloads."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(directory, "model directory not found")
    config = ModelConfig.load(directory / CONFIG_NAME)
    # the weights file has every tensor, except a backbone that comes from its package
    config.backbone_pretrained = config.backbone_weights == "package"
    vocab = Vocabulary.load(directory / VOCAB_NAME) if config.vocab_size else None
    if vocab is not None and len(vocab) != config.vocab_size:
        raise DataError(
            directory / VOCAB_NAME,
            f"wrong vocabulary: {len(vocab)} tokens, but the model was trained with {config.vocab_size}",
        )
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise DataError(weights, "weights file not found")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise DataError(weights, f"not a readable safetensors file ({err})") from None
    model = ChangeModel(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    if config.backbone_weights == "package":
        result.missing_keys[:] = [k for k in result.missing_keys if not k.startswith("backbone.")]
    if result.missing_keys or result.unexpected_keys:
        problem = result.missing_keys[:3] or result.unexpected_keys[:3]
        raise DataError(weights, f"weights do not match config.json (e.g. {problem})")
    model.eval()
    max_len = int(config.decoder_kwargs.get("max_len", 42))
    return model, ChangeProcessor(vocab, config.image_size, max_len)
