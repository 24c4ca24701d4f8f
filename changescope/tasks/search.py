"""Language search over image pairs: embed an archive of pairs into an index a user keeps, query it in words.

``build_index`` embeds pairs with a model's retrieval head (``ChangeModel.embed_pairs``: one forward pass a
batch, the same change tokens that caption and map them) into a ``retrieval.index.PairIndex`` folder;
rerunning it on a grown archive adds only the pairs whose ids are new. ``search`` embeds the query with the
same model's text side (``embed_texts``) and returns ranked pairs with their scores (cosine similarity).

An index records the model it was built with (path, the SHA-256 of its weights, the embedding size): a
search with another model, or an index whose embeddings have another size, is refused in one line.

The CLIP option (``clip=``, ``changescope index --clip NAME --clip-weights PATH``): a remote-sensing CLIP
(``models.clip_encoders``) embeds each pair as ``unit(image(after) - image(before))`` instead, and the index
records ``ClipEncoder.identity()`` (name, architecture, weights SHA-256 and path, embedding
``changescope-clip/1``). ``search`` sees that identity, loads the same CLIP (the recorded path, or the one
given) and embeds the query as ``zero_shot`` does: its noun phrase in the model's prompt. A pair whose two
dates embed identically has no change direction: it is skipped and counted as ``unchanged``.
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


def is_clip_index(identity: dict[str, Any]) -> bool:
    """Whether an index's model identity is a CLIP's (``changescope index --clip``)."""
    from changescope.models.clip_encoders import EMBEDDING as CLIP_EMBEDDING

    return identity.get("embedding") == CLIP_EMBEDDING


def read_clip_config(path: str | Path) -> dict[str, Any]:
    """An explicit open_clip config (``embed_dim``, ``vision_cfg``, ``text_cfg``) from a JSON file: for a
    custom-size CLIP (``--clip-config``) instead of the named model's architecture."""
    import json

    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(path, "not found (an open_clip config as JSON)") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(path, f"not a readable JSON config ({err})") from None
    missing = [
        k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(config, dict) or k not in config
    ]
    if missing:
        raise DataError(path, f"not an open_clip config: needs {', '.join(missing)}")
    return config


def clip_for_index(index_path: str | Path, identity: dict[str, Any], weights: str | Path | None = None):
    """The CLIP an index records (``identity``), with ``weights`` or else the path it records; the caller
    checks the loaded encoder's identity against the index (another file is refused there)."""
    from changescope.models.clip_encoders import CLIP_MODELS, load_clip, weights_source

    name = identity.get("name")
    if name not in CLIP_MODELS:
        raise DataError(index_path, f"built with CLIP {name!r}, which this changescope does not know")
    spec = CLIP_MODELS[name]
    if weights is None:
        weights = identity.get("path")
        if not weights:
            raise DataError(index_path, f"records no {spec.title} weights path: give it with --clip-weights")
        if not Path(weights).exists():
            raise DataError(
                weights,
                f"the {spec.title} weights this index was built with are not there: give them with "
                f"--clip-weights ({weights_source(spec)})",
            )
    config = identity.get("config")
    architecture = identity.get("architecture") if spec.library == "open_clip" and not config else None
    return load_clip(name, weights, model_cfg=config, architecture=architecture)


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


