"""Transformer caption decoder with a key/value cache and batched beam search.

The change-captioning papers (RSICCformer, Chg2Cap, RSCaMa, MCI) all describe the change with one
transformer decoder layer (width 512-2048, 8 heads, dropout 0.1) that cross-attends to the change
tokens of an encoder. This is that decoder in plain PyTorch, with pre-norm blocks, fixed sinusoidal
positions (so captions longer than ``max_len`` still get positions) and tied input/output embeddings.

Decoding is what the reference code makes slow: it decodes one pair at a time and re-runs the whole
prefix each step. Here ``generate`` decodes a batch at once and, with ``use_cache``, computes the
memory's cross-attention keys/values once per call and appends one position of self-attention
keys/values per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """The fixed sine/cosine position table of "Attention Is All You Need", ``[length, dim]``."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float64) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table.float()


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    batch, length, dim = x.shape
    return x.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    batch, num_heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, num_heads * head_dim)


class LayerCache:
    """What one decoder layer reuses between the incremental steps of one ``generate`` call.

    The cross-attention keys/values depend only on the memory, so they are computed once; the
    self-attention keys/values grow by one position per step.
    """

    def __init__(self, memory_keys: Tensor, memory_values: Tensor):
        self.memory_kv = (memory_keys, memory_values)
        self.keys: Tensor | None = None
        self.values: Tensor | None = None

    def append(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Add this step's keys/values ``[rows, heads, 1, head_dim]``; return all positions so far."""
        if self.keys is not None:
            if keys.size(2) != 1:
                raise ValueError("after the first step, incremental decoding takes one token at a time")
            keys = torch.cat([self.keys, keys], dim=2)
            values = torch.cat([self.values, values], dim=2)
        self.keys, self.values = keys, values
        return keys, values

    def reorder(self, index: Tensor) -> None:
        """Follow the beams: row ``i`` now continues the hypothesis that was in row ``index[i]``.

        The memory keys/values (one row per sample) are not touched: beams only move within a sample.
        """
        self.keys = self.keys.index_select(0, index)
        self.values = self.values.index_select(0, index)


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: LayerCache | None = None) -> Tensor:
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if cache is not None:
            k, v = cache.append(k, v)
        # one new query (an incremental step) may see every cached position; a whole sequence needs the
        # causal mask (only the first step feeds more than one token, and it starts at position 0)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=q.size(2) > 1)
        return self.resid_drop(self.proj(_merge_heads(y)))


