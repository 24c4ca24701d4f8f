"""Retrieval by description on real pairs: a model's text -> pair ranking, chance and a caption baseline.

The real labelled pairs of ``../shared/realdata`` (the held-out splits of ``real_change.REAL_SETS``) have
change masks, not captions. Each pair is cut into tiles of the model's size at its own resolution; each
tile gets a description written from its label mask by the sentence writer inference uses
(``tasks.data.describe_mask``: how many changed areas, where the largest is), or "there is no
difference" when its label holds no object: the same sentences the retrieval head's real training tiles get
(``benchmarks/mixes/retrieval.yaml``, ``describe: true``), from the datasets' train splits. The
descriptions are the queries, the tiles the gallery (all
datasets pooled). A tile is relevant to a query when its own description is the same sentence (so every
no-change tile answers every no-change query, and tiles described alike answer each other).

Scores (``metrics.retrieval.retrieval_scores``, hit rate R@k and MRR): the model's retrieval head; the
caption-embedding baseline (the model's own caption of each tile and the query, both as plain MiniLM
sentence embeddings); and chance (the expected score of a random ranking, computed exactly from each
query's number of relevant tiles).

    python benchmarks/retrieval_quality.py --model MODEL [--realdata ../shared/realdata]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from changescope.data.mix import tile_starts
from changescope.data.readers import open_dataset
from changescope.data.sample import IGNORE_INDEX
from changescope.metrics.retrieval import retrieval_scores
from changescope.models.heads.retrieval_head import sentence_embeddings
from changescope.tasks.data import describe_mask
from changescope.tasks.inference import Decoding, load


def tiles(realdata: Path, size: int):
    """``(set name, tile pair [2, 3, size, size], label tile [size, size])`` for every mostly labelled tile
    (``IGNORE_INDEX`` where unlabelled); ``benchmarks/llm_change.py`` asks its questions of the same tiles."""
    from real_change import REAL_SETS

    for name, folder, fmt, split, _ in REAL_SETS:
        dataset = open_dataset(realdata / folder, split, fmt)
        for index in range(len(dataset)):
            sample = dataset[index]
            image, mask = sample["image"], sample["mask"]
            h, w = mask.shape
            if h < size or w < size:
                continue
            for y in tile_starts(h, size, size):
                for x in tile_starts(w, size, size):
                    label = mask[y : y + size, x : x + size]
                    if (label == IGNORE_INDEX).float().mean() > 0.5:
                        continue
                    yield name, image[..., y : y + size, x : x + size], label


def chance(relevant: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Expected hit-rate R@k and MRR of a uniformly random ranking, from each query's relevant count."""
    n = relevant.shape[1]
    out = {f"R@{k}": 0.0 for k in ks}
    out["MRR"] = 0.0
    for r in relevant.sum(axis=1):
        for k in ks:
            out[f"R@{k}"] += 1 - math.comb(n - r, k) / math.comb(n, k)
        # P(first relevant at rank i) = C(n - i, r - 1) / C(n, r)
        out["MRR"] += sum(math.comb(n - i, r - 1) / math.comb(n, r) / i for i in range(1, n - r + 2))
    return {k: v / len(relevant) for k, v in out.items()}


@torch.inference_mode()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--realdata", type=Path, default=Path("../shared/realdata"))
    parser.add_argument("--json", default=None, help="also write the scores here")
    args = parser.parse_args()

    model, processor, _ = load(args.model)
    model.require("retrieval")
    names, pairs, texts = [], [], []
    for name, pair, label in tiles(args.realdata, processor.image_size):
        names.append(name)
        pairs.append(pair)
        texts.append(describe_mask(label))
    vectors, captions = [], []
    for start in range(0, len(pairs), 32):
        out = model(torch.stack(pairs[start : start + 32]), masks=False)
        vectors.append(model.embed_pairs(out.memory))
        if model.decoder is not None:
            captions += processor.decode(model.generate_from(out.memory, **Decoding().kwargs()))
    gallery = torch.cat(vectors).numpy()
    queries = sorted(set(texts))  # each distinct description once
    relevant = np.array([[t == q for t in texts] for q in queries])
    positives = [set(np.flatnonzero(r)) for r in relevant]
    rows = {"model": retrieval_scores(model.embed_texts(queries).numpy() @ gallery.T, positives)}
    if captions:
        plain = sentence_embeddings(model.question_encoder, queries + captions).numpy()
        rows["caption baseline"] = retrieval_scores(
            plain[: len(queries)] @ plain[len(queries) :].T, positives
        )
    rows["chance"] = chance(relevant)
    print(f"{len(pairs)} real tiles ({', '.join(sorted(set(names)))}); {len(queries)} distinct descriptions")
    print(f"{'':<20}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'MRR':>8}")
    for label, s in rows.items():
        print(f"{label:<20}" + "".join(f"{100 * s[k]:>8.1f}" for k in ("R@1", "R@5", "R@10", "MRR")))
    if args.json:
        Path(args.json).write_text(json.dumps({"tiles": len(pairs), "queries": queries, **rows}, indent=2))


if __name__ == "__main__":
    main()
