"""The change model: Siamese backbone -> change encoder -> task heads (DESIGN.md section 5).

images [B, T, 3, H, W] --backbone (shared weights)--> levels of the first and last date
    --change encoder (last level)--> change tokens [B, N, D] --caption decoder--> caption
    levels + change tokens --mask head--> change-class logits [B, K, H, W]
    levels + change tokens --change head--> change / no-change logit [B, H, W] (composed with the classes)
    question --question encoder--> tokens --cross attention to change tokens--> type + closed answer
        (free form: the caption decoder reads [change tokens, question tokens])
    query --same path--> FiLM on the mask head's fused map --> grounding mask [N, H, W]
    T dates --backbone, every date--> levels [B, T, C, h, w] --temporal head--> change logit per interval
        [B, T-1, H, W], composed with the pair heads' classes of each consecutive pair (:meth:`sequence`)

A config with ``vocab_size > 0`` gets the caption decoder, one with ``classes`` the mask head, one with
``answers`` the VQA head, one with ``grounding`` the grounding head; all read the same change tokens, so
one model captions, detects (MCI, Liu et al. 2024), answers and grounds.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from changescope.errors import ChangescopeError
from changescope.models.backbones import Backbone
from changescope.models.config import ModelConfig
from changescope.models.encoders import ENCODERS, build_encoder
from changescope.models.encoders.layers import to_map
from changescope.models.fusion import fold_batchnorm
from changescope.models.heads.caption_decoder import CaptionDecoder
from changescope.models.heads.gsd_probe import GsdProbe
from changescope.models.heads.mask_head import ChangeMaskHead, compose, upsample
from changescope.models.heads.query_heads import AnswerHead, GroundingHead, QueryFusion
from changescope.models.heads.retrieval_head import RetrievalHead
from changescope.models.heads.temporal_head import TemporalChangeHead
from changescope.models.question_encoder import build_question_encoder
from changescope.models.views import apply_view, check_views, invert_view

#: side of the probe pair that finds the batch norms to fold (``fold_batchnorm``): small, for a fast load
PROBE_SIZE = 64


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


#: inference precision -> autocast dtype (None: plain fp32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _autocast(method):
    """Run ``method`` under the model's inference autocast (``set_precision``); weights stay fp32."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.autocast():
            return method(self, *args, **kwargs)

    return wrapper


@dataclass
class ChangeOutput:
    #: change tokens ``[B, N, D]`` (the caption decoder's memory)
    memory: Tensor
    #: teacher-forced caption logits ``[B, L, vocab]`` when tokens were given
    caption_logits: Tensor | None = None
    #: change-class scores ``[B, K, H, W]`` when the model has a mask head (argmax = class id; with a change
    #: logit, :func:`~changescope.models.heads.mask_head.compose` of the two)
    mask_logits: Tensor | None = None
    #: the raw class logits and the change logit ``[B, H, W]`` (None without one), for the losses
    class_logits: Tensor | None = None
    change_logit: Tensor | None = None
    #: the mask head's fused change map ``[B, C, h, w]`` (what grounding reads), when asked for
    pixels: Tensor | None = None
    #: the last backbone level of the pair as given ``[B, S, C, h, w]`` (what a ChangeLLM reads beside the
    #: change tokens), when asked for
    last: Tensor | None = None
    #: which pairs the GSD probe sent to the coarse change head ``[B]`` bool, when it chose (no GSD given)
    coarse: Tensor | None = None


@dataclass
class SequenceOutput:
    #: change logit per interval ``[B, T-1, H, W]`` (interval i: date i -> date i + 1), from the temporal head
    change_logit: Tensor
    #: change-class scores per interval ``[B, T-1, K, H, W]``: the pair heads' classes of dates (i, i + 1)
    #: composed with ``change_logit`` (argmax = class id), when asked for and the model has a mask head
    mask_logits: Tensor | None = None
    #: change tokens of each consecutive pair ``[B * (T-1), N, D]`` (captions per interval)
    memory: Tensor | None = None


@dataclass
class QueryOutput:
    #: question-aware tokens ``[N, L, D]`` and their padding mask ``[N, L]`` (True = padding)
    tokens: Tensor
    pad: Tensor
    #: their masked mean ``[N, D]``
    pooled: Tensor
    #: which pair of the batch each query is about ``[N]``
    pair_index: Tensor


class ChangeModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if 0 < config.vocab_size < 5:
            raise ValueError("config.vocab_size must count the 4 special tokens and at least one word")
        if not (
            config.vocab_size
            or config.classes
            or config.answers
            or config.grounding
            or config.retrieval_dim
            or config.temporal_kwargs
        ):
            raise ValueError(
                "a change model needs a caption vocabulary, mask classes, answers, grounding, retrieval "
                "or a temporal head"
            )
        self.config = config
        self.precision = "fp32"
        #: batch norms folded for inference (``fold_batchnorm``); such a model is not saved
        self.folded = 0
        #: test-time views averaged for the change masks at inference (``set_tta``)
        self.tta = 1
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
            if config.classes or config.grounding
            else None
        )
        has_change_head = bool(config.change_head_kwargs and config.classes)
        self.change_head = self._new_change_head(config) if has_change_head else None
        # a second change head for coarse imagery (config.coarse_gsd): same architecture, its own weights
        self.coarse_change_head = (
            self._new_change_head(config) if self.change_head is not None and config.coarse_gsd else None
        )
        if config.gsd_probe and self.coarse_change_head is None:
            raise ValueError("config.gsd_probe picks between two change heads: it needs config.coarse_gsd")
        self.gsd_probe = GsdProbe(self.backbone.channels) if config.gsd_probe else None
        d_model = self.encoder.out_dim
        asks = bool(config.answers or config.grounding)
        reads_text = asks or config.retrieval_dim > 0
        self.question_encoder = (
            build_question_encoder(config.question_encoder, **config.question_kwargs) if reads_text else None
        )
        self.fusion = (
            QueryFusion(self.question_encoder.out_dim, d_model, **config.query_kwargs) if asks else None
        )
        self.answer_head = (
            AnswerHead(d_model, len(config.qtypes), len(config.answers)) if config.answers else None
        )
        self.grounding_head = GroundingHead(d_model, self.mask_head.channels) if config.grounding else None
        self.retrieval_head = (
            RetrievalHead(d_model, self.question_encoder.out_dim, config.retrieval_dim)
            if config.retrieval_dim
            else None
        )
        if config.temporal_kwargs and self.single_stream:
            raise ValueError(
                f"the temporal head needs per-date features; encoder {config.encoder} is single-stream"
            )
        self.temporal_head = (
            TemporalChangeHead(self.backbone.channels, **config.temporal_kwargs)
            if config.temporal_kwargs
            else None
        )
        if config.answers:
            allowed = torch.zeros(len(config.qtypes), len(config.answers), dtype=torch.bool)
            for qtype, ids in config.answer_types.items():
                allowed[config.qtypes.index(qtype), ids] = True
            self.register_buffer("allowed_answers", allowed, persistent=False)

    @property
    def tasks(self) -> tuple[str, ...]:
        heads = (
            ("caption", self.decoder),
            ("mask", self.config.classes),
            ("vqa", self.answer_head),
            ("grounding", self.grounding_head),
            ("retrieval", self.retrieval_head),
            ("sequence", self.temporal_head),
        )
        return tuple(t for t, head in heads if head)

    def require(self, task: str) -> None:
        if task not in self.tasks:
            what = {
                "caption": "caption decoder",
                "mask": "change-mask head",
                "vqa": "question-answering head",
                "grounding": "grounding head",
                "retrieval": "retrieval head",
                "sequence": "temporal (sequence) head",
            }[task]
            raise ChangescopeError(f"this model has no {what} (it was trained for: {', '.join(self.tasks)})")

    # -- precision ----------------------------------------------------------------------------------

    def set_precision(self, precision: str) -> ChangeModel:
        """Inference in ``precision``: 'fp32', 'bf16' (CPU AMX units, CUDA) or 'fp16' (CUDA). The weights stay
        fp32; matrix products and convolutions run under ``torch.autocast``, and every logit leaves in fp32.
        Training ignores it (Lightning has its own precision)."""
        if precision not in PRECISIONS:
            raise ChangescopeError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.precision = precision
        return self

    def _new_change_head(self, config: ModelConfig) -> ChangeMaskHead:
        return ChangeMaskHead(
            self.backbone.channels,
            0,
            context_dim=self.encoder.out_dim,
            two_stream=not self.single_stream,
            binary=True,
            **{k: v for k, v in config.change_head_kwargs.items() if k != "class_inputs"},
            class_inputs=len(config.classes) if config.change_head_kwargs.get("class_inputs") else 0,
        )

    def change_head_for(
        self, gsd: float | None, coarse: bool | None = None
    ) -> tuple[ChangeMaskHead | None, float]:
        """The change head and threshold that decide change for an input of ``gsd`` metres per pixel
        (None: unknown): the coarse head at or above ``config.coarse_gsd`` when the model has one; ``coarse``
        (a GSD probe's decision for a whole pair, :func:`~changescope.tasks.detection.head_for_pair`)
        picks it instead when the GSD is unknown."""
        if gsd is None and coarse is not None:
            coarse = coarse and self.coarse_change_head is not None
        else:
            coarse = self.coarse_change_head is not None and gsd is not None and gsd >= self.config.coarse_gsd
        if coarse:
            return self.coarse_change_head, self.config.coarse_change_threshold
        return self.change_head, self.config.change_threshold

    def change_head_name(self, gsd: float | None, coarse: bool | None = None) -> str | None:
        """Which head :meth:`change_head_for` picks, by its name: ``"change_head"``, ``"coarse_change_head"``,
        or None for a model without one (its class head's argmax decides change); ``coarse``: what the GSD
        probe chose for an input of unknown GSD (``ChangeOutput.coarse``)."""
        head = self.change_head_for(gsd, coarse)[0]
        if head is None:
            return None
        return "coarse_change_head" if head is self.coarse_change_head else "change_head"

    def coarse_rows(
        self, levels: list[Tensor], gsd: float | None, coarse: bool | None = None
    ) -> Tensor | None:
        """``[B]`` bool: the pairs of unknown GSD that the GSD probe takes for coarse imagery (their change is
        decided by the coarse head); None where the GSD or the head (``coarse``) is given, or the model has
        no probe, or trains."""
        if gsd is not None or coarse is not None or self.gsd_probe is None or self.training:
            return None
        return self.gsd_probe(levels) > 0

    def _change_logit(self, head: ChangeMaskHead, levels, context: Tensor, extra: Tensor | None) -> Tensor:
        return head.logits(head.decode(levels, context), extra)

    def _routed_change_logit(self, levels, context: Tensor, extra: Tensor | None, coarse: Tensor) -> Tensor:
        """The change logit of each row from the head the probe chose for it, the coarse rows shifted so
        that the fine head's threshold decides them as the coarse threshold would."""
        shift = _logit(self.config.change_threshold) - _logit(self.config.coarse_change_threshold)
        logit = None
        for head, rows, offset in (
            (self.change_head, ~coarse, 0.0),
            (self.coarse_change_head, coarse, shift),
        ):
            index = rows.nonzero()[:, 0]
            if len(index) == 0:
                continue
            part = self._change_logit(
                head, [f[index] for f in levels], context[index], None if extra is None else extra[index]
            )
            if logit is None:
                logit = part.new_zeros(len(coarse), *part.shape[1:])
            logit[index] = part + offset
        return logit

    def fold_batchnorm(self) -> int:
        """Fold the batch norms into the convolutions before them, for inference (``models/fusion.py``:
        the same outputs up to rounding, one pass over every activation map less); returns how many were
        folded. Found on one small probe pair through both change heads (at the model's own size where a
        backbone takes no other); a folded model cannot be saved."""
        device = next(self.parameters()).device
        gsds = [None] + ([self.config.coarse_gsd] if self.coarse_change_head is not None else [])
        for size in dict.fromkeys((PROBE_SIZE, self.config.image_size)):
            generator = torch.Generator().manual_seed(0)
            images = torch.rand(1, 2, 3, size, size, generator=generator).to(device)

            def probe(images=images):
                levels = self.levels(images)
                return levels, [self._pass(images, None, levels, True, False, gsd) for gsd in gsds]

            try:
                self.folded = fold_batchnorm(self, probe)
            except (RuntimeError, ValueError):  # e.g. a ViT backbone of one input size
                continue
            return self.folded
        return 0

    def set_tta(self, views: int) -> ChangeModel:
        """Test-time augmentation: average the change masks of inference over ``views`` flips and turns of
        each pair (1, 2, 4, 8; ``models/views.py``), about ``views`` times the mask work for a steadier
        map. Captions, answers and the change tokens come from the pair as given; training ignores it."""
        self.tta = check_views(views)
        return self

    def autocast(self):
        dtype = PRECISIONS[self.precision]
        if dtype is None or self.training:
            return contextlib.nullcontext()
        device = next(self.parameters()).device.type
        return torch.autocast(device_type=device, dtype=dtype)

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
        # the change encoder stays fp32 under any precision: its tokens drive greedy decoding, where bf16
        # rounding flips word choices, and it is a small part of the work (RESULTS.md, "Precision")
        with torch.autocast(device_type=last.device.type, enabled=False):
            if self.single_stream:
                pair = torch.cat([images[:, 0], images[:, -1]], dim=1).float()
                return self.encoder(last[:, 0], None, images=pair)
            return self.encoder(last[:, 0], last[:, 1])

    @_autocast
    def forward(
        self,
        images: Tensor | None = None,
        tokens: Tensor | None = None,
        *,
        features: list[Tensor] | None = None,
        masks: bool = True,
        pixels: bool = False,
        gsd: float | None = None,
        last: bool = False,
        coarse: bool | None = None,
    ) -> ChangeOutput:
        """Run the model on ``images`` ``[B, T, 3, H, W]`` in [0, 1], or on cached ``features``
        (:meth:`backbone_features` output, for a frozen backbone). ``tokens`` ``[B, L]`` (``<start>``
        first) adds teacher-forced caption logits; ``masks=False`` skips the mask head; ``pixels=True``
        keeps the fused change map for :meth:`ground`; ``gsd`` (metres per pixel of the input, when known)
        picks the change head (:meth:`change_head_for`; unknown: each pair's by the GSD probe, where the
        model has one, unless ``coarse`` gives it); ``last=True`` keeps the last backbone level."""
        if (images is None) == (features is None):
            raise ValueError("pass images or features, not both")
        has_masks = self.mask_head is not None and self.mask_head.classifier is not None
        if self.tta > 1 and not self.training and has_masks and images is not None and masks:
            if tokens is None:
                return self._forward_views(images, pixels, gsd, last, coarse)
        return self._pass(images, tokens, features, masks, pixels, gsd, last, coarse)

    def _pass(
        self, images, tokens, features, masks, pixels, gsd=None, last=False, coarse=None
    ) -> ChangeOutput:
        levels = self.levels(images) if features is None else features
        memory = self._tokens(levels, images)
        out = ChangeOutput(memory, last=levels[-1] if last else None)
        if tokens is not None:
            self.require("caption")
            out.caption_logits = self.decoder(memory, tokens)
        run_mask = masks and self.mask_head is not None and self.mask_head.classifier is not None
        if run_mask or (pixels and self.mask_head is not None):
            h, w = levels[-1].shape[-2:]
            fused = self.mask_head.decode(levels, context=to_map(memory, h, w))
            out.pixels = fused if pixels else None
            if run_mask:
                size = images.shape[-2:] if images is not None else (self.config.image_size,) * 2
                low = self.mask_head.logits(fused)
                out.class_logits = upsample(low, tuple(size))
                # a tensor: the probe's per-pair choice, made on the first test-time view
                chosen = isinstance(coarse, Tensor)
                head, threshold = self.change_head_for(gsd, None if chosen else coarse)
                if head is not None:
                    # the class head's log-probabilities are an input, not a target: no gradient into it
                    extra = low.detach().float().log_softmax(1) if head.class_inputs else None
                    context = to_map(memory, h, w)
                    out.coarse = coarse if chosen else self.coarse_rows(levels, gsd, coarse)
                    if out.coarse is None:
                        logit = self._change_logit(head, levels, context, extra)
                    else:
                        logit = self._routed_change_logit(levels, context, extra, out.coarse)
                    out.change_logit = upsample(logit, tuple(size))[:, 0]
                out.mask_logits = compose(out.class_logits, out.change_logit, threshold)
        if self.precision != "fp32" and not self.training:  # what leaves the model is fp32
            for name in (
                "memory",
                "pixels",
                "class_logits",
                "change_logit",
                "mask_logits",
                "caption_logits",
                "last",
            ):
                value = getattr(out, name)
                if value is not None:
                    setattr(out, name, value.float())
        return out

    def _forward_views(
        self, images: Tensor, pixels: bool, gsd: float | None, last: bool, coarse
    ) -> ChangeOutput:
        """:meth:`forward` with the mask logits averaged over ``self.tta`` views of each pair, one view at a
        time (one batch of all views cost more than the views did apart: 4.8x for 4, from its
        full-resolution logits); the change tokens (and the fused map, ``pixels``, and the last level,
        ``last``) are the first view's, the pair as given, and so is the GSD probe's choice of head."""
        first = classes = change = None
        for k in range(self.tta):
            turned = apply_view(images, k)
            out = self._pass(turned, None, None, True, pixels and k == 0, gsd, last and k == 0, coarse)
            if k == 0 and out.coarse is not None:
                coarse = out.coarse
            # class scores average as log-probabilities, so no view's logit scale outweighs another's
            view = invert_view(out.class_logits.float().log_softmax(1), k)
            classes = view if classes is None else classes + view
            if out.change_logit is not None:
                view = invert_view(out.change_logit.float(), k)
                change = view if change is None else change + view
            first = out if k == 0 else first
        result = ChangeOutput(
            first.memory,
            class_logits=classes / self.tta,
            pixels=first.pixels,
            last=first.last,
            coarse=first.coarse,
        )
        result.change_logit = None if change is None else change / self.tta
        # routed rows are in the fine threshold's frame (``_routed_change_logit``)
        threshold = self.change_head_for(gsd, None if isinstance(coarse, Tensor) else coarse)[1]
        result.mask_logits = compose(result.class_logits, result.change_logit, threshold)
        return result

    # -- sequences of T dates ------------------------------------------------------------------------

    def date_levels(self, images: Tensor) -> list[Tensor]:
        """Backbone levels of every date of ``images`` ``[B, T, 3, H, W]``, each ``[B, T, C, h, w]``
        (one backbone pass over the B * T images), finest first."""
        if images.ndim != 5 or images.shape[1] < 2:
            raise ValueError(f"expected images [B, T>=2, 3, H, W], got {tuple(images.shape)}")
        b, t = images.shape[:2]
        return [f.reshape(b, t, *f.shape[1:]) for f in self.backbone(images.flatten(0, 1))]

    @_autocast
    def sequence(
        self, images: Tensor | None = None, *, features: list[Tensor] | None = None, classes: bool = True
    ) -> SequenceOutput:
        """Change per interval of ``images`` ``[B, T, 3, H, W]`` (T >= 2, at the model's size) or of their
        :meth:`date_levels` ``features``: the temporal head's change logit; with ``classes`` also the pair
        heads on each consecutive pair (one pass over the B * (T-1) pairs of the levels already computed)
        for the class of each change and its caption tokens."""
        self.require("sequence")
        if (images is None) == (features is None):
            raise ValueError("pass images or features, not both")
        levels = self.date_levels(images) if features is None else features
        size = tuple(images.shape[-2:]) if images is not None else (self.config.image_size,) * 2
        b, t = levels[0].shape[:2]
        change = upsample(self.temporal_head(levels), size).float()
        out = SequenceOutput(change)
        if not classes:
            return out
        if self.mask_head is not None and self.mask_head.classifier is not None:
            pairs = [torch.stack([f[:, :-1], f[:, 1:]], dim=2).flatten(0, 1) for f in levels]
            pair = self.forward(features=pairs)
            class_logits, out.memory = pair.class_logits.float(), pair.memory
        else:  # a temporal head alone: binary change (``sequence_classes``)
            class_logits = torch.zeros(b * (t - 1), 2, *size, device=change.device)
        scores = compose(class_logits, change.flatten(0, 1), self.config.temporal_threshold)
        out.mask_logits = scores.reshape(b, t - 1, *scores.shape[1:])
        return out

    @property
    def sequence_classes(self) -> list[str]:
        """The class names of :meth:`sequence`'s ``mask_logits``: the mask head's, else background and
        change."""
        return list(self.config.classes) or ["background", "change"]

    # -- questions and grounding queries --------------------------------------------------------------

    @_autocast
    def read_queries(self, memory: Tensor, texts: list[str], pair_index: Tensor) -> QueryOutput:
        """Encode questions / queries and let them attend to the change tokens of their pair
        (``pair_index[i]`` = row of ``memory`` that ``texts[i]`` is about)."""
        if self.fusion is None:
            raise ChangescopeError("this model reads no questions (it has no VQA or grounding head)")
        text, pad = self.question_encoder(texts, device=memory.device)
        tokens, pooled = self.fusion(text, pad, memory[pair_index])
        return QueryOutput(tokens.float(), pad, pooled.float(), pair_index)

    @_autocast
    def answer_logits(self, query: QueryOutput) -> tuple[Tensor, Tensor]:
        """Question-type logits ``[N, types]`` and closed-answer logits ``[N, answers]``."""
        self.require("vqa")
        return self.answer_head(query.pooled)

    @_autocast
    def embed_pairs(self, memory: Tensor) -> Tensor:
        """Unit retrieval embeddings ``[B, retrieval_dim]`` (fp32) of pairs from their change tokens."""
        self.require("retrieval")
        return self.retrieval_head.embed_pairs(memory)

    @_autocast
    def embed_texts(self, texts: list[str]) -> Tensor:
        """Unit retrieval embeddings ``[N, retrieval_dim]`` (fp32) of sentences (captions, search queries),
        comparable by dot product with :meth:`embed_pairs`."""
        self.require("retrieval")
        device = self.retrieval_head.query.device
        tokens, pad = self.question_encoder(texts, device=device)
        return self.retrieval_head.embed_texts(tokens, pad)

    def pick_answers(self, type_logits: Tensor, answer_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per question: the predicted type, the best answer among those seen with that type (-1 for a type
        with none, e.g. "open") and a confidence = P(type) x P(answer | answers of the type)."""
        type_probs = type_logits.float().softmax(-1)
        type_conf, types = type_probs.max(-1)
        allowed = self.allowed_answers[types]
        scores = answer_logits.float().masked_fill(~allowed, float("-inf")).softmax(-1).nan_to_num(0.0)
        answer_conf, answers = scores.max(-1)
        answers = torch.where(allowed.any(-1), answers, torch.full_like(answers, -1))
        return types, answers, type_conf * answer_conf

    def free_form_memory(self, memory: Tensor, query: QueryOutput) -> tuple[Tensor, Tensor]:
        """What the caption decoder reads to answer in free form: the pair's change tokens followed by the
        question-aware tokens, and the mask of valid positions (``[N, M + L]``, True = attend)."""
        self.require("caption")
        rows = memory[query.pair_index]
        keep = torch.ones(rows.shape[:2], dtype=torch.bool, device=rows.device)
        return torch.cat([rows, query.tokens], dim=1), torch.cat([keep, ~query.pad], dim=1)

    def ground(self, out: ChangeOutput, query: QueryOutput, size: tuple[int, int]) -> Tensor:
        """Grounding logits ``[N, *size]`` (> 0: the pixel is what the query asks for)."""
        self.require("grounding")
        if out.pixels is None:
            raise ValueError("run forward(..., pixels=True) before grounding")
        with self.autocast():
            return self.grounding_head(out.pixels[query.pair_index], query.pooled, size).float()

    @torch.no_grad()
    def generate(self, images: Tensor, **decoding) -> list[list[int]]:
        """Token ids per pair, no special tokens (``decoding``: beam_size, max_len, length_penalty, ...)."""
        self.require("caption")
        return self.generate_from(self(images, masks=False).memory, **decoding)

    @torch.no_grad()
    def generate_from(self, memory: Tensor, **decoding) -> list[list[int]]:
        """Token ids per row of ``memory`` (change tokens, or :meth:`free_form_memory` with its
        ``memory_mask``), no special tokens. Decoding stays fp32 whatever the precision: greedy and beam
        choices flip on bf16 rounding (measured: CIDEr-D moved by 2.6 points), the decoder is a small part of
        the time, and the backbone, where bf16 pays, runs before it."""
        self.require("caption")
        return self.decoder.generate(memory, **decoding)

    @torch.no_grad()
    def predict_masks(self, images: Tensor) -> Tensor:
        """Change-class ids ``[B, H, W]`` at the input size."""
        self.require("mask")
        return self(images).mask_logits.argmax(dim=1)