class CrossAttention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_drop = nn.Dropout(dropout)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values of the memory ``[B, N, d_model]`` -> two ``[B, heads, N, head_dim]``."""
        k, v = self.kv(memory).chunk(2, dim=-1)
        return _split_heads(k, self.num_heads), _split_heads(v, self.num_heads)

    def forward(
        self, x: Tensor, memory_kv: tuple[Tensor, Tensor], memory_mask: Tensor | None = None
    ) -> Tensor:
        """``x [rows, L, d]`` attends to the ``memory_kv`` of ``B`` samples; ``rows`` = ``B`` x beams.

        The beams of a sample are consecutive rows reading the same memory, so they are folded into the
        query positions of that sample rather than repeating the memory's keys/values for every beam.
        """
        q = _split_heads(self.q(x), self.num_heads)  # [B * beams, H, L, hd]
        beams, length = q.size(0) // memory_kv[0].size(0), q.size(2)
        q = q.unflatten(0, (-1, beams)).transpose(1, 2).flatten(2, 3)  # [B, H, beams * L, hd]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, *memory_kv, attn_mask=memory_mask, dropout_p=p)
        y = y.unflatten(2, (beams, length)).transpose(1, 2).flatten(0, 1)  # [B * beams, H, L, hd]
        return self.resid_drop(self.proj(_merge_heads(y)))


class MLP(nn.Module):
    def __init__(self, d_model: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(d_model, ffn_dim)
        self.proj = nn.Linear(ffn_dim, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.proj(F.gelu(self.fc(x))))


class DecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the change tokens, MLP."""

    def __init__(self, d_model: int, num_heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = CausalSelfAttention(d_model, num_heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.cross_attn = CrossAttention(d_model, num_heads, dropout)
        self.norm3 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, ffn_dim, dropout)

    def forward(
        self,
        x: Tensor,
        memory_kv: tuple[Tensor, Tensor],
        memory_mask: Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> Tensor:
        x = x + self.self_attn(self.norm1(x), cache)
        x = x + self.cross_attn(self.norm2(x), memory_kv, memory_mask)
        return x + self.mlp(self.norm3(x))


class CaptionDecoder(nn.Module):
    """Caption decoder over change tokens: teacher forcing (``forward``) and decoding (``generate``).

    ``max_len`` counts ``<start>`` and ``<end>``, as ``Vocabulary.encode(max_len=...)`` does, so
    ``generate`` emits at most ``max_len - 1`` tokens after ``<start>``. ``memory_mask`` is a bool
    ``[B, N]`` tensor, True for a real memory token (the Hugging Face ``attention_mask`` convention).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 512,
        num_layers: int = 1,
        num_heads: int = 8,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
        max_len: int = 42,
        memory_dim: int | None = None,
        pad_id: int = 0,
        unk_id: int = 1,
        start_id: int = 2,
        end_id: int = 3,
        tie_embeddings: bool = True,
    ):
        super().__init__()
        specials = (pad_id, unk_id, start_id, end_id)
        if len(set(specials)) != 4 or not all(0 <= i < vocab_size for i in specials):
            raise ValueError(f"special ids {specials} must be distinct and inside the vocabulary")
        if vocab_size < 5:
            raise ValueError("the vocabulary needs at least one word besides the 4 special tokens")
        if d_model % num_heads or d_model % 2:
            raise ValueError(f"d_model {d_model} must be even and divisible by num_heads {num_heads}")
        if max_len < 2:
            raise ValueError("max_len must leave room for <start> and <end>")
        self.vocab_size, self.d_model, self.max_len = vocab_size, d_model, max_len
        self.memory_dim = d_model if memory_dim is None else memory_dim
        self.pad_id, self.unk_id, self.start_id, self.end_id = specials

        self.memory_proj = (
            nn.Identity() if self.memory_dim == d_model else nn.Linear(self.memory_dim, d_model)
        )
        self.memory_norm = nn.LayerNorm(d_model)
        self.embed = nn.Embedding(vocab_size, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            DecoderBlock(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        # tokens a caption never contains; <end> is allowed, it stops the caption
        self.register_buffer("banned_ids", torch.tensor([pad_id, unk_id, start_id]), persistent=False)
        self.apply(self._init_weights)
        # token vectors ~ N(0, 1/d) scaled by sqrt(d) on input: unit variance, like the position table,
        # and unit-variance logits at initialisation through the (tied) output head
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        if tie_embeddings:
            self.head.weight = self.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=d_model**-0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, memory: Tensor, tokens: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        """Teacher forcing. memory [B, N, memory_dim or d_model] (change tokens), tokens [B, L] starting with
        <start>, padded with pad_id -> logits [B, L, vocab_size].

        Padding must be on the right: the causal mask then keeps it out of every real position.
        """
        if tokens.dim() != 2 or tokens.size(0) != memory.size(0):
            raise ValueError(f"tokens must be [B, L] with B = {memory.size(0)}, got {tuple(tokens.shape)}")
        memory, mask = self._prepare_memory(memory, memory_mask)
        memory_kvs = [block.cross_attn.memory_kv(memory) for block in self.blocks]
        return self._decode(tokens, memory_kvs, mask)

    def loss(self, memory: Tensor, tokens: Tensor, memory_mask: Tensor | None = None) -> Tensor:
        """Mean next-token cross-entropy of right-padded captions ``<start> w1 .. wn <end> <pad>..``."""
        logits = self(memory, tokens[:, :-1], memory_mask)
        return F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=self.pad_id)

    def log_probs(self, logits: Tensor) -> Tensor:
        """Next-token log-probabilities over the tokens a caption may hold (pad/unk/start masked out).

        Decoding ranks hypotheses by sums of these, so a caption's score can be recomputed from
        ``forward``.
        """
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # sums of half floats drift
        return logits.index_fill(-1, self.banned_ids, float("-inf")).log_softmax(-1)

    def _prepare_memory(self, memory: Tensor, memory_mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
        if memory.dim() != 3 or memory.size(-1) != self.memory_dim:
            raise ValueError(f"memory must be [B, N, {self.memory_dim}], got {tuple(memory.shape)}")
        memory = self.memory_norm(self.memory_proj(memory))
        if memory_mask is None:
            return memory, None
        if memory_mask.shape != memory.shape[:2]:
            raise ValueError(
                f"memory_mask must be [B, N] = {tuple(memory.shape[:2])}, got {tuple(memory_mask.shape)}"
            )
        memory_mask = memory_mask.bool()
        if not memory_mask.any(dim=1).all():
            raise ValueError("memory_mask hides every memory token of a sample")
        return memory, memory_mask[:, None, None, :]  # broadcast over heads and queries

    def _positions(self, start: int, length: int) -> Tensor:
        end = start + length
        if end <= self.positions.size(0):
            return self.positions[start:end]
        # beyond the table built for max_len: the sinusoids are defined for any position
        return sinusoidal_positions(end, self.d_model)[start:].to(self.positions)

    def _decode(
        self,
        tokens: Tensor,
        memory_kvs: list[tuple[Tensor, Tensor]],
        memory_mask: Tensor | None,
        caches: list[LayerCache] | None = None,
        start: int = 0,
    ) -> Tensor:
        x = self.embed(tokens) * math.sqrt(self.d_model) + self._positions(start, tokens.size(1))
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, memory_kvs[i], memory_mask, None if caches is None else caches[i])
        return self.head(self.norm(x))

    @torch.no_grad()
    def generate(
        self,
        memory: Tensor,
        beam_size: int = 1,
        max_len: int | None = None,
        length_penalty: float = 1.0,
        use_cache: bool = True,
        memory_mask: Tensor | None = None,
    ) -> list[list[int]]:
        """Greedy (beam_size=1) or batched beam search. Returns per sample the token ids AFTER <start>,
        without <end> and padding. Never emits pad/start/unk (their logits are masked), so decoded captions
        never carry special tokens.

        Call ``eval()`` first: dropout stays on in training mode. A caption scores its summed
        log-probability divided by ``len ** length_penalty`` (GNMT / Hugging Face), ``len`` counting the
        generated tokens with ``<end>``; a caption still open after ``max_len - 1`` tokens is kept as it is.
        """
        max_len = self.max_len if max_len is None else max_len
        if beam_size < 1 or max_len < 2:
            raise ValueError(f"need beam_size >= 1 and max_len >= 2, got {beam_size} and {max_len}")
        if memory.size(0) == 0:
            return []
        state = _GenerationState(self, memory, memory_mask, beam_size, use_cache)
        if beam_size == 1:
            return self._greedy(state, memory.size(0), max_len - 1)
        return self._beam_search(state, memory.size(0), beam_size, max_len - 1, length_penalty)

    def _greedy(self, state: _GenerationState, batch: int, steps: int) -> list[list[int]]:
        tokens = torch.full((batch, 1), self.start_id, device=state.device)
        score = torch.zeros(batch, dtype=state.dtype, device=state.device)
        done = torch.zeros(batch, dtype=torch.bool, device=state.device)
        for _ in range(steps):
            # rank (running score + log p) exactly as beam search does, so beam_size=1 is bit-identical
            candidates = score[:, None] + self.log_probs(state.next_logits(tokens))
            score, token = candidates.max(dim=-1)  # ties: the lowest token id
            token = token.masked_fill(done, self.pad_id)
            tokens = torch.cat([tokens, token[:, None]], dim=1)
            done |= token == self.end_id
            if done.all():
                break
        return [self._strip(ids) for ids in tokens[:, 1:].tolist()]

    def _strip(self, ids: list[int]) -> list[int]:
        for i, token in enumerate(ids):
            if token in (self.end_id, self.pad_id):
                return ids[:i]
        return ids

    def _beam_search(
        self, state: _GenerationState, batch: int, beams: int, steps: int, length_penalty: float
    ) -> list[list[int]]:
        """Beam search over ``batch x beams`` rows (row ``b * beams + k``), all samples at once.

        Each sample has ``beams`` slots. Every step, the live hypotheses' extensions are ranked by
        summed log-probability (all have the same length, so the length penalty does not change the
        order) and the best ones fill the slots that are still open; one ending in ``<end>`` is finished
        and keeps its slot (the classic captioning beam search of Show, Attend and Tell). So
        ``beams=1`` is exactly greedy, and a beam as wide as the number of possible captions is
        exhaustive. A sample stops when all its slots are finished or when no live hypothesis can
        beat its best finished one; the best finished hypothesis (ties: the first found) is returned.
        """
        V, device, inf = self.vocab_size, state.device, float("-inf")
        tokens = torch.full((batch * beams, 1), self.start_id, device=device)
        # one live beam per sample to begin with, so the first step's beams are distinct
        scores = torch.full((batch, beams), inf, dtype=state.dtype, device=device)
        scores[:, 0] = 0.0
        n_finished = torch.zeros(batch, dtype=torch.long, device=device)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
        rank = torch.arange(beams, device=device)
        row0 = torch.arange(batch, device=device)[:, None] * beams
        for step in range(steps):
            log_p = self.log_probs(state.next_logits(tokens)).view(batch, beams, V)
            candidates = (scores[:, :, None] + log_p).view(batch, beams * V)
            # a stable sort keeps ties in index order (lower beam, then lower token id): deterministic
            top, index = candidates.sort(dim=1, descending=True, stable=True)
            top, index = top[:, :beams], index[:, :beams]
            taken = (rank < beams - n_finished[:, None]) & top.isfinite()
            token = index % V
            ends = taken & ((token == self.end_id) | (step == steps - 1))
            source = (row0 + index // V).view(-1)
            tokens = torch.cat([tokens.index_select(0, source), token.view(-1, 1)], dim=1)
            state.reorder(source)
            self._collect(finished, tokens, ends, top, step + 1, length_penalty)
            n_finished += ends.sum(dim=1)
            scores = top.masked_fill(~taken | ends, inf)
            settled = self._settled(scores, finished, step + 1, steps, length_penalty)
            if settled.all():
                break
            scores.masked_fill_(settled[:, None], inf)
        return [max(hyps, key=lambda h: h[0])[1] for hyps in finished]

    def _collect(
        self,
        finished: list[list[tuple[float, list[int]]]],
        tokens: Tensor,
        ends: Tensor,
        top: Tensor,
        length: int,
        length_penalty: float,
    ) -> None:
        beams = ends.size(1)
        for b, k in ends.nonzero().tolist():
            ids = tokens[b * beams + k, 1:].tolist()
            if ids[-1] == self.end_id:
                ids.pop()
            finished[b].append((top[b, k].item() / length**length_penalty, ids))

    @staticmethod
    def _settled(
        scores: Tensor, finished: list[list[tuple[float, list[int]]]], length: int, steps: int, alpha: float
    ) -> Tensor:
        """Per sample: can no live hypothesis (``scores``, -inf when not live) still beat the best finished?

        Log-probabilities are <= 0, so a live score can only fall. With ``alpha > 0`` a longer caption
        divides it by more, so the best it can still reach is its score at the longest length; with
        ``alpha <= 0`` it is its score at the next step. A tie cannot beat: the first one found wins.
        """
        best = torch.tensor([max((h[0] for h in hyps), default=-math.inf) for hyps in finished])
        final_length = steps if alpha > 0 else length + 1
        bound = scores.double().cpu() / final_length**alpha
        return (bound.max(dim=1).values <= best).to(scores.device)


class _GenerationState:
    """One ``generate`` call's prefixes -> next-token logits, with or without the key/value cache.

    Rows are ``sample * beams + beam``.
    """

    def __init__(
        self, model: CaptionDecoder, memory: Tensor, memory_mask: Tensor | None, beams: int, use_cache: bool
    ):
        self.model = model
        # hypothesis scores: the dtype of ``model.log_probs``
        self.device, self.dtype = memory.device, torch.promote_types(model.embed.weight.dtype, torch.float32)
        self.caches: list[LayerCache] | None = None
        if use_cache:
            memory, mask = model._prepare_memory(memory, memory_mask)
            # the memory's keys/values, once per generate call and sample; the beams share them
            self.caches = [LayerCache(*block.cross_attn.memory_kv(memory)) for block in model.blocks]
            self.mask = mask
        else:
            self.memory = memory.repeat_interleave(beams, dim=0)
            self.mask = None if memory_mask is None else memory_mask.repeat_interleave(beams, dim=0)

    def next_logits(self, tokens: Tensor) -> Tensor:
        """Logits ``[rows, vocab]`` for the token after each prefix ``tokens [rows, t]``."""
        if self.caches is None:
            # the research-code pattern: re-run the whole prefix, memory projection included, every step
            return self.model(self.memory, tokens, self.mask)[:, -1]
        memory_kvs = [cache.memory_kv for cache in self.caches]
        last = tokens[:, -1:]
        return self.model._decode(last, memory_kvs, self.mask, self.caches, start=tokens.size(1) - 1)[:, -1]

    def reorder(self, index: Tensor) -> None:
        if self.caches is not None:
            for cache in self.caches:
                cache.reorder(index)
