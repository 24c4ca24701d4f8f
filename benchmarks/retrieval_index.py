"""Pair index speed and recall: the index as its kind rule builds it, against exact search in one process.

Synthetic clustered embeddings stand in for image-pair embeddings: ``--centres`` random unit centres, each
vector a centre plus Gaussian noise of norm about ``--spread``, L2-normalised (so pairs of one place, or of
one kind of scene, are near-duplicates). Queries are noisy copies (noise norm about ``--query-noise``) of
``--queries`` stored vectors, each searched alone (single-query latency, p50 / p99).

For every size the script builds:

* the index as ``PairIndex``'s rule builds it from one add of all vectors (exact ``IndexFlatIP`` below
  ``EXACT_BELOW``, IVF-Flat from there, k-means training included in the build time);
* at sizes past ``EXACT_BELOW``, the same vectors added in batches of ``--batch`` (the index switches to
  IVF-Flat at the first add that reaches ``EXACT_BELOW`` and keeps the lists trained then);
* the baseline: the exact flat index of the same vectors, searched through ``PairIndex`` (which runs a
  few queries on one faiss thread) and as the raw faiss index on ``--threads`` threads; the p99 ratio is
  taken against the faster of the two.

It reports build rate, latency, the p99 ratio exact / rule, recall@10 against the exact top 10, the saved
folder's size, save / load time and the process RSS after each build. With ``--compare`` (default on) it
also builds, at the largest size, the alternatives the rule was chosen against: IVF-PQ (``m = dim / 8``
and ``dim / 4``, 8 bits) and IVF-SQ8 with the same coarse lists and nprobe, and sweeps the rule index's
nprobe.

    python benchmarks/retrieval_index.py [--sizes 10000,1000000] [--dim 256] [--centres 1000]
        [--spread 1.0] [--query-noise 0.3] [--queries 1000] [--threads 2] [--batch 100000]
        [--no-compare] [--pq 32,64] [--dir DIR] [--out retrieval.json]
"""

from __future__ import annotations

import argparse
import functools
import gc
import platform
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import psutil

from changescope.fileio import write_json_atomic
from changescope.retrieval import index as pair_index
from changescope.retrieval.index import PairIndex

