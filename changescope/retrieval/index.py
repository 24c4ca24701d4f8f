"""An index of image-pair embeddings that a user keeps, adds to and searches (numpy + faiss).

Each vector is one image pair's embedding (float32, ``dim`` wide, L2-normalised: the metric is the inner
product, i.e. cosine similarity) and each has a row: a JSON object with a unique string ``"id"`` and
whatever the caller stores beside it (before / after paths, dates, a GeoJSON footprint). Adding a folder
again adds only the pairs whose ids are new.

The kind rule (also written into every ``index.json``):

* while the index holds fewer than ``EXACT_BELOW`` (100,000) vectors it is exact: a faiss ``IndexFlatIP``;
* the add that makes it reach ``EXACT_BELOW`` rebuilds it as IVF-Flat: ``IndexIVFFlat`` over an
  ``IndexFlatIP`` quantizer, inner product, ``nlist`` = the power of two nearest ``4 * sqrt(N)`` (at most
  ``N / 39``, so k-means has 39 points per list), trained on at most ``TRAIN_MAX`` (200,000) of the vectors
  it holds (a seeded sample), searched with ``nprobe = NPROBE`` (32) lists;
* later adds go straight into the trained IVF lists (no retraining).

IVF-Flat keeps the full vectors, so every score it returns is the exact cosine, and its only loss is a
neighbour in a list it did not probe. IVF-PQ (``m = dim / 8`` sub-quantizers of 8 bits), the compressed
alternative, was measured and rejected: on a million clustered near-duplicate embeddings (the benchmark's
data, dim 256, the same 4096 lists and nprobe 32) its recall@10 against exact search was 0.34 (0.59 with
``m = dim / 4``), because the neighbours of a pair differ in cosine by less than the quantisation error;
IVF-Flat's was 1.000 and IVF-SQ8's 0.981 (``benchmarks/retrieval_index.py``). The price is memory:
4 bytes per dimension per pair (1 GB for a million 256-wide pairs), as for the exact index.

On disk an index is a folder, written whole into a temporary sibling and renamed into place (an older
version of the same index is replaced only once the new one is complete):

* ``index.json``: format name and version, dim, metric, kind, its parameters, count, the model identity,
  the rule text and the byte size of ``vectors.faiss``;
* ``vectors.faiss``: the faiss index (``faiss.write_index``);
* ``items.jsonl``: one row per vector, in the vectors' order.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from changescope.errors import DataError, require
from changescope.fileio import plain_permissions, plain_permissions_dir

FORMAT = "changescope-pair-index"
VERSION = 1
METRIC = "inner_product"

#: the index is exact (``IndexFlatIP``) while it holds fewer vectors than this, IVF-Flat from then on
EXACT_BELOW = 100_000
#: k-means trains on at most this many of the vectors the index holds when it becomes IVF-Flat
TRAIN_MAX = 200_000
#: IVF lists probed per query
NPROBE = 32
#: k-means wants at least this many training points per list (faiss warns below it)
POINTS_PER_LIST = 39
#: searches of fewer queries than this run on one faiss thread: a single query gains little from a
#: second OpenMP thread and loses much when another process holds a core (measured on 2 cores: exact
#: search of 10,000 vectors, p99 20 ms on 2 threads against 0.65 ms on 1)
ONE_THREAD_BELOW = 20

INDEX_JSON = "index.json"
VECTORS = "vectors.faiss"
ITEMS = "items.jsonl"

KINDS = ("flat", "ivf_flat")

#: norms further than this from 1 are normalised (the caller should have done it)
_NORM_TOLERANCE = 1e-3


def rule_text() -> str:
    """The kind rule with the current constants, as written into ``index.json``."""
    return (
        f"exact IndexFlatIP while the index holds fewer than {EXACT_BELOW} vectors; the add that makes it "
        f"reach {EXACT_BELOW} rebuilds it as IVF-Flat (IndexIVFFlat over an IndexFlatIP quantizer, inner "
        f"product, nlist = the power of two nearest 4*sqrt(N), at most N/{POINTS_PER_LIST}, trained by "
        f"k-means on at most {TRAIN_MAX} of the vectors it holds, nprobe {NPROBE}); later adds go into the "
        f"trained IVF lists without retraining"
    )


def nlist_for(n: int) -> int:
    """IVF lists for ``n`` vectors: the power of two nearest ``4 * sqrt(n)``, at most ``n / 39``, >= 1."""
    target = 4.0 * math.sqrt(max(n, 1))
    nlist = 2 ** round(math.log2(target))
    while nlist > 1 and nlist * POINTS_PER_LIST > n:
        nlist //= 2
    return max(1, nlist)


def _faiss():
    return require("faiss", "search", "the pair index")


class PairIndex:
    """Pair embeddings with their rows; exact below ``EXACT_BELOW`` vectors, IVF-Flat from there on.

    Make one with :meth:`create` or :meth:`load`; never call the constructor directly.
    """

    def __init__(
        self,
        dim: int,
        model: dict,
        index: Any,
        rows: list[dict],
        path: Path | None = None,
        trained_on: int = 0,
    ):
        self.dim = dim
        self.model = model
        self.path = path
        self._index = index
        self._rows = rows
        self._positions = {row["id"]: i for i, row in enumerate(rows)}
        self._trained_on = trained_on  # vectors k-means saw when the index became IVF-Flat

    # ----------------------------------------------------------------------------------------- making one
    @classmethod
    def create(cls, dim: int, model: dict) -> PairIndex:
        """An empty exact index of ``dim``-wide embeddings made by ``model`` (a JSON-able identity dict,
        e.g. ``{"path": ..., "sha256": ..., "embedding": "retrieval-v1", "dim": 256}``)."""
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise DataError("dim", f"must be a positive integer, not {dim!r}")
        model = _check_model_dict("model", model)
        if "dim" in model and model["dim"] != dim:
            raise DataError("model", f"says dim {model['dim']!r}, the index is {dim}-dim")
        faiss = _faiss()
        return cls(dim, model, faiss.IndexFlatIP(dim), [])

    @classmethod
    def load(cls, path: str | Path) -> PairIndex:
        """Read an index folder written by :meth:`save`; every problem is a one-line DataError naming the
        file."""
        path = Path(path)
        if not path.is_dir():
            if path.exists():
                raise DataError(
                    path, "is a file; a pair index is a folder (index.json, vectors.faiss, items.jsonl)"
                )
            left = _interrupted_save(path)
            hint = f"; an interrupted save left the previous version in {left}" if left else ""
            raise DataError(path, f"no such index folder{hint}")
        meta_path = path / INDEX_JSON
        meta = _read_meta(meta_path)
        dim, count, kind, params = meta["dim"], meta["count"], meta["kind"], meta["parameters"]

        vectors_path = path / VECTORS
        if not vectors_path.is_file():
            raise DataError(vectors_path, "missing (the index's vectors)")
        size = vectors_path.stat().st_size
        if size != meta["vectors_bytes"]:
            raise DataError(
                vectors_path,
                f"is {size} bytes, {INDEX_JSON} records {meta['vectors_bytes']} (truncated or replaced)",
            )
        faiss = _faiss()
        try:
            index = faiss.read_index(str(vectors_path))
        except (RuntimeError, MemoryError) as err:
            raise DataError(vectors_path, f"not a readable faiss index: {_faiss_message(err)}") from None
        _check_faiss_index(faiss, vectors_path, index, dim, count, kind, params)

        items_path = path / ITEMS
        rows = _read_items(items_path, count)
        trained_on = params.get("trained_on", 0)
        trained_on = trained_on if isinstance(trained_on, int) and not isinstance(trained_on, bool) else 0
        return cls(dim, meta["model"], index, rows, path, trained_on)

    # --------------------------------------------------------------------------------------------- state
    @property
    def kind(self) -> str:
        """``"flat"`` (exact) or ``"ivf_flat"``."""
        return "flat" if self._ivf() is None else "ivf_flat"

    @property
    def parameters(self) -> dict:
        ivf = self._ivf()
        if ivf is None:
            return {}
        return {"nlist": int(ivf.nlist), "nprobe": int(ivf.nprobe), "trained_on": self._trained_on}

    @property
    def nprobe(self) -> int | None:
        """IVF lists probed per query (None for the exact index); settable, saved with the index."""
        ivf = self._ivf()
        return None if ivf is None else int(ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        ivf = self._ivf()
        if ivf is None:
            raise DataError("nprobe", "the exact index has no IVF lists to probe")
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= ivf.nlist:
            raise DataError("nprobe", f"must be an integer from 1 to nlist ({ivf.nlist}), not {value!r}")
        ivf.nprobe = value

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, pair_id: object) -> bool:
        return pair_id in self._positions

    def ids(self) -> list[str]:
        """The rows' ids, in the order they were added."""
        return [row["id"] for row in self._rows]

    def check_model(self, model: dict) -> None:
        """Raise a DataError naming the index when ``model`` is not the model it was built with.

        Two identities match when the dims agree and every key they share is equal, except ``"path"``
        when both carry a ``"sha256"`` (a moved model file is the same model); they must share a
        ``"sha256"``, ``"embedding"`` or ``"path"`` key to be told apart at all.
        """
        model = _check_model_dict("model", model)
        if not _same_model(self.model, model, self.dim):
            where = self.path if self.path is not None else "pair index"
            raise DataError(
                where, f"built with model {_describe(self.model, self.dim)}, not {_describe(model)}"
            )

    # ---------------------------------------------------------------------------------------- add, search
    def add(self, embeddings: np.ndarray, rows: Sequence[dict]) -> int:
        """Add ``embeddings`` ``[N, dim]`` with their ``rows`` (one JSON-able dict each, with a unique string
        ``"id"``). A row whose id is already in the index (or earlier in ``rows``) is skipped; returns the
        number added (``len(rows)`` minus the skipped). The add that makes the index reach ``EXACT_BELOW``
        vectors rebuilds it as IVF-Flat (module docstring). The index keeps JSON round-trip copies of the
        rows, so what a search returns is what a saved and loaded index returns."""
        vectors = self._vectors("embeddings", embeddings)
        rows = list(rows)
        if len(rows) != len(vectors):
            raise DataError("rows", f"{len(rows)} rows for {len(vectors)} embeddings")
        keep, new_rows, seen = [], [], set()
        for i, row in enumerate(rows):
            row = _check_row(f"rows[{i}]", row)
            if row["id"] in self._positions or row["id"] in seen:
                continue
            seen.add(row["id"])
            keep.append(i)
            new_rows.append(row)
        if not keep:
            return 0
        new = vectors if len(keep) == len(vectors) else vectors[keep]
        if self._ivf() is None and len(self) + len(new) >= EXACT_BELOW:
            self._index = self._build_ivf(new)
        else:
            self._index.add(new)
        for row in new_rows:
            self._positions[row["id"]] = len(self._rows)
            self._rows.append(row)
        return len(new_rows)

    def search(self, queries: np.ndarray, k: int = 10) -> list[list[tuple[dict, float]]]:
        """For each query (``[Q, dim]``, or one ``[dim]`` vector), its ``k`` nearest rows with their cosine
        scores, best first (all rows when ``k`` exceeds the index). The rows are copies (one level deep).
        Fewer than ``ONE_THREAD_BELOW`` queries are searched on one faiss thread."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError("k", f"must be a positive integer, not {k!r}")
        queries = self._vectors("queries", queries)
        if len(self) == 0:
            return [[] for _ in range(len(queries))]
        k = min(k, len(self))
        faiss = _faiss()
        threads = faiss.omp_get_max_threads()
        if len(queries) < ONE_THREAD_BELOW and threads > 1:
            faiss.omp_set_num_threads(1)  # this thread's OpenMP setting only, restored below
        try:
            scores, labels = self._index.search(queries, k)
            ivf = self._ivf()
            if ivf is not None:
                # the probed lists held fewer than k vectors: search those queries over every list
                short = np.flatnonzero((labels < 0).any(axis=1))
                if len(short):
                    params = faiss.SearchParametersIVF(nprobe=int(ivf.nlist))
                    scores[short], labels[short] = self._index.search(queries[short], k, params=params)
        finally:
            if faiss.omp_get_max_threads() != threads:
                faiss.omp_set_num_threads(threads)
        return [
            [(dict(self._rows[j]), float(s)) for j, s in zip(row_labels, row_scores, strict=True) if j >= 0]
            for row_labels, row_scores in zip(labels.tolist(), scores.tolist(), strict=True)
        ]

    # ----------------------------------------------------------------------------------------------- save
    def save(self, path: str | Path | None = None) -> Path:
        """Write the index folder ``path`` (default: where it was loaded from) atomically: into a temporary
        sibling, renamed into place; an older index folder there is replaced only once this one is whole."""
        if path is None:
            if self.path is None:
                raise DataError("path", "this index was never saved; give a folder to save it to")
            path = self.path
        path = Path(path)
        if path.exists():
            if not path.is_dir():
                raise DataError(path, "is a file; a pair index is saved as a folder")
            if any(path.iterdir()) and not (path / INDEX_JSON).is_file():
                raise DataError(
                    path,
                    f"is a folder without {INDEX_JSON}: saving replaces only an older pair index; "
                    "choose another folder",
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        faiss = _faiss()
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        try:
            faiss.write_index(self._index, str(tmp / VECTORS))
            _write_items(tmp / ITEMS, self._rows)
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "dim": self.dim,
                "metric": METRIC,
                "kind": self.kind,
                "parameters": self.parameters,
                "count": len(self),
                "model": self.model,
                "rule": rule_text(),
                "vectors_bytes": (tmp / VECTORS).stat().st_size,
            }
            _fsync(tmp / VECTORS)
            # written last, once the rest is on disk: a folder holding index.json holds the rest
            _write_synced(tmp / INDEX_JSON, (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode())
            for name in (VECTORS, ITEMS, INDEX_JSON):
                plain_permissions(tmp / name)
            plain_permissions_dir(tmp)
            _swap_into_place(tmp, path)
            _fsync_dir(path.parent)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.path = path
        return path

    # ------------------------------------------------------------------------------------------ internals
    def _ivf(self):
        return self._index if hasattr(self._index, "nlist") else None

    def _vectors(self, name: str, array) -> np.ndarray:
        """``array`` as C-contiguous float32 ``[n, dim]`` unit rows, or a DataError naming ``name``."""
        try:
            array = np.asarray(array, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise DataError(name, f"not a numeric array ({err})") from None
        if array.ndim == 1:
            array = array[None, :]
        if array.ndim != 2:
            raise DataError(name, f"must be [N, {self.dim}], not shape {list(array.shape)}")
        if array.shape[1] != self.dim:
            raise DataError(name, f"has {array.shape[1]} columns; the index holds {self.dim}-dim embeddings")
        if not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
            raise DataError(name, f"row {bad} holds NaN or infinity")
        norms = np.linalg.norm(array, axis=1)
        if (norms == 0).any():
            raise DataError(
                name, f"row {int(np.flatnonzero(norms == 0)[0])} is all zeros (it has no direction)"
            )
        if np.abs(norms - 1).max(initial=0) > _NORM_TOLERANCE:
            array = array / norms[:, None]
        return np.ascontiguousarray(array, dtype=np.float32)

    def _build_ivf(self, new: np.ndarray):
        """The IVF-Flat index of the vectors held so far followed by ``new`` (the rule in the docstring)."""
        faiss = _faiss()
        held = self._index.reconstruct_n(0, len(self)) if len(self) else None
        everything = new if held is None else np.concatenate([held, new])
        del held
        n = len(everything)
        nlist = nlist_for(n)
        if n > TRAIN_MAX:
            sample = np.sort(np.random.default_rng(0).choice(n, TRAIN_MAX, replace=False))
            train = everything[sample]
        else:
            train = everything
        ivf = faiss.index_factory(self.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf.train(train)
        ivf.nprobe = min(NPROBE, nlist)
        ivf.add(everything)
        self._trained_on = len(train)
        return ivf


# ----------------------------------------------------------------------------------------------- helpers
def _check_model_dict(name: str, model) -> dict:
    if not isinstance(model, dict):
        raise DataError(name, f"must be a dict identifying the embedding model, not {type(model).__name__}")
    try:
        return json.loads(json.dumps(model, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise DataError(name, f"not JSON-serialisable: {err}") from None


def _check_row(name: str, row) -> dict:
    if not isinstance(row, dict):
        raise DataError(name, f"must be a dict, not {type(row).__name__}")
    pair_id = row.get("id")
    if not isinstance(pair_id, str) or not pair_id:
        raise DataError(name, f'needs a non-empty string "id", not {pair_id!r}')
    try:
        return json.loads(json.dumps(row, ensure_ascii=False, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise DataError(name, f"(id {pair_id!r}) is not JSON-serialisable: {err}") from None


_IDENTITY_KEYS = ("sha256", "embedding", "path")


def _same_model(built: dict, given: dict, dim: int) -> bool:
    if given.get("dim", dim) != dim or built.get("dim", dim) != dim:
        return False
    shared = set(built) & set(given)
    if "sha256" in shared:
        shared.discard("path")
    if not shared & set(_IDENTITY_KEYS):
        return False
    return all(built[key] == given[key] for key in shared)


def _describe(model: dict, dim: int | None = None) -> str:
    name = model.get("path") or model.get("embedding") or "(unnamed)"
    details = []
    if model.get("embedding") and model.get("embedding") != name:
        details.append(str(model["embedding"]))
    if model.get("sha256"):
        details.append(f"sha {str(model['sha256'])[:12]}")
    shown_dim = model.get("dim", dim)
    if shown_dim is not None:
        details.append(f"dim {shown_dim}")
    return f"{name} ({', '.join(details)})" if details else str(name)


def _faiss_message(err: BaseException) -> str:
    """faiss's C++ message without its "Error in <signature> at <file>:<line>:" prefix, on one line."""
    text = " ".join(str(err).split())
    match = re.match(r"Error in .*? at \S+:\d+: (.*)$", text)
    text = match.group(1) if match else text or type(err).__name__
    return text[:300]


