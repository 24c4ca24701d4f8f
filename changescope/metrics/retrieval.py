"""Retrieval metrics: Recall@1/5/10 and MRR from a similarity matrix, text-to-pair and pair-to-text.

A query's rank is the rank of its best-scoring positive. Ties are broken pessimistically: every
non-positive item that scores at least as high as that positive is ranked above it, so a model that gives
every item the same score gets the worst rank, not a lucky one. Other positives never push the rank down.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

KS = (1, 5, 10)


def _matrix(similarity: Any) -> np.ndarray:
    if isinstance(similarity, torch.Tensor):
        similarity = similarity.detach().cpu().double().numpy()
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2:
        raise ValueError(f"similarity must be a [queries, items] matrix, got shape {sim.shape}")
    if not np.isfinite(sim).all():
        raise ValueError("similarity holds NaN or infinite values")
    return sim


def _positive_mask(positives: Sequence[int | Iterable[int]], shape: tuple[int, int]) -> np.ndarray:
    queries, items = shape
    if len(positives) != queries:
        raise ValueError(f"{len(positives)} positive sets for {queries} queries")
    mask = np.zeros(shape, dtype=bool)
    for query, pos in enumerate(positives):
        indices = [pos] if isinstance(pos, (int, np.integer)) else list(pos)
        if not indices:
            raise ValueError(f"query {query} has no positive item")
        for index in indices:
            if not 0 <= int(index) < items:
                raise ValueError(f"query {query}: positive item {index} is outside 0..{items - 1}")
            mask[query, int(index)] = True
    return mask


def retrieval_scores(similarity: Any, positives: Sequence[int | Iterable[int]]) -> dict[str, Any]:
    """``{"R@1", "R@5", "R@10", "MRR", "n"}`` (fractions) for ``similarity[q, i]`` (higher = more similar).

    ``positives[q]`` is the index, or a set of indices, of the items that answer query ``q``.
    """
    sim = _matrix(similarity)
    if sim.shape[0] == 0:
        raise ValueError("no queries to score")
    is_pos = _positive_mask(positives, sim.shape)
    best = np.where(is_pos, sim, -np.inf).max(axis=1, keepdims=True)
    ranks = 1 + ((sim >= best) & ~is_pos).sum(axis=1)
    out: dict[str, Any] = {f"R@{k}": float((ranks <= k).mean()) for k in KS}
    out["MRR"] = float((1.0 / ranks).mean())
    out["n"] = int(ranks.size)
    return out


def bidirectional(similarity: Any, text_to_pair: Sequence[int]) -> dict[str, dict[str, Any]]:
    """Text-to-pair and pair-to-text scores from one ``[texts, pairs]`` similarity matrix.

    ``text_to_pair[t]`` is the pair that text ``t`` describes. Pair-to-text queries every pair that has at
    least one text (all of its texts are positives); pairs without a text are left out of that direction.
    """
    sim = _matrix(similarity)
    texts, pairs = sim.shape
    if len(text_to_pair) != texts:
        raise ValueError(f"{len(text_to_pair)} text-to-pair links for {texts} texts")
    owners: dict[int, set[int]] = {}
    for text, pair in enumerate(text_to_pair):
        if not 0 <= int(pair) < pairs:
            raise ValueError(f"text {text} links to pair {pair}, outside 0..{pairs - 1}")
        owners.setdefault(int(pair), set()).add(text)
    described = sorted(owners)
    return {
        "text_to_pair": retrieval_scores(sim, [int(p) for p in text_to_pair]),
        "pair_to_text": retrieval_scores(sim.T[described], [owners[p] for p in described]),
    }


def rsicrc_scores(similarity: Any, relevant: Any, ks: Sequence[int] = (1, 3, 5, 10)) -> dict[str, Any]:
    """RSICRC's own text -> pair numbers (Ferrod et al. 2024, ``src/eval.py``), to compare with that paper.

    ``relevant[q, i]``: item i is relevant to query q (RSICRC: the same label, where every no-change pair
    shares one label, or an identical caption). For each k: ``P@k`` = relevant items in the top k / k,
    ``R@k`` = relevant items in the top k / all relevant items of the query (recall over the relevant set,
    NOT the hit rate :func:`retrieval_scores` calls R@k), ``MRR@k`` = 1 / rank of the first relevant item
    when it is in the top k, else 0; each averaged over queries. Ties keep item order (a stable sort), as a
    FAISS flat search returns them.
    """
    sim = _matrix(similarity)
    rel = np.asarray(relevant, dtype=bool)
    if rel.shape != sim.shape:
        raise ValueError(f"relevance {rel.shape} does not match similarity {sim.shape}")
    if not rel.any(axis=1).all():
        raise ValueError("every query needs at least one relevant item")
    order = np.argsort(-sim, axis=1, kind="stable")
    hits = np.take_along_axis(rel, order, axis=1)
    first = hits.argmax(axis=1) + 1  # rank of the first relevant item
    total = rel.sum(axis=1)
    out: dict[str, Any] = {"n": int(sim.shape[0])}
    for k in ks:
        found = hits[:, :k].sum(axis=1)
        out[f"P@{k}"] = float((found / k).mean())
        out[f"R@{k}"] = float((found / total).mean())
        out[f"MRR@{k}"] = float(np.where(first <= k, 1.0 / first, 0.0).mean())
    return out