K = 10


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def make_data(n: int, dim: int, centres: int, spread: float, rng: np.random.Generator) -> np.ndarray:
    c = rng.standard_normal((centres, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        end = min(n, start + 100_000)
        labels = rng.integers(0, centres, end - start)
        x[start:end] = c[labels]
        x[start:end] += (spread / np.sqrt(dim)) * rng.standard_normal((end - start, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_queries(x: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    source = rng.choice(len(x), count, replace=False)
    q = x[source] + (noise / np.sqrt(x.shape[1])) * rng.standard_normal((count, x.shape[1]), dtype=np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def make_rows(n: int) -> list[dict]:
    return [
        {
            "id": f"p{i:07d}",
            "before": f"tiles/{i:07d}_a.tif",
            "after": f"tiles/{i:07d}_b.tif",
            "date": "2024-05",
        }
        for i in range(n)
    ]


def latency_ms(search, queries: np.ndarray) -> tuple[float, float]:
    for q in queries[:10]:  # warm-up
        search(q[None])
    times = []
    for q in queries:
        start = time.perf_counter()
        search(q[None])
        times.append(time.perf_counter() - start)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def positions(results) -> np.ndarray:
    return np.array([[int(row["id"][1:]) for row, _ in hits] + [-1] * (K - len(hits)) for hits in results])


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(a) & set(b)) / K for a, b in zip(found.tolist(), truth.tolist(), strict=True)])
    )


def measure_pair_index(index: PairIndex, queries: np.ndarray, truth: np.ndarray) -> dict:
    p50, p99 = latency_ms(lambda q: index.search(q, K), queries)
    return {
        "kind": index.kind,
        "nlist": index.parameters.get("nlist"),
        "nprobe": index.nprobe,
        "p50_ms": p50,
        "p99_ms": p99,
        "recall_at_10": recall(positions(index.search(queries, K)), truth),
    }


def build(x: np.ndarray, rows: list[dict], batch: int | None) -> tuple[PairIndex, float]:
    start = time.perf_counter()
    index = PairIndex.create(x.shape[1], {"embedding": "synthetic-clustered", "dim": x.shape[1]})
    step = batch or len(x)
    for s in range(0, len(x), step):
        index.add(x[s : s + step], rows[s : s + step])
    return index, time.perf_counter() - start


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.iterdir()) / 2**20


def run_size(n: int, args, workdir: Path) -> dict:
    rng = np.random.default_rng(n)
    x = make_data(n, args.dim, args.centres, args.spread, rng)
    queries = make_queries(x, args.queries, args.query_noise, rng)
    rows = make_rows(n)
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(x)
    top = exact.search(queries, K)
    truth = top[1]
    del exact
    gc.collect()
    result = {"n": n, "top1_cos": float(top[0][:, 0].mean()), "top10_cos": float(top[0][:, -1].mean())}
    lines = []

    def record(label: str, index: PairIndex, seconds: float, rss_before: float) -> dict:
        entry = {"label": label, "build_s": seconds, "vectors_per_s": n / seconds, **measure(index)}
        entry["rss_mb"] = rss_mb()
        entry["rss_added_mb"] = entry["rss_mb"] - rss_before
        lines.append(entry)
        return entry

    def measure(index: PairIndex) -> dict:
        return measure_pair_index(index, queries, truth)

    # the index as the rule builds it, from one add
    before = rss_mb()
    index, seconds = build(x, rows, None)
    rule = record(f"rule, one add of {n:,}", index, seconds, before)
    target = workdir / f"index-{n}"
    start = time.perf_counter()
    index.save(target)
    rule["save_s"] = time.perf_counter() - start
    rule["file_mb"] = folder_mb(target)
    del index
    gc.collect()
    start = time.perf_counter()
    loaded = PairIndex.load(target)
    rule["load_s"] = time.perf_counter() - start
    rule["loaded_recall_at_10"] = recall(positions(loaded.search(queries, K)), truth)
    if args.compare and n == max(args.sizes) and loaded.kind == "ivf_flat":
        result["nprobe_sweep"] = sweep(loaded, queries, truth)
    del loaded
    gc.collect()
    shutil.rmtree(target)

    # incremental adds, past the threshold
    if n > pair_index.EXACT_BELOW and args.batch and args.batch < n:
        before = rss_mb()
        index, seconds = build(x, rows, args.batch)
        record(f"rule, adds of {args.batch:,}", index, seconds, before)
        del index
        gc.collect()

    # the baseline: exact search of the same vectors, through the same class and as raw faiss
    before = rss_mb()
    threshold = pair_index.EXACT_BELOW
    pair_index.EXACT_BELOW = n + 1
    try:
        index, seconds = build(x, rows, None)
    finally:
        pair_index.EXACT_BELOW = threshold
    baseline = record("baseline: exact, PairIndex", index, seconds, before)
    target = workdir / f"exact-{n}"
    index.save(target)
    baseline["file_mb"] = folder_mb(target)
    shutil.rmtree(target)
    # raw faiss searches one query with every OpenMP thread; PairIndex uses one thread for a few queries
    flat = index._index
    p50, p99 = latency_ms(functools.partial(flat.search, k=K), queries)
    raw = {"label": f"baseline: raw faiss, {args.threads} thr", "kind": "flat", "nlist": None, "nprobe": None}
    raw.update(build_s=seconds, vectors_per_s=n / seconds, p50_ms=p50, p99_ms=p99)
    raw.update(recall_at_10=recall(flat.search(queries, K)[1], truth), rss_mb=rss_mb(), rss_added_mb=0.0)
    lines.append(raw)
    baseline = min(baseline, raw, key=lambda e: e["p99_ms"])
    del index, flat
    gc.collect()

    result["builds"] = lines
    result["baseline"] = baseline["label"]
    result["p99_ratio_exact_over_rule"] = baseline["p99_ms"] / rule["p99_ms"]
    if args.compare and n == max(args.sizes) and rule["kind"] == "ivf_flat":
        result["alternatives"] = alternatives(x, queries, truth, args.dim, args.pq)
    return result


def sweep(index: PairIndex, queries: np.ndarray, truth: np.ndarray) -> list[dict]:
    out = []
    chosen = index.nprobe
    for nprobe in (1, 4, 8, 16, 32, 64):
        index.nprobe = nprobe
        out.append({"nprobe": nprobe, **measure_pair_index(index, queries, truth)})
    index.nprobe = chosen
    return out


def alternatives(
    x: np.ndarray, queries: np.ndarray, truth: np.ndarray, dim: int, pq: list[int]
) -> list[dict]:
    """Raw faiss indexes with the rule's nlist, training sample and nprobe: what IVF-Flat was chosen over.

    The coarse quantizer is trained once (for IVF-Flat, timed with it) and shared: the other kinds' build
    times leave that training out, and all of them probe the same lists."""
    n = len(x)
    nlist = pair_index.nlist_for(n)
    sample = x[np.sort(np.random.default_rng(0).choice(n, min(n, pair_index.TRAIN_MAX), replace=False))]
    centroids = None
    quantizers: list = []
    out = []
    kinds = [("IVF-Flat (the rule's kind)", None)] + [(f"IVF-PQ m={m} x 8 bits", m) for m in pq]
    kinds.append(("IVF-SQ8", "sq8"))
    for label, kind in kinds:
        start = time.perf_counter()
        if centroids is None:
            index = faiss.index_factory(dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        else:
            quantizer = faiss.IndexFlatIP(dim)
            quantizer.add(centroids)
            if kind == "sq8":
                index = faiss.IndexIVFScalarQuantizer(
                    quantizer, dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
                )
            else:
                index = faiss.IndexIVFPQ(quantizer, dim, nlist, kind, 8, faiss.METRIC_INNER_PRODUCT)
            quantizers.append(quantizer)  # the index does not own it: keep it alive
        index.train(sample)
        index.add(x)
        seconds = time.perf_counter() - start
        if centroids is None:
            centroids = index.quantizer.reconstruct_n(0, nlist)
        index.nprobe = pair_index.NPROBE
        p50, p99 = latency_ms(lambda q, index=index: index.search(q, K), queries)
        found = index.search(queries, K)[1]
        size = faiss.serialize_index(index).nbytes / 2**20
        out.append(
            {
                "label": label,
                "build_s": seconds,
                "p50_ms": p50,
                "p99_ms": p99,
                "recall_at_10": recall(found, truth),
                "faiss_mb": size,
            }
        )
        del index
        gc.collect()
    return out


def print_result(result: dict, args) -> None:
    print(
        f"\n{result['n']:,} vectors, dim {args.dim}, {args.centres} centres, spread {args.spread}, "
        f"query noise {args.query_noise}; {args.queries} single queries, k {K}; "
        f"mean cosine of the exact top 1 {result['top1_cos']:.3f}, of the 10th {result['top10_cos']:.3f}"
    )
    header = (
        f"  {'':30s} {'kind':>8s} {'nlist':>6s} {'nprobe':>6s} {'build s':>8s} {'vec/s':>9s} {'p50 ms':>7s} "
        f"{'p99 ms':>7s} {'rec@10':>7s} {'file MB':>8s} {'RSS MB':>8s} {'+RSS MB':>8s}"
    )
    print(header)
    for e in result["builds"]:
        file_mb = f"{e['file_mb']:8.1f}" if "file_mb" in e else f"{'':8s}"
        print(
            f"  {e['label']:30s} {e['kind']:>8s} {e['nlist'] or '':>6} {e['nprobe'] or '':>6} "
            f"{e['build_s']:8.1f} {e['vectors_per_s']:9.0f} {e['p50_ms']:7.2f} {e['p99_ms']:7.2f} "
            f"{e['recall_at_10']:7.4f} {file_mb} {e['rss_mb']:8.0f} {e['rss_added_mb']:8.0f}"
        )
    rule = result["builds"][0]
    print(
        f"  p99 ratio exact / rule: {result['p99_ratio_exact_over_rule']:.3g} x (exact = "
        f"{result['baseline'].split(': ')[1]}); rule index saved in "
        f"{rule['save_s']:.1f} s, loaded in {rule['load_s']:.1f} s (recall@10 after load "
        f"{rule['loaded_recall_at_10']:.4f})"
    )
    if "nprobe_sweep" in result:
        print("  nprobe sweep of the rule index (one add):")
        for e in result["nprobe_sweep"]:
            print(
                f"    nprobe {e['nprobe']:3d}: p50 {e['p50_ms']:6.2f} ms  p99 {e['p99_ms']:6.2f} ms  "
                f"recall@10 {e['recall_at_10']:.4f}"
            )
    if "alternatives" in result:
        print(
            f"  alternatives (raw faiss, nlist {pair_index.nlist_for(result['n'])}, "
            f"nprobe {pair_index.NPROBE}):"
        )
        for e in result["alternatives"]:
            print(
                f"    {e['label']:28s} build {e['build_s']:6.1f} s  p50 {e['p50_ms']:6.2f} ms  p99 "
                f"{e['p99_ms']:6.2f} ms  recall@10 {e['recall_at_10']:.4f}  faiss {e['faiss_mb']:7.1f} MB"
            )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[10_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--centres", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around a centre")
    parser.add_argument("--query-noise", type=float, default=0.3, help="noise norm added to a stored vector")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100_000, help="batch of the incremental build")
    parser.add_argument("--no-compare", dest="compare", action="store_false")
    parser.add_argument(
        "--pq",
        type=lambda s: [int(v) for v in s.split(",")],
        default=None,
        help="IVF-PQ sub-quantizer counts to compare (default dim/8,dim/4)",
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where the indexes are saved (in a temporary folder there)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    args.pq = args.pq or [args.dim // 8, args.dim // 4]

    faiss.omp_set_num_threads(args.threads)
    print(
        f"pair index benchmark: faiss {faiss.__version__}, {args.threads} faiss threads, "
        f"numpy {np.__version__}, Python {platform.python_version()}, {psutil.cpu_count()} CPUs\n"
        f"rule: {pair_index.rule_text()}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="pair-index-bench.", dir=args.dir))
    results = []
    try:
        for n in args.sizes:
            result = run_size(n, args, workdir)
            print_result(result, args)
            results.append(result)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.out:
        write_json_atomic(args.out, {"args": {k: str(v) for k, v in vars(args).items()}, "results": results})


if __name__ == "__main__":
    main()
