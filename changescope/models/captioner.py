"""The change captioner: Siamese backbone -> change encoder -> caption decoder (DESIGN.md section 5).

images [B, T, 3, H, W] --backbone (shared weights)--> last-level maps of the first and last date
    --change encoder--> change tokens [B, N, D] --decoder--> caption token logits / generated ids
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from changescope.models.backbones import Backbone
from changescope.models.config import ModelConfig
from changescope.models.encoders import ENCODERS, build_encoder
from changescope.models.heads.caption_decoder import CaptionDecoder


class ChangeCaptioner(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.vocab_size < 5:
            raise ValueError("config.vocab_size must count the 4 special tokens and at least one word")
        self.config = config
        single_stream = getattr(ENCODERS.get(config.encoder), "single_stream", False)
        self.backbone = Backbone(
            config.backbone,
            pretrained=config.backbone_pretrained,
            out_indices=config.out_indices,
            in_chans=6 if single_stream else 3,
            frozen=config.backbone_frozen,
        )
        self.encoder = build_encoder(config.encoder, self.backbone.channels[-1], **config.encoder_kwargs)
        self.decoder = CaptionDecoder(
            config.vocab_size, memory_dim=self.encoder.out_dim, **config.decoder_kwargs
        )

    def encode(self, images: Tensor) -> Tensor:
        """Change tokens of the first and last date: images ``[B, T, 3, H, W]`` in [0, 1]."""
        if images.ndim != 5 or images.shape[1] < 2:
            raise ValueError(f"expected images [B, T>=2, 3, H, W], got {tuple(images.shape)}")
        before, after = images[:, 0], images[:, -1]
        if self.encoder.single_stream:
            pair = torch.cat([before, after], dim=1)
            return self.encoder(self.backbone(pair)[-1], None, images=pair)
        levels_a, levels_b = self.backbone.forward_pair(before, after)
        return self.encoder(levels_a[-1], levels_b[-1])

    @property
    def can_cache_features(self) -> bool:
        """True when backbone features are fixed inputs: frozen weights and a two-stream encoder."""
        return self.backbone.frozen and not self.encoder.single_stream

    @torch.no_grad()
    def backbone_features(self, images: Tensor) -> Tensor:
        """Last-level maps of the first and last date, ``[B, 2, C, h, w]`` (what ``encode`` feeds on)."""
        levels_a, levels_b = self.backbone.forward_pair(images[:, 0], images[:, -1])
        return torch.stack([levels_a[-1], levels_b[-1]], dim=1)

    def encode_features(self, features: Tensor) -> Tensor:
        """Change tokens from ``backbone_features`` output (for training on cached frozen features)."""
        return self.encoder(features[:, 0].float(), features[:, 1].float())

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        """Teacher forcing: logits ``[B, L, vocab]`` for ``tokens`` ``[B, L]`` (``<start>`` first)."""
        return self.decoder(self.encode(images), tokens)

    @torch.no_grad()
    def generate(self, images: Tensor, **decoding) -> list[list[int]]:
        """Token ids per pair, no special tokens (``decoding``: beam_size, max_len, length_penalty, ...)."""
        return self.decoder.generate(self.encode(images), **decoding)
