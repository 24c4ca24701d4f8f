"""EfficientNet-Lite0 in plain PyTorch, built module for module as timm's ``tf_efficientnet_lite0``.

Importing timm costs seconds (it imports torchvision, whose ops import ``torch._dynamo``), more than the
shipped model's whole forward pass. This file is the one network the shipped model needs, written out:

* the same module and parameter names, in the same ``state_dict`` order, as
  ``timm.create_model("tf_efficientnet_lite0", features_only=True)``, so checkpoints with timm's keys
  load unchanged;
* the same arithmetic: TensorFlow "same" padding (a stride-2 convolution pads its input at run time,
  the extra pixel of an odd total going right / bottom, as timm's ``Conv2dSame``; a stride-1 one pads
  symmetrically), BatchNorm with TensorFlow's ``eps=1e-3``, ReLU6, no squeeze-excite, and the stem
  (32 channels) and head (1280) fixed instead of scaled, as EfficientNet-Lite does;
* the same initialisation (TensorFlow's fan-out normal), drawn in the same order, so a seed gives timm's
  random weights.

EfficientNet-Lite: Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks"
(ICML 2019), and https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NAME = "tf_efficientnet_lite0"
BN_EPS = 1e-3  # TensorFlow's BatchNorm epsilon (timm's BN_EPS_TF_DEFAULT)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000
# the ImageNet weights were trained on images scaled to [-1, 1]
PRETRAINED_CFG = {
    "architecture": NAME,
    "mean": (0.5, 0.5, 0.5),
    "std": (0.5, 0.5, 0.5),
    "first_conv": "conv_stem",
}

# one row per stage: (blocks, kernel, stride of the first block, expansion ratio, output channels);
# stage 0 is a depthwise-separable block, the rest inverted residuals (MBConv)
STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


def _feature_levels() -> list[dict]:
    """timm's feature levels: the output of every stage that the next stage downsamples, and the last."""
    levels, reduction = [], 2  # the stem has stride 2
    for index, (_, _, stride, _, channels) in enumerate(STAGES):
        reduction *= stride
        last = index == len(STAGES) - 1
        if last or STAGES[index + 1][2] > 1:
            levels.append(
                {"stage": index + 1, "reduction": reduction, "module": f"blocks.{index}", "num_chs": channels}
            )
    return levels


LEVELS = _feature_levels()
REDUCTIONS = [level["reduction"] for level in LEVELS]  # [2, 4, 8, 16, 32]


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding, computed from each input's size (timm's name).

    The output has ``ceil(size / stride)`` pixels; of an odd total padding, the extra pixel goes right and
    bottom.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, kernel, stride in zip(
            x.shape[-1:-3:-1], self.kernel_size[::-1], self.stride[::-1], strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]  # (left, right), then (top, bottom)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv2d(
    in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Conv2d:
    """ "same" padding: static and symmetric at stride 1 (odd kernels), dynamic at stride 2."""
    if stride == 1:
        return nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False
        )
    return Conv2dSame(in_channels, out_channels, kernel_size, stride, groups)


class BatchNormAct2d(nn.BatchNorm2d):
    """BatchNorm then ReLU6 (or nothing), keeping BatchNorm's own parameter names, as timm's class does."""

    def __init__(self, num_features: int, act: bool = True):
        super().__init__(num_features, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class DepthwiseSeparableConv(nn.Module):
    """Depthwise kxk conv, BN, ReLU6, then a pointwise projection and BN (no activation)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv_dw = conv2d(in_channels, in_channels, kernel_size, stride, groups=in_channels)
        self.bn1 = BatchNormAct2d(in_channels)
        self.conv_pw = conv2d(in_channels, out_channels, 1)
        self.bn2 = BatchNormAct2d(out_channels, act=False)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    """MBConv: pointwise expansion, depthwise kxk, pointwise linear projection; a residual at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expansion: int):
        super().__init__()
        mid = in_channels * expansion
        self.conv_pw = conv2d(in_channels, mid, 1)
        self.bn1 = BatchNormAct2d(mid)
        self.conv_dw = conv2d(mid, mid, kernel_size, stride, groups=mid)
        self.bn2 = BatchNormAct2d(mid)
        self.conv_pwl = conv2d(mid, out_channels, 1)
        self.bn3 = BatchNormAct2d(out_channels, act=False)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_skip else y


