"""Batch norm folded into the convolution before it, for inference.

In inference mode a ``BatchNorm2d`` is a per-channel affine map, so after a convolution it can be written
into that convolution's weights and bias: the output is the same up to rounding, and one full pass over
every activation map is gone. On a CPU without bf16 units the shipped default's EfficientNet-Lite0 runs
about 1.45x faster in fp32 this way (``benchmarks/fold_speed.py``, RESULTS.md).

Which norm follows which convolution is found by running the model once on a probe input and recording,
through forward hooks, the norm layers whose input *is* (the same tensor object) a convolution's output, so
only pairs that really run back to back are folded, whatever the module names or order. A convolution whose
output also goes elsewhere (a skip connection taken before the norm) would change that other use, so the
probe's outputs are compared before and after; if they differ, every fold is undone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

#: the largest difference between the probe's outputs before and after folding that counts as rounding
TOLERANCE = 1e-3


def _pairs(model: nn.Module, probe: Callable[[], object]):
    """(convolution, the norm that reads its output) pairs seen while running ``probe``, each once, and
    the probe's outputs."""
    # the outputs are kept alive through the probe, so that no later tensor can reuse a recorded id
    produced: dict[int, tuple[nn.Conv2d, Tensor]] = {}
    found: dict[int, tuple[nn.Conv2d, nn.BatchNorm2d]] = {}
    hooks = []

    def after_conv(module, inputs, output):
        produced[id(output)] = (module, output)

    def before_norm(module, inputs):
        conv, _ = produced.get(id(inputs[0]), (None, None))
        if conv is not None and conv.out_channels == module.num_features:
            found.setdefault(id(module), (conv, module))

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            hooks.append(module.register_forward_hook(after_conv))
        elif isinstance(module, nn.BatchNorm2d) and module.track_running_stats:
            hooks.append(module.register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            outputs = probe()
    finally:
        for hook in hooks:
            hook.remove()
    # a convolution feeding two different norms cannot carry both
    convs = [conv for conv, _ in found.values()]
    return [(conv, norm) for conv, norm in found.values() if convs.count(conv) == 1], outputs


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    shift = norm.bias.detach() - norm.running_mean * scale
    bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
    weight = conv.weight.detach() * scale.reshape(-1, *([1] * (conv.weight.ndim - 1)))
    memory = torch.channels_last if conv.weight.is_contiguous(memory_format=torch.channels_last) else None
    conv.weight = nn.Parameter(
        weight.contiguous(memory_format=memory or torch.contiguous_format), requires_grad=False
    )
    conv.bias = nn.Parameter(bias, requires_grad=False)


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What a norm layer still does once folded: the activation (and dropout) of a norm + act layer, as
    timm's and ``efficientnet_lite``'s ``BatchNormAct2d`` carry them; else nothing."""
    parts = [getattr(norm, name, None) for name in ("drop", "act")]
    parts = [part for part in parts if isinstance(part, nn.Module) and not isinstance(part, nn.Identity)]
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


def _replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for parent in model.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, new)


def _max_difference(before, after) -> float:
    if isinstance(before, Tensor):
        return (before.float() - after.float()).abs().max().item() if before.numel() else 0.0
    if isinstance(before, (list, tuple)):
        return max((_max_difference(b, a) for b, a in zip(before, after, strict=True)), default=0.0)
    if isinstance(before, dict):
        return max((_max_difference(before[k], after[k]) for k in before), default=0.0)
    if hasattr(before, "__dataclass_fields__"):
        return max(
            (
                _max_difference(getattr(before, k), getattr(after, k))
                for k in before.__dataclass_fields__
                if getattr(before, k) is not None
            ),
            default=0.0,
        )
    return 0.0


def fold_batchnorm(model: nn.Module, probe: Callable[[], object], tolerance: float = TOLERANCE) -> int:
    """Fold every inference-mode ``BatchNorm2d`` of ``model`` into the convolution that feeds it, in place;
    ``probe()`` runs the model once (any input) and returns its outputs. Returns how many were folded (0
    when the model is training, or when folding moved the probe's outputs by more than ``tolerance``: then
    the model is left as it was). A folded model is for inference only: its ``state_dict`` no longer has
    the norms' keys, so it must not be saved."""
    if model.training:
        return 0
    pairs, before = _pairs(model, probe)
    if not pairs:
        return 0
    undo = []
    for conv, norm in pairs:
        original = conv.weight, conv.bias
        _fold(conv, norm)
        after = _after_norm(norm)
        _replace(model, norm, after)
        undo.append((conv, original, norm, after))
    with torch.no_grad():
        moved = _max_difference(before, probe())
    if moved <= tolerance:
        return len(pairs)
    for conv, (weight, bias), norm, after in undo:  # the norms back, the convolutions as they were
        _replace(model, after, norm)
        conv.weight, conv.bias = weight, bias
    return 0