def _read_meta(meta_path: Path) -> dict:
    if not meta_path.is_file():
        raise DataError(meta_path, "missing: this folder is not a saved pair index")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(meta_path, "not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise DataError(meta_path, f"not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise DataError(meta_path, f"must hold a JSON object, not {type(meta).__name__}")
    if meta.get("format") != FORMAT:
        raise DataError(meta_path, f"format {meta.get('format')!r} is not {FORMAT!r}")
    version = meta.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > VERSION
        why = "a newer changescope wrote it" if newer else "unknown version"
        raise DataError(meta_path, f"version {version!r}: {why} (this one reads version {VERSION})")

    def integer(key: str, least: int) -> int:
        value = meta.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise DataError(meta_path, f'"{key}" must be an integer >= {least}, not {value!r}')
        return value

    integer("dim", 1)
    integer("count", 0)
    integer("vectors_bytes", 0)
    if meta.get("metric") != METRIC:
        raise DataError(meta_path, f'"metric" {meta.get("metric")!r} is not {METRIC!r}')
    if meta.get("kind") not in KINDS:
        raise DataError(meta_path, f'"kind" {meta.get("kind")!r} is not one of {", ".join(KINDS)}')
    if not isinstance(meta.get("parameters"), dict):
        raise DataError(meta_path, '"parameters" must be a JSON object')
    if not isinstance(meta.get("model"), dict):
        raise DataError(meta_path, '"model" must be a JSON object (the embedding model\'s identity)')
    if meta["kind"] == "ivf_flat":
        nprobe = meta["parameters"].get("nprobe")
        if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1:
            raise DataError(meta_path, f'"parameters.nprobe" must be a positive integer, not {nprobe!r}')
    return meta


def _check_faiss_index(
    faiss, vectors_path: Path, index, dim: int, count: int, kind: str, params: dict
) -> None:
    if index.d != dim:
        raise DataError(vectors_path, f"holds {index.d}-dim vectors, {INDEX_JSON} records dim {dim}")
    if index.ntotal != count:
        raise DataError(vectors_path, f"holds {index.ntotal} vectors, {INDEX_JSON} records {count}")
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise DataError(vectors_path, f"metric is not inner product (faiss metric {index.metric_type})")
    expected = faiss.IndexFlatIP if kind == "flat" else faiss.IndexIVFFlat
    if not isinstance(index, expected):
        raise DataError(
            vectors_path, f"is a faiss {type(index).__name__}, {INDEX_JSON} records kind {kind!r}"
        )
    if kind == "ivf_flat":
        if not index.is_trained:
            raise DataError(vectors_path, "the IVF index is not trained")
        nprobe = params["nprobe"]
        if nprobe > index.nlist:
            raise DataError(vectors_path, f"has {index.nlist} IVF lists, {INDEX_JSON} probes {nprobe}")
        index.nprobe = nprobe


def _read_items(items_path: Path, count: int) -> list[dict]:
    if not items_path.is_file():
        raise DataError(items_path, "missing (the index's rows)")
    rows: list[dict] = []
    lines: dict[str, int] = {}
    with open(items_path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise DataError(items_path, f"line {number}: not valid JSON ({err})") from None
            if not isinstance(row, dict):
                raise DataError(
                    items_path, f"line {number}: a row must be a JSON object, not {type(row).__name__}"
                )
            pair_id = row.get("id")
            if not isinstance(pair_id, str) or not pair_id:
                raise DataError(items_path, f'line {number}: needs a non-empty string "id", not {pair_id!r}')
            if pair_id in lines:
                raise DataError(items_path, f"line {number}: id {pair_id!r} repeats line {lines[pair_id]}")
            lines[pair_id] = number
            rows.append(row)
    if len(rows) != count:
        raise DataError(
            items_path, f"holds {len(rows)} rows, {INDEX_JSON} records {count} (truncated or edited)"
        )
    return rows


def _write_items(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make the renames in ``path`` durable (best effort: not every platform can open a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``path``; an older folder there is moved aside first and
    removed after, or moved back if the rename fails."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old_parent = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    old = old_parent / path.name
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        shutil.rmtree(old_parent, ignore_errors=True)
        raise
    shutil.rmtree(old_parent, ignore_errors=True)


def _interrupted_save(path: Path) -> Path | None:
    """The previous version of ``path`` that a save interrupted between its two renames left aside."""
    if not path.parent.is_dir():
        return None
    for candidate in sorted(path.parent.glob(f".{path.name}.*.old")):
        if (candidate / path.name / INDEX_JSON).is_file():
            return candidate / path.name
    return None
