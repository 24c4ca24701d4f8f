"""The change model: Siamese backbone -> change encoder -> task heads (DESIGN.md section 5).

images [B, T, 3, H, W] --backbone (shared weights)--> levels of the first and last date
    --change encoder (last level)--> change tokens [B, N, D] --caption decoder--> caption
    levels + change tokens --mask head--> change-class logits [B, K, H, W]

A config with ``vocab_size > 0`` gets the caption decoder, one with ``classes`` the mask head; both heads
read the same change tokens, so one model captions and detects (MCI, Liu et al. 2024).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from changescope.errors import ChangescopeError
from changescope.models.backbones import Backbone
from changescope.models.config import ModelConfig
from changescope.models.encoders import ENCODERS, build_encoder
from changescope.models.encoders.layers import to_map
from changescope.models.heads.caption_decoder import CaptionDecoder
from changescope.models.heads.mask_head import ChangeMaskHead


@dataclass
class ChangeOutput:
    #: change tokens ``[B, N, D]`` (the caption decoder's memory)
    memory: Tensor
    #: teacher-forced caption logits ``[B, L, vocab]`` when tokens were given
    caption_logits: Tensor | None = None
    #: change-class logits ``[B, K, H, W]`` when the model has a mask head
    mask_logits: Tensor | None = None


class ChangeModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if 0 < config.vocab_size < 5:
            raise ValueError("config.vocab_size must count the 4 special tokens and at least one word")
        if not config.vocab_size and not config.classes:
            raise ValueError("a change model needs a caption vocabulary, mask classes, or both")
        self.config = config
        self.single_stream = getattr(ENCODERS.get(config.encoder), "single_stream", False)
        self.backbone = Backbone(
            config.backbone,
            pretrained=config.backbone_pretrained,
            out_indices=config.out_indices,
            in_chans=6 if self.single_stream else 3,
            frozen=config.backbone_frozen,
        )
        self.encoder = build_encoder(config.encoder, self.backbone.channels[-1], **config.encoder_kwargs)
        self.decoder = (
            CaptionDecoder(config.vocab_size, memory_dim=self.encoder.out_dim, **config.decoder_kwargs)
            if config.vocab_size
            else None
        )
        self.mask_head = (
            ChangeMaskHead(
                self.backbone.channels,
                len(config.classes),
                context_dim=self.encoder.out_dim,
                two_stream=not self.single_stream,
                **config.mask_head_kwargs,
            )
            if config.classes
            else None
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(t for t, head in (("caption", self.decoder), ("mask", self.mask_head)) if head)

    def require(self, task: str) -> None:
        if task not in self.tasks:
            what = {"caption": "caption decoder", "mask": "change-mask head"}[task]
            raise ChangescopeError(f"this model has no {what} (it was trained for: {', '.join(self.tasks)})")

    # -- features -----------------------------------------------------------------------------------

    def levels(self, images: Tensor) -> list[Tensor]:
        """Backbone levels of the first and last date, each ``[B, 2, C, h, w]`` (``[B, 1, ...]`` joint for a
        single-stream model), finest first."""
        if images.ndim != 5 or images.shape[1] < 2:
            raise ValueError(f"expected images [B, T>=2, 3, H, W], got {tuple(images.shape)}")
        before, after = images[:, 0], images[:, -1]
        if self.single_stream:
            return [f.unsqueeze(1) for f in self.backbone(torch.cat([before, after], dim=1))]
        levels_a, levels_b = self.backbone.forward_pair(before, after)
        return [torch.stack(pair, dim=1) for pair in zip(levels_a, levels_b, strict=True)]

    @property
    def can_cache_features(self) -> bool:
        """True when backbone features are fixed inputs: frozen weights and a two-stream encoder."""
        return self.backbone.frozen and not self.single_stream

    @torch.no_grad()
    def backbone_features(self, images: Tensor) -> list[Tensor]:
        """What :meth:`forward` needs from the backbone: every level with a mask head, else the last."""
        levels = self.levels(images)
        return levels if self.mask_head is not None else levels[-1:]

    # -- heads --------------------------------------------------------------------------------------

    def _tokens(self, levels: list[Tensor], images: Tensor | None) -> Tensor:
        last = levels[-1].float()
        if self.single_stream:
            pair = torch.cat([images[:, 0], images[:, -1]], dim=1)
            return self.encoder(last[:, 0], None, images=pair)
        return self.encoder(last[:, 0], last[:, 1])

    def forward(
        self,
        images: Tensor | None = None,
        tokens: Tensor | None = None,
        *,
        features: list[Tensor] | None = None,
        masks: bool = True,
    ) -> ChangeOutput:
        """Run the model on ``images`` ``[B, T, 3, H, W]`` in [0, 1], or on cached ``features``
        (:meth:`backbone_features` output, for a frozen backbone). ``tokens`` ``[B, L]`` (``<start>``
        first) adds teacher-forced caption logits; ``masks=False`` skips the mask head."""
        if (images is None) == (features is None):
            raise ValueError("pass images or features, not both")
        levels = self.levels(images) if features is None else features
        memory = self._tokens(levels, images)
        out = ChangeOutput(memory)
        if tokens is not None:
            self.require("caption")
            out.caption_logits = self.decoder(memory, tokens)
        if masks and self.mask_head is not None:
            size = images.shape[-2:] if images is not None else (self.config.image_size,) * 2
            h, w = levels[-1].shape[-2:]
            out.mask_logits = self.mask_head(levels, tuple(size), context=to_map(memory, h, w))
        return out

    @torch.no_grad()
    def generate(self, images: Tensor, **decoding) -> list[list[int]]:
        """Token ids per pair, no special tokens (``decoding``: beam_size, max_len, length_penalty, ...)."""
        self.require("caption")
        return self.decoder.generate(self(images, masks=False).memory, **decoding)

    @torch.no_grad()
    def predict_masks(self, images: Tensor) -> Tensor:
        """Change-class ids ``[B, H, W]`` at the input size."""
        self.require("mask")
        return self(images).mask_logits.argmax(dim=1)
