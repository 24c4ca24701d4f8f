"""A causal language model that sees the change: change tokens projected into its embedding space.

The LLaVA recipe (Liu et al. 2023, "Visual Instruction Tuning"; LLaVA-1.5's two-layer GELU projector),
applied to a pair of dates as the change-captioning LLMs do it (CCExpert, ChangeChat, TEOChat): a frozen
change model (any changescope model with a two-stream encoder, the shipped default by default) reads the
pair once and gives

* its **change tokens** (the change encoder's memory, ``[B, h*w, d]``: what the caption decoder reads), and
* each **date's** last backbone level and their **difference**,

each pooled to ``grid x grid`` tokens (4 x 4: 64 visual tokens in all; fewer tokens, a faster LM);

a projector maps them to the LM's width, each kind with a learned type embedding, and they take the place
of the ``<image>`` placeholder in the first user turn. The LM (any Hugging Face causal LM: SmolLM2-135M
from the packaged GGUF here, Qwen2.5 / LLaMA for users with their weights) is tuned with LoRA (``peft``),
merged before export, so a saved model is a plain LM and a projector: ``config.json`` (this config and the
LM's own), ``model.safetensors`` (projector and LM), ``vision/`` (the change model, ``save_pretrained``) and
``tokenizer/``. Loading needs no training code and no peft.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

#: the placeholder the first user turn holds; the visual tokens replace it
IMAGE_TOKEN = "<image>"
#: the kinds of visual tokens, in the order they enter the LM
TOKEN_KINDS = ("change", "before", "after", "difference")


@dataclass
class ChangeLLMConfig:
    """Everything that rebuilds a :class:`ChangeLLM` besides the weights."""

    #: the LM's Hugging Face config (``PretrainedConfig.to_dict()``) and where it came from
    lm_config: dict[str, Any]
    lm_source: str = ""
    #: widths the projector maps from: the change encoder's ``d_model`` and the last backbone level's channels
    memory_dim: int = 256
    level_dim: int = 320
    #: the change tokens and each date's last level are pooled to grid x grid tokens each
    grid: int = 4
    #: LoRA settings the model was tuned with (already merged into the saved LM weights)
    lora: dict[str, Any] = field(default_factory=dict)
    #: the change tokens come from the LLM's own, tuned copy of the vision model's change encoder (saved
    #: under ``encoder.``); the vision model and its heads keep the original
    tune_encoder: bool = False
    system_prompt: str = "You compare two remote-sensing images of one place, an earlier and a later one."
    max_new_tokens: int = 48
    architecture: str = "change-llm"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ChangeLLMConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def _mlp(width_in: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, width_out), nn.GELU(), nn.Linear(width_out, width_out))


def _splice(rows: Tensor, insert: Tensor, at: list[int]) -> Tensor:
    """Row i of ``rows`` ``[B, L, ...]`` with ``insert[i]`` ``[V, ...]`` put before its position ``at[i]``."""
    return torch.stack([torch.cat([rows[i, :a], insert[i], rows[i, a:]]) for i, a in enumerate(at)])


class ChangeProjector(nn.Module):
    """Change tokens and pooled date tokens -> ``[B, V, hidden]`` LM input embeddings."""

    def __init__(self, memory_dim: int, level_dim: int, hidden: int, grid: int):
        super().__init__()
        self.grid = grid
        self.change = _mlp(memory_dim, hidden)
        self.dates = _mlp(level_dim, hidden)
        self.kind = nn.Parameter(torch.zeros(len(TOKEN_KINDS), hidden))
        nn.init.normal_(self.kind, std=0.02)

    def forward(self, memory: Tensor, last_level: Tensor) -> Tensor:
        """``memory`` ``[B, N, memory_dim]``; ``last_level`` ``[B, 2, level_dim, h, w]`` (before, after)."""
        b, t, c = last_level.shape[:3]
        pooled = F.adaptive_avg_pool2d(last_level.flatten(0, 1), self.grid)  # [B*2, C, g, g]
        pooled = pooled.view(b, t, c, -1).transpose(-1, -2)  # [B, 2, g*g, C]
        before, after = pooled[:, 0], pooled[:, -1]
        dates = self.dates(torch.stack([before, after, after - before], dim=1))  # [B, 3, g*g, hidden]
        side = math.isqrt(memory.shape[1])
        if side * side == memory.shape[1] and side > self.grid:  # a square map of change tokens: pool it
            grid = memory.transpose(1, 2).reshape(b, -1, side, side)
            memory = F.adaptive_avg_pool2d(grid, self.grid).flatten(2).transpose(1, 2)
        parts = [self.change(memory) + self.kind[0]]
        parts += [dates[:, i] + self.kind[i + 1] for i in range(3)]
        return torch.cat(parts, dim=1)


class ChangeLLM(nn.Module):
    """``vision`` (a frozen :class:`~changescope.models.change_model.ChangeModel`), ``projector``, ``lm``;
    with ``config.tune_encoder``, ``encoder``: a trainable copy of the vision model's change encoder."""

    def __init__(self, config: ChangeLLMConfig, vision: nn.Module, lm: nn.Module):
        super().__init__()
        self.config, self.vision, self.lm = config, vision, lm
        hidden = lm.get_input_embeddings().embedding_dim
        self.projector = ChangeProjector(config.memory_dim, config.level_dim, hidden, config.grid)
        # a copy, so the vision model's own heads (its masks, the citations) keep the tokens they learned on
        self.encoder = self._encoder_copy(vision) if config.tune_encoder else None
        self.vision.requires_grad_(False).eval()

    @staticmethod
    def _encoder_copy(vision: nn.Module) -> nn.Module:
        """A trainable change encoder like the vision model's, with its weights. A vision model loaded for
        inference has its batch norms folded (``ChangeModel.fold_batchnorm``): the copy is then built
        unfolded from the config, and its saved weights are loaded after (``load_change_llm``)."""
        if not getattr(vision, "folded", 0):
            return copy.deepcopy(vision.encoder).requires_grad_(True)
        from changescope.models.encoders import build_encoder

        config = vision.config
        return build_encoder(config.encoder, vision.backbone.channels[-1], **config.encoder_kwargs)

    def train(self, mode: bool = True) -> ChangeLLM:
        super().train(mode)
        self.vision.eval()  # frozen: its dropout and batch norm stay in inference mode
        return self

    @torch.no_grad()
    def vision_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``images`` ``[B, 2, 3, H, W]`` in [0, 1] at the vision model's size -> (change tokens, last level),
        what :meth:`visual_embeds` projects; fixed inputs, so a training loop may cache them."""
        with self.vision.autocast():  # as the vision model's own forward pass runs it (detect's masks)
            levels = self.vision.levels(images)
        memory = self.vision(features=levels, masks=False).memory
        return memory.float(), levels[-1].float()

    def visual_embeds(self, images: Tensor | None = None, features: tuple[Tensor, Tensor] | None = None):
        memory, last = self.vision_features(images) if features is None else features
        if self.encoder is not None:  # the tuned copy reads each date's last level (fp32, as the vision's)
            memory = self.encoder(last[:, 0].float(), last[:, 1].float())
        embeds = self.projector(memory, last)
        return embeds.to(self.lm.get_input_embeddings().weight.dtype)

    def _inputs(self, batch: dict[str, Tensor], visual: Tensor) -> tuple[Tensor, Tensor]:
        """Token embeddings with the visual tokens spliced in at each row's ``image_at``, and the mask."""
        at = batch["image_at"].tolist()
        text = self.lm.get_input_embeddings()(batch["input_ids"])
        mask = batch["attention_mask"]
        seen = mask.new_ones(visual.shape[:2])
        return _splice(text, visual, at), _splice(mask, seen, at)

    def forward(self, batch: dict[str, Tensor], features: tuple[Tensor, Tensor] | None = None):
        """Loss on ``batch`` (``ChangeLLMProcessor.collate``: right-padded ``input_ids``, ``attention_mask``,
        ``labels`` with -100 outside the assistant's turns, ``image_at``, ``images``). Returns ``(loss,
        logits, targets)``: logits only at the positions that predict a labelled token (the LM head over a
        49 k vocabulary is a fifth of the work; the prompt and visual positions need none)."""
        visual = self.visual_embeds(batch.get("images"), features)
        embeds, mask = self._inputs(batch, visual)
        ignore = batch["labels"].new_full(visual.shape[:2], -100)
        targets = _splice(batch["labels"], ignore, batch["image_at"].tolist())[:, 1:]
        keep = (targets != -100).any(0).nonzero()[:, 0]
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=keep).logits
        targets = targets[:, keep]
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return loss, logits, targets

    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, Tensor],
        features: tuple[Tensor, Tensor] | None = None,
        max_new_tokens: int | None = None,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
    ) -> Tensor:
        """Greedy continuations of left-padded prompts (``ChangeLLMProcessor.prompts``), batched, with the
        LM's KV cache; returns the new token ids ``[B, L]`` (padded after each row's end)."""
        visual = self.visual_embeds(batch.get("images"), features)
        embeds, mask = self._inputs(batch, visual)
        return self.lm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens or self.config.max_new_tokens,
            do_sample=False,
            num_beams=1,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
