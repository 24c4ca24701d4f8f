"""Text <-> image-pair retrieval: a dual encoder over the change tokens and the question encoder's text.

Following RSICRC (Ferrod, Di Caro, Ienco, 2024: attention pooling with one learned query turns the
bi-temporal tokens into the pair embedding; InfoNCE in both directions), on changescope's shared parts:

* pair side: one learned query attends to the change encoder's tokens (both dates and their difference
  are in them), then a linear projection; L2-normalised;
* text side: the question encoder's token features (frozen all-MiniLM-L6-v2 by default, mean-pooled over
  the words as sentence-transformers pools it), then a two-layer projection; L2-normalised;
* a learned temperature (CLIP's ``logit_scale``, initialised at 1 / 0.07, clamped at 100).

No-change pairs: every "no change" pair is relevant to every other one and to any no-change sentence (as
RSICRC labels them all -1), so the loss counts them as positives of each other, never as negatives; pairs
whose drawn captions are the same sentence are positives of each other too. Where RSICRC differs: its
text side is a CoCa-style unimodal decoder and its backbone RemoteCLIP; here the text encoder is the one
the VQA and grounding heads already read.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RetrievalHead(nn.Module):
    def __init__(self, memory_dim: int, text_dim: int, dim: int = 256, num_heads: int = 4):
        super().__init__()
        self.dim = dim
        self.query = nn.Parameter(torch.randn(1, 1, memory_dim))
        self.norm = nn.LayerNorm(memory_dim)
        self.pool = nn.MultiheadAttention(memory_dim, num_heads, batch_first=True)
        # the pooled change tokens of all pairs share a large common part: centred and scaled over the
        # pairs (batch statistics in training, running ones after), their differences lead from the first
        # step; with a LayerNorm here every pair started at cosine 0.99 and training sat in that collapse
        self.pair_proj = nn.Sequential(nn.BatchNorm1d(memory_dim), nn.Linear(memory_dim, dim))
        self.text_proj = nn.Sequential(
            nn.LayerNorm(text_dim), nn.Linear(text_dim, text_dim), nn.GELU(), nn.Linear(text_dim, dim)
        )
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def embed_pairs(self, memory: Tensor) -> Tensor:
        """Change tokens ``[B, N, D]`` -> unit pair embeddings ``[B, dim]``."""
        memory = self.norm(memory)
        pooled, _ = self.pool(self.query.expand(memory.shape[0], -1, -1), memory, memory, need_weights=False)
        norm, proj = self.pair_proj
        x = pooled[:, 0]
        if self.training and len(x) == 1:  # one pair has no batch statistics: use the running ones
            x = F.batch_norm(
                x, norm.running_mean, norm.running_var, norm.weight, norm.bias, False, 0.0, norm.eps
            )
        else:
            x = norm(x)
        return F.normalize(proj(x).float(), dim=-1)

    def embed_texts(self, tokens: Tensor, pad: Tensor) -> Tensor:
        """Text token features ``[N, L, E]`` with their padding mask (True = padding) -> ``[N, dim]``."""
        keep = (~pad).unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * keep).sum(1) / keep.sum(1).clamp(min=1)
        return F.normalize(self.text_proj(mean).float(), dim=-1)

    def scale(self) -> Tensor:
        return self.logit_scale.clamp(max=math.log(100)).exp()


def relevance(changed: Tensor, texts: list[str] | None = None) -> Tensor:
    """``[B, B]`` bool: pair j is a right answer for pair i's text. Itself; every no-change pair for a
    no-change pair; and a pair whose text is the same sentence."""
    same = torch.eye(len(changed), dtype=torch.bool, device=changed.device)
    unchanged = ~changed.bool()
    same |= unchanged[:, None] & unchanged[None, :]
    if texts is not None:
        keys = [" ".join(t.lower().split()) for t in texts]
        index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        ids = torch.tensor([index[k] for k in keys], device=changed.device)
        same |= ids[:, None] == ids[None, :]
    return same


def retrieval_loss(pairs: Tensor, texts: Tensor, positives: Tensor, scale: Tensor) -> Tensor:
    """Symmetric multi-positive InfoNCE: ``texts[i]`` describes ``pairs[i]``; ``positives[i, j]`` marks every
    pair j that also answers text i (and, transposed, every text that describes pair j)."""
    logits = scale * texts @ pairs.T
    masked = logits.masked_fill(~positives, float("-inf"))
    text_to_pair = torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)
    pair_to_text = torch.logsumexp(logits, 0) - torch.logsumexp(masked, 0)
    return (text_to_pair.mean() + pair_to_text.mean()) / 2


def sentence_embeddings(text_encoder: nn.Module, texts: list[str], device=None) -> Tensor:
    """Unit sentence embeddings of the text encoder itself (mean-pooled token features, as
    sentence-transformers pools all-MiniLM-L6-v2), with no trained projection: the caption-embedding
    baseline compares a pair's generated caption with a query in this space."""
    tokens, pad = text_encoder(texts, device=device)
    keep = (~pad).unsqueeze(-1).to(tokens.dtype)
    return F.normalize(((tokens * keep).sum(1) / keep.sum(1).clamp(min=1)).float(), dim=-1)
