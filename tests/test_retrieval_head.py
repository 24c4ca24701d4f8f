"""The retrieval head, its loss and metrics: no-change pairs are each other's positives, never negatives;
RSICRC's own definitions next to the standard hit-rate ones."""

import numpy as np
import pytest
import torch

from changescope.metrics.accumulators import RetrievalAccumulator
from changescope.metrics.retrieval import retrieval_scores, rsicrc_scores
from changescope.models.heads.retrieval_head import RetrievalHead, relevance, retrieval_loss


def test_relevance_marks_self_every_no_change_pair_and_identical_sentences():
    changed = torch.tensor([True, False, True, False])
    rel = relevance(changed, ["a road", "no change", "A  road", "nothing changed"])
    expected = torch.tensor(
        [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]], dtype=torch.bool
    )  # 0 and 2 share a sentence, 1 and 3 are both unchanged
    assert torch.equal(rel, expected) and torch.equal(rel, rel.T)


def test_loss_ignores_no_change_pairs_as_negatives():
    torch.manual_seed(0)
    pairs = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    texts = pairs.clone()
    texts[3] = pairs[1]  # text 3 (unchanged) looks exactly like pair 1 (unchanged too)
    changed = torch.tensor([True, False, True, False])
    scale = torch.tensor(10.0)
    with_rule = retrieval_loss(pairs, texts, relevance(changed), scale)
    plain = retrieval_loss(pairs, texts, torch.eye(4, dtype=torch.bool), scale)
    assert with_rule < plain  # the plain loss punishes text 3 for matching another no-change pair


def test_loss_is_minimal_when_embeddings_align():
    torch.manual_seed(0)
    pairs = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    eye = torch.eye(6, dtype=torch.bool)
    aligned = retrieval_loss(pairs, pairs, eye, torch.tensor(50.0))
    shuffled = retrieval_loss(pairs, pairs.roll(1, 0), eye, torch.tensor(50.0))
    assert aligned < 0.01 < shuffled


def test_head_embeddings_are_unit_vectors_and_trainable():
    head = RetrievalHead(memory_dim=32, text_dim=24, dim=16)
    memory, tokens = torch.randn(3, 10, 32), torch.randn(3, 5, 24)
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[0, 3:] = True
    p, t = head.embed_pairs(memory), head.embed_texts(tokens, pad)
    assert p.shape == t.shape == (3, 16)
    assert torch.allclose(p.norm(dim=-1), torch.ones(3)) and torch.allclose(t.norm(dim=-1), torch.ones(3))
    padded = tokens.clone()
    padded[0, 3:] = 99.0  # padding must not move the text embedding
    assert torch.allclose(head.embed_texts(padded, pad)[0], t[0], atol=1e-6)
    retrieval_loss(p, t, torch.eye(3, dtype=torch.bool), head.scale()).backward()
    assert head.query.grad is not None and head.logit_scale.grad is not None


def test_rsicrc_recall_is_over_the_relevant_set_not_a_hit_rate():
    sim = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.9, 0.3]])
    rel = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], dtype=bool)
    got = rsicrc_scores(sim, rel, ks=(1, 3))
    assert got["P@1"] == pytest.approx(1.0)  # both queries' top item is relevant
    assert got["R@1"] == pytest.approx((1 / 3 + 1) / 2)  # query 0 has 3 relevant items
    assert got["P@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)  # top 3: items 0, 1, 2 and 2, 3, 1
    assert got["MRR@1"] == pytest.approx(1.0)
    hit = retrieval_scores(sim, [set(np.flatnonzero(r)) for r in rel])
    assert hit["R@1"] == pytest.approx(1.0)  # the hit rate calls both queries solved


def _accumulated(flags, shards=1):
    rng = np.random.default_rng(0)
    n = len(flags)
    pairs = rng.normal(size=(n, 8)).astype(np.float32)
    pairs /= np.linalg.norm(pairs, axis=1, keepdims=True)
    texts = [[f"caption {i}", f"another {i}"] if flags[i] else ["no change"] for i in range(n)]
    vectors = np.concatenate([np.repeat(pairs[i : i + 1], len(t), 0) for i, t in enumerate(texts)])
    accs = [RetrievalAccumulator() for _ in range(shards)]
    start = 0
    for i in range(n):
        k = len(texts[i])
        accs[i % shards].update(
            [f"p{i}"], pairs[i : i + 1], [texts[i]], vectors[start : start + k], [flags[i]]
        )
        start += k
    for other in accs[1:]:
        accs[0].merge(other)
    return accs[0]


def test_accumulator_scores_perfect_embeddings_perfectly_and_merges():
    flags = [True, False, True, True, False, True]
    whole = _accumulated(flags).compute()
    assert whole["text_to_pair"]["R@1"] == 1.0 and whole["pair_to_text"]["R@1"] == 1.0
    assert whole["pairs"] == 6 and whole["texts"] == 10
    assert _accumulated(flags, shards=3).compute() == whole
    sub = _accumulated(flags).compute(exclude_unchanged=True)
    assert sub["pairs"] == 4 and sub["excluded_unchanged"]
    # a no-change query has every no-change pair as relevant: R@k over the relevant set is 1 / 2 at k = 1
    assert whole["rsicrc"]["R@1"] < 1.0 == whole["rsicrc"]["P@1"]


def test_one_pair_in_training_uses_the_running_statistics():
    head = RetrievalHead(memory_dim=16, text_dim=8, dim=4).train()
    assert head.embed_pairs(torch.randn(1, 5, 16)).shape == (1, 4)  # no "more than 1 value" error
    assert head.embed_pairs(torch.randn(3, 5, 16)).shape == (3, 4)
