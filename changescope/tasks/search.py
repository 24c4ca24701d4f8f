"""Language search over image pairs: embed an archive of pairs into an index a user keeps, query it in words.

``build_index`` embeds pairs with a model's retrieval head (``ChangeModel.embed_pairs``: one forward pass a
batch, the same change tokens that caption and map them) into a ``retrieval.index.PairIndex`` folder;
rerunning it on a grown archive adds only the pairs whose ids are new. ``search`` embeds the query with the
same model's text side (``embed_texts``) and returns ranked pairs with their scores (cosine similarity).

An index records the model it was built with (path, the SHA-256 of its weights, the embedding size): a
search with another model, or an index whose embeddings have another size, is refused in one line.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changescope.errors import ChangescopeError, DataError
from changescope.tasks.inference import load, resolve_model

#: what the vectors of an index are: the retrieval head's pair embeddings, version 1
EMBEDDING = "changescope-retrieval/1"


def model_identity(model, path: str | Path) -> dict[str, Any]:
    """What an index records about the model that filled it, and checks before a search."""
    path = Path(path).resolve()
    weights = path / "model.safetensors"
    digest = hashlib.sha256()
    with weights.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {
        "path": str(path),
        "sha256": digest.hexdigest(),
        "embedding": EMBEDDING,
        "dim": int(model.config.retrieval_dim),
    }


def source_pairs(source: str | Path, split: str | None = None, format: str | None = None) -> list[dict]:
    """Rows ``{"id", "before", "after", ...}`` of what to index: a folder of pairs (``A/``, ``B/``), a
    manifest (CSV / JSONL, optional ``date_before`` / ``date_after`` columns kept), or a dataset directory
    in any format ``open_dataset`` reads (every split, or ``split``; ids are ``split/id``)."""
    from changescope.tasks.pairs import MANIFEST_SUFFIXES, list_pairs

    source = Path(source)
    if not source.exists():
        raise DataError(source, "not found: give a folder of pairs, a manifest or a dataset directory")
    if source.is_file() and source.suffix.lower() not in MANIFEST_SUFFIXES:
        raise DataError(
            source,
            "neither a folder of pairs (A/ and B/), a manifest (.csv / .jsonl) nor a dataset directory",
        )
    if source.is_file() or (source / "A").is_dir():
        # absolute paths: an index outlives the working directory it was built from
        return [
            {"id": pid, "before": str(a.resolve()), "after": str(b.resolve())}
            for pid, a, b in list_pairs(source)
        ]
    from changescope.data.readers import detect_format, open_dataset, reader_class

    fmt = format or detect_format(source)
    rows, failures = [], []
    for name in [split] if split else list(reader_class(fmt).splits):  # an unknown format fails here
        try:
            dataset = open_dataset(source, name, fmt, check_files=True)
        except DataError as err:
            if split:  # the split asked for must exist; of all splits, those present are indexed
                raise
            failures.append(err)
            continue
        rows += _dataset_rows(dataset, name)
    if not rows:
        if failures:  # no split could be read: say why the first could not
            raise failures[0]
        raise DataError(source, "no pairs found to index")
    return rows


def _dataset_rows(dataset, split: str) -> list[dict]:
    """A dataset split's rows, ids ``split/id``: its pair entries, or for a question dataset (CDVQA) each
    image pair its questions are about, once."""
    if not hasattr(dataset, "entries"):
        pairs = {item.file_name: item.images for item in dataset.items}
        return [
            {"id": f"{split}/{Path(name).stem}", "before": str(a.resolve()), "after": str(b.resolve())}
            for name, (a, b) in pairs.items()
        ]
    rows = []
    for entry in dataset.entries:
        before, after = (str(Path(p).resolve()) for p in (entry.images[0], entry.images[-1]))
        row = {"id": f"{split}/{entry.id}", "before": before, "after": after}
        if entry.captions:
            row["captions"] = list(entry.captions)
        rows.append(row)
    return rows


def iter_embeddings(
    model, processor, rows: Iterable[dict], batch_size: int = 32
) -> Iterator[tuple[dict, np.ndarray]]:
    """``(row, unit pair embedding)`` for every row, ``batch_size`` pairs decoded and embedded at a time."""
    model.require("retrieval")
    remaining = iter(rows)
    with torch.inference_mode():
        while chunk := list(itertools.islice(remaining, batch_size)):
            # each pair resized to the model's size on its own: the pairs of an archive differ in size
            images = torch.stack([processor.load_pair(r["before"], r["after"]) for r in chunk])
            vectors = model.embed_pairs(model(images, masks=False).memory).numpy()
            yield from zip(chunk, vectors, strict=True)


def open_index(out: str | Path, identity: dict[str, Any]):
    """The index folder ``out`` to add to: loaded and checked against the model ``identity`` when it holds
    an index, a new empty one when ``out`` is absent or an empty folder; anything else is refused."""
    from changescope.retrieval.index import PairIndex

    out = Path(out)
    if (out / "index.json").is_file():
        index = PairIndex.load(out)
        index.check_model(identity)
        return index
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(out, "exists and is not an index (no index.json): give a new or empty folder")
    return PairIndex.create(identity["dim"], identity)


def build_index(
    spec: str | Path,
    rows: list[dict],
    out: str | Path,
    batch_size: int = 32,
    precision: str | None = None,
    progress=None,
) -> dict[str, Any]:
    """Add the pairs of ``rows`` (see :func:`source_pairs`) to the index folder ``out`` (created when
    absent); pairs whose id the index already holds (or that repeat an earlier row's id) are skipped.
    Returns ``{"added", "kept", "total", "index"}``. ``progress(done, total)`` is called before the first
    batch and after each one, with the pairs embedded so far and the number to embed."""
    model, processor, path = load(spec, precision)
    model.require("retrieval")
    out = Path(out)
    index = open_index(out, model_identity(model, path))
    known = set(index.ids())
    pending, seen = [], set(known)
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            pending.append(row)
    if progress is not None:
        progress(0, len(pending))
    done = added = 0
    vectors, batch = [], []
    try:
        for row, vector in iter_embeddings(model, processor, pending, batch_size):
            batch.append(row)
            vectors.append(vector)
            done += 1
            if len(batch) == batch_size or done == len(pending):
                added += index.add(np.stack(vectors), batch)
                vectors, batch = [], []
                if progress is not None:
                    progress(done, len(pending))
    except BaseException:  # a pair that cannot be read, Ctrl-C: keep what was embedded, a rerun goes on
        if added:
            index.save(out)
        raise
    index.save(out)
    return {"added": added, "kept": len(rows) - added, "total": len(index), "index": str(out)}


def query_index(index, model, query: str, k: int = 10, lock=None) -> list[dict]:
    """The ``k`` rows of a loaded ``index`` that best match ``query``, embedded by ``model`` (the caller
    has checked that the index was built with it), best first, each with ``rank`` and ``score``. ``lock``
    (a server's model lock) is held while the query is embedded, not while the index is searched."""
    import contextlib

    if not isinstance(query, str) or not query.strip():
        raise ChangescopeError("the search query is empty")
    if k < 1:
        raise ChangescopeError(f"k must be >= 1, got {k}")
    with lock if lock is not None else contextlib.nullcontext(), torch.inference_mode():
        vector = model.embed_texts([query.strip()]).float().numpy()
    hits = index.search(vector, k)[0]
    return [
        {"rank": rank, "score": round(float(score), 6), **row} for rank, (row, score) in enumerate(hits, 1)
    ]


def search(
    index_path: str | Path, query: str, k: int = 10, model_spec: str | Path | None = None
) -> list[dict]:
    """The ``k`` pairs of the index that best match ``query``, best first: each its row (id, before,
    after, and what else was stored) with ``rank`` and ``score`` (cosine similarity, -1 to 1)."""
    from changescope.retrieval.index import PairIndex

    if not query.strip():
        raise ChangescopeError("the search query is empty")
    if k < 1:
        raise ChangescopeError(f"--k must be >= 1, got {k}")
    index = PairIndex.load(index_path)
    spec = model_spec or index.model.get("path")
    if not spec:
        raise DataError(index_path, "records no model path: give the model that built it (--model)")
    path = resolve_model(spec)
    if not (path / "model.safetensors").is_file():
        raise DataError(path, "the model this index was built with is not there: give it with --model")
    model, _, path = load(path)
    model.require("retrieval")
    index.check_model(model_identity(model, path))
    return query_index(index, model, query, k)