class FeatureInfo:
    """The returned levels' channels and strides, as timm's ``feature_info`` answers them."""

    def __init__(self, out_indices: tuple[int, ...]):
        self.out_indices = out_indices
        self.info = [dict(LEVELS[i], index=i) for i in range(len(LEVELS))]

    def get_dicts(self) -> list[dict]:
        return [self.info[i] for i in self.out_indices]

    def channels(self) -> list[int]:
        return [self.info[i]["num_chs"] for i in self.out_indices]

    def reduction(self) -> list[int]:
        return [self.info[i]["reduction"] for i in self.out_indices]

    def module_name(self) -> list[str]:
        return [self.info[i]["module"] for i in self.out_indices]


def _init_weights(model: nn.Module) -> None:
    """TensorFlow's EfficientNet initialisation, module by module in timm's order.

    Meta tensors hold no values: they are skipped (``normal_`` on them would import ``torch._dynamo``).
    """
    for module in model.modules():
        if getattr(module, "weight", None) is not None and module.weight.is_meta:
            continue
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0, math.sqrt(2.0 / fan_out))
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0's feature pyramid: ``forward`` returns the maps of ``out_indices``.

    Levels 0-4 are the outputs of stages 1, 2, 3, 5 and 7 (timm's ``blocks.0``, ``.1``, ``.2``, ``.4``,
    ``.6``) at strides 2, 4, 8, 16 and 32 with 16, 24, 40, 112 and 320 channels. Every block is built
    whatever the indices (so the ``state_dict`` is timm's), but the forward pass stops at the last one
    needed.
    """

    def __init__(self, out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)):
        super().__init__()
        indices = tuple(i % len(LEVELS) for i in out_indices)
        if not indices or any(not -len(LEVELS) <= i < len(LEVELS) for i in out_indices):
            raise ValueError(f"out_indices must be levels of 0..{len(LEVELS) - 1}, got {out_indices}")
        self.conv_stem = conv2d(3, STEM_CHANNELS, 3, stride=2)
        self.bn1 = BatchNormAct2d(STEM_CHANNELS)
        # timm's block builder creates a throwaway squeeze-excite (two 8->8 1x1 convs with bias) to probe
        # its signature; making the same draws keeps a seeded random model identical to timm's
        for _ in range(2):
            nn.Conv2d(8, 8, 1)
        stages, in_channels = [], STEM_CHANNELS
        for index, (repeats, kernel, stride, expansion, out_channels) in enumerate(STAGES):
            blocks = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                if index == 0:
                    blocks.append(DepthwiseSeparableConv(in_channels, out_channels, kernel, s))
                else:
                    blocks.append(InvertedResidual(in_channels, out_channels, kernel, s, expansion))
                in_channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.feature_info = FeatureInfo(indices)
        self.pretrained_cfg = dict(PRETRAINED_CFG)
        self._outputs = {LEVELS[i]["stage"] for i in indices}  # blocks after which a map is returned
        _init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.bn1(self.conv_stem(x))
        features = []
        for stage, blocks in enumerate(self.blocks, start=1):
            x = blocks(x)
            if stage in self._outputs:
                features.append(x)
                if len(features) == len(self._outputs):
                    break
        return features


def classifier_state_shapes() -> list[tuple[str, torch.Size]]:
    """Keys and shapes of timm's full ImageNet classifier ``tf_efficientnet_lite0``, in ``state_dict`` order.

    Its features (the modules above) come first, then the head the feature extractor leaves out: a 1x1
    conv to 1280 channels, its BatchNorm, and the 1000-class linear layer. Built on the meta device: no
    memory, no weights.
    """
    with torch.device("meta"):
        features = EfficientNetLite0Features()
        head = nn.ModuleDict(
            {
                "conv_head": nn.Conv2d(STAGES[-1][-1], HEAD_CHANNELS, 1, bias=False),
                "bn2": nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS),
                "classifier": nn.Linear(HEAD_CHANNELS, NUM_CLASSES),
            }
        )
    state = [*features.state_dict().items(), *head.state_dict().items()]
    return [(key, tensor.shape) for key, tensor in state]