def iter_clip_embeddings(
    clip, rows: Iterable[dict], batch_size: int = 32
) -> Iterator[tuple[dict, np.ndarray]]:
    """``(row, pair embedding)`` for every row, by a ``ClipEncoder``: ``unit(after - before)`` of its unit
    image embeddings, a zero vector for a pair whose dates embed identically (``ClipEncoder.embed_pairs``)."""
    from changescope.models.processor import ChangeProcessor

    remaining = iter(rows)
    while chunk := list(itertools.islice(remaining, batch_size)):
        # each pair resized to the CLIP's input size on its own: the pairs of an archive differ in size
        images = torch.stack([clip.resize(ChangeProcessor.read_pair(r["before"], r["after"])) for r in chunk])
        vectors = clip.embed_pairs(images[:, 0], images[:, 1]).numpy()
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
    clip=None,
) -> dict[str, Any]:
    """Add the pairs of ``rows`` (see :func:`source_pairs`) to the index folder ``out`` (created when
    absent); pairs whose id the index already holds (or that repeat an earlier row's id) are skipped.
    Returns ``{"added", "kept", "unchanged", "total", "index"}``. ``progress(done, total)`` is called before
    the first batch and after each one, with the pairs embedded so far and the number to embed.

    With ``clip`` (a ``ClipEncoder``; ``spec`` and ``precision`` are then unused) the pairs are embedded by
    that CLIP; a pair whose dates embed identically is not added (``unchanged`` counts them; a rerun
    embeds them again)."""
    if clip is None:
        model, processor, path = load(spec, precision)
        model.require("retrieval")
        identity = model_identity(model, path)

        def embeddings(pending: list[dict]):
            return iter_embeddings(model, processor, pending, batch_size)
    else:
        identity = clip.identity()

        def embeddings(pending: list[dict]):
            return iter_clip_embeddings(clip, pending, batch_size)

    out = Path(out)
    index = open_index(out, identity)
    known = set(index.ids())
    pending, seen = [], set(known)
    for row in rows:
        if row["id"] not in seen:
            seen.add(row["id"])
            pending.append(row)
    if progress is not None:
        progress(0, len(pending))
    done = added = unchanged = 0
    vectors, batch = [], []
    try:
        for row, vector in embeddings(pending):
            done += 1
            if vector.any():
                batch.append(row)
                vectors.append(vector)
            else:  # a CLIP's pair without change: no direction to store
                unchanged += 1
            last = done == len(pending)
            if batch and (len(batch) == batch_size or last):
                added += index.add(np.stack(vectors), batch)
                vectors, batch = [], []
            if progress is not None and (done % batch_size == 0 or last):
                progress(done, len(pending))
    except BaseException:  # a pair that cannot be read, Ctrl-C: keep what was embedded, a rerun goes on
        if added:
            index.save(out)
        raise
    index.save(out)
    return {
        "added": added,
        "kept": len(rows) - added - unchanged,
        "unchanged": unchanged,
        "total": len(index),
        "index": str(out),
    }


def query_index(index, model, query: str, k: int = 10, lock=None) -> list[dict]:
    """The ``k`` rows of a loaded ``index`` that best match ``query``, embedded by ``model`` (the caller
    has checked that the index was built with it), best first, each with ``rank`` and ``score``. ``lock``
    (a server's model lock) is held while the query is embedded, not while the index is searched."""
    import contextlib

    if not isinstance(query, str) or not query.strip():
        raise ChangescopeError("the search query is empty")
    if k < 1:
        raise ChangescopeError(f"k must be >= 1, got {k}")
    # a CLIP embeds a query as zero_shot does (its noun phrase in the prompt); the retrieval head as it is
    embed = getattr(model, "embed_queries", None) or model.embed_texts
    with lock if lock is not None else contextlib.nullcontext(), torch.inference_mode():
        vector = embed([query.strip()]).float().numpy()
    hits = index.search(vector, k)[0]
    return [
        {"rank": rank, "score": round(float(score), 6), **row} for rank, (row, score) in enumerate(hits, 1)
    ]


def search(
    index_path: str | Path,
    query: str,
    k: int = 10,
    model_spec: str | Path | None = None,
    clip_weights: str | Path | None = None,
) -> list[dict]:
    """The ``k`` pairs of the index that best match ``query``, best first: each its row (id, before,
    after, and what else was stored) with ``rank`` and ``score`` (cosine similarity, -1 to 1). An index
    built with a CLIP is searched with that CLIP (``clip_weights``, default the path it records);
    ``model_spec`` is for an index built with a changescope model."""
    from changescope.retrieval.index import PairIndex

    if not query.strip():
        raise ChangescopeError("the search query is empty")
    if k < 1:
        raise ChangescopeError(f"--k must be >= 1, got {k}")
    index = PairIndex.load(index_path)
    if is_clip_index(index.model):
        if model_spec is not None:
            raise DataError(
                index_path,
                f"built with CLIP {index.model.get('name')}: its queries are embedded by that CLIP "
                "(--clip-weights), not by --model",
            )
        clip = clip_for_index(index_path, index.model, clip_weights)
        index.check_model(clip.identity())
        return query_index(index, clip, query, k)
    if clip_weights is not None:
        raise DataError(
            index_path, "built with a changescope model, not a CLIP: --clip-weights is not for it"
        )
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
