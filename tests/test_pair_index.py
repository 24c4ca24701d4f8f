"""The pair index: exact and IVF-Flat search over pair embeddings, incremental adds, the saved folder."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

pytest.importorskip("faiss")

from changescope.errors import DataError, MissingDependencyError  # noqa: E402
from changescope.retrieval import index as pair_index  # noqa: E402
from changescope.retrieval.index import PairIndex  # noqa: E402

DIM = 32
MODEL = {
    "path": "/models/retrieval.safetensors",
    "sha256": "ab" * 32,
    "embedding": "retrieval-v1",
    "dim": DIM,
}


def unit(n: int, seed: int = 0, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def rows(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"pair-{i:05d}", "before": f"a/{i}.tif", "after": f"b/{i}.tif", "date": "2024-05-01"}
        for i in range(start, start + n)
    ]


def filled(n: int, seed: int = 0) -> tuple[PairIndex, np.ndarray]:
    index = PairIndex.create(DIM, MODEL)
    vectors = unit(n, seed)
    assert index.add(vectors, rows(n)) == n
    return index, vectors


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[f"pair-{j:05d}" for j in row] for row in order], np.take_along_axis(scores, order, axis=1)


def ids_and_scores(results) -> tuple[list[list[str]], np.ndarray]:
    return [[row["id"] for row, _ in hits] for hits in results], np.array(
        [[score for _, score in hits] for hits in results]
    )


def one_line_error(excinfo, file) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert message.startswith(f"{file}: "), message
    return message


@pytest.fixture
def small_threshold(monkeypatch):
    """Make the IVF path reachable with a few hundred vectors (nlist 8: 39 training points per list)."""
    monkeypatch.setattr(pair_index, "EXACT_BELOW", 500)


# --------------------------------------------------------------------------------------------- exact path
def test_exact_search_equals_numpy_brute_force():
    index, vectors = filled(300)
    queries = unit(20, seed=1)
    got_ids, got_scores = ids_and_scores(index.search(queries, k=10))
    want_ids, want_scores = brute_force(vectors, queries, 10)
    assert index.kind == "flat" and len(index) == 300
    assert got_ids == want_ids
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-5)
    hits = index.search(queries[0], k=3)  # one [dim] query
    assert len(hits) == 1 and [row["id"] for row, _ in hits[0]] == want_ids[0][:3]
    assert hits[0][0][0]["before"] == f"a/{int(want_ids[0][0][5:])}.tif"  # the caller's fields come back


def test_a_few_queries_run_on_one_thread_and_the_setting_is_restored(monkeypatch):
    import faiss

    index, vectors = filled(50)
    seen = []
    real_search = type(index._index).search

    def spy(self, x, k, **kwargs):
        seen.append(faiss.omp_get_max_threads())
        return real_search(self, x, k, **kwargs)

    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        monkeypatch.setattr(type(index._index), "search", spy)
        index.search(vectors[:1], k=3)
        assert faiss.omp_get_max_threads() == 2
        index.search(vectors[:30], k=3)  # a batch keeps every thread
        assert seen == [1, 2] and faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(previous)


def test_k_larger_than_the_index_gives_all_rows_and_empty_index_gives_none():
    index, _ = filled(7)
    results = index.search(unit(2, seed=3), k=50)
    assert [len(hits) for hits in results] == [7, 7]
    assert all(a >= b for hits in results for (_, a), (_, b) in zip(hits, hits[1:], strict=False))
    assert PairIndex.create(DIM, MODEL).search(unit(3), k=5) == [[], [], []]


def test_unnormalised_vectors_are_normalised_and_bad_ones_refused():
    index = PairIndex.create(DIM, MODEL)
    vectors = unit(5)
    index.add(vectors * 7.0, rows(5))
    (top, score), *_ = index.search(vectors[2] * 0.1, k=1)[0]
    assert top["id"] == "pair-00002" and score == pytest.approx(1.0, abs=1e-5)

    nan = unit(3)
    nan[1, 4] = np.nan
    cases = [
        (lambda: index.add(nan, rows(3, 10)), "embeddings: row 1 holds NaN"),
        (lambda: index.add(unit(3, dim=16), rows(3, 10)), "embeddings: has 16 columns"),
        (lambda: index.add(np.zeros((2, DIM)), rows(2, 10)), "embeddings: row 0 is all zeros"),
        (lambda: index.add(unit(3), rows(2, 10)), "rows: 2 rows for 3 embeddings"),
        (lambda: index.add(unit(1), [{"before": "x"}]), 'rows[0]: needs a non-empty string "id"'),
        (lambda: index.add(unit(1), ["pair-x"]), "rows[0]: must be a dict"),
        (lambda: index.add(unit(1), [{"id": "x", "when": object()}]), "rows[0]: (id 'x') is not JSON"),
        (lambda: index.search(unit(1, dim=8)), "queries: has 8 columns"),
        (lambda: index.search(unit(1), k=0), "k: must be a positive integer"),
    ]
    for call, start in cases:
        with pytest.raises(DataError) as excinfo:
            call()
        assert str(excinfo.value).startswith(start), str(excinfo.value)
    assert len(index) == 5  # nothing half-added


def test_incremental_add_skips_ids_already_there():
    index = PairIndex.create(DIM, MODEL)
    vectors = unit(300)
    assert index.add(vectors[:200], rows(200)) == 200
    assert index.add(vectors, rows(300)) == 100  # the folder again, with 100 new pairs
    assert index.add(vectors, rows(300)) == 0
    batch = rows(2, 300) + rows(1, 300)  # an id twice in one batch: the first is kept
    assert index.add(unit(3, seed=9), batch) == 2
    assert len(index) == 302 and index.ids() == [f"pair-{i:05d}" for i in range(302)]
    assert "pair-00301" in index and "pair-99999" not in index
    got_ids, _ = ids_and_scores(index.search(vectors[250:260], k=1))
    assert got_ids == [[f"pair-{i:05d}"] for i in range(250, 260)]


# ------------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip_gives_identical_results(tmp_path):
    index, _ = filled(300)
    queries = unit(25, seed=2)
    before = index.search(queries, k=8)
    index.save(tmp_path / "idx")
    loaded = PairIndex.load(tmp_path / "idx")
    assert loaded.search(queries, k=8) == before
    assert loaded.ids() == index.ids() and loaded.model == MODEL and loaded.kind == "flat"
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["format"] == "changescope-pair-index" and meta["version"] == 1
    assert (meta["dim"], meta["metric"], meta["kind"], meta["count"]) == (DIM, "inner_product", "flat", 300)
    assert "IndexFlatIP while the index holds fewer than 100000" in meta["rule"]
    lines = (tmp_path / "idx" / "items.jsonl").read_text().splitlines()
    assert len(lines) == 300 and json.loads(lines[7])["id"] == "pair-00007"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary sibling left


def test_an_empty_index_round_trips(tmp_path):
    PairIndex.create(DIM, MODEL).save(tmp_path / "empty")
    loaded = PairIndex.load(tmp_path / "empty")
    assert len(loaded) == 0 and loaded.search(unit(1), k=3) == [[]]


def test_load_add_save_in_place(tmp_path):
    index, vectors = filled(100)
    index.save(tmp_path / "idx")
    again = PairIndex.load(tmp_path / "idx")
    assert again.add(unit(150, seed=5), rows(150, 50)) == 100
    again.save()  # where it was loaded from
    assert len(PairIndex.load(tmp_path / "idx")) == 200
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


# -------------------------------------------------------------------------------------------------- IVF
def test_switch_to_ivf_at_the_threshold_and_adds_after_it(small_threshold, tmp_path):
    index = PairIndex.create(DIM, MODEL)
    vectors = unit(650, seed=4)
    index.add(vectors[:499], rows(499))
    assert index.kind == "flat" and index.nprobe is None
    index.add(vectors[499:500], rows(1, 499))  # reaches 500: rebuilt as IVF-Flat
    assert index.kind == "ivf_flat"
    assert index.parameters == {"nlist": 8, "nprobe": 8, "trained_on": 500}
    assert index.add(vectors[500:], rows(150, 500)) == 150  # straight into the trained lists
    assert index.add(vectors, rows(650)) == 0
    assert len(index) == 650 and index.parameters["trained_on"] == 500

    queries = unit(30, seed=6)
    got_ids, got_scores = ids_and_scores(index.search(queries, k=10))
    want_ids, want_scores = brute_force(vectors, queries, 10)
    assert got_ids == want_ids  # nprobe = nlist here: every list is searched
    np.testing.assert_allclose(got_scores, want_scores, rtol=0, atol=1e-5)
    self_ids, _ = ids_and_scores(index.search(vectors[600:610], k=1))
    assert self_ids == [[f"pair-{i:05d}"] for i in range(600, 610)]

    index.nprobe = 2
    before = index.search(queries, k=10)
    index.save(tmp_path / "ivf")
    loaded = PairIndex.load(tmp_path / "ivf")
    assert loaded.kind == "ivf_flat" and loaded.parameters == {"nlist": 8, "nprobe": 2, "trained_on": 500}
    assert loaded.search(queries, k=10) == before
    meta = json.loads((tmp_path / "ivf" / "index.json").read_text())
    assert (
        meta["kind"] == "ivf_flat" and meta["parameters"]["nlist"] == 8 and "fewer than 500" in meta["rule"]
    )


def test_one_add_past_the_threshold_and_few_probed_lists(small_threshold):
    index = PairIndex.create(DIM, MODEL)
    assert index.add(unit(600, seed=7), rows(600)) == 600
    assert index.kind == "ivf_flat" and index.parameters["nlist"] == 8
    index.nprobe = 1
    results = index.search(unit(3, seed=8), k=600)  # more than one list holds: all lists are searched
    assert [len(hits) for hits in results] == [600, 600, 600]
    with pytest.raises(DataError, match="nprobe: must be an integer from 1 to nlist"):
        index.nprobe = 9


def test_nlist_rule():
    assert pair_index.nlist_for(500) == 8
    assert pair_index.nlist_for(100_000) == 1024
    assert pair_index.nlist_for(1_000_000) == 4096
    assert pair_index.nlist_for(10) == 1


# --------------------------------------------------------------------------------------------- the model
def test_check_model(tmp_path):
    index, _ = filled(10)
    index.check_model(dict(MODEL))
    index.check_model({**MODEL, "path": "/elsewhere/retrieval.safetensors"})  # moved, same sha256
    index.save(tmp_path / "idx")
    loaded = PairIndex.load(tmp_path / "idx")
    other = {**MODEL, "path": "/models/other.safetensors", "sha256": "cd" * 32}
    with pytest.raises(DataError) as excinfo:
        loaded.check_model(other)
    message = one_line_error(excinfo, tmp_path / "idx")
    assert message == (
        f"{tmp_path / 'idx'}: built with model /models/retrieval.safetensors "
        "(retrieval-v1, sha abababababab, dim 32), "
        "not /models/other.safetensors (retrieval-v1, sha cdcdcdcdcdcd, dim 32)"
    )
    with pytest.raises(DataError, match="dim 64"):
        loaded.check_model({**MODEL, "dim": 64})
    with pytest.raises(DataError, match="built with model"):
        loaded.check_model({"name": "unrelated"})  # nothing to compare: not the same model
    with pytest.raises(DataError, match="model: says dim 16"):
        PairIndex.create(DIM, {**MODEL, "dim": 16})


# ------------------------------------------------------------------------------------------ broken folders
@pytest.fixture
def saved(tmp_path):
    index, _ = filled(40)
    return index.save(tmp_path / "idx")


def edit_meta(folder, **changes):
    meta = json.loads((folder / "index.json").read_text())
    meta.update(changes)
    (folder / "index.json").write_text(json.dumps(meta))


def load_error(folder, file) -> str:
    with pytest.raises(DataError) as excinfo:
        PairIndex.load(folder)
    return one_line_error(excinfo, folder / file if file else folder)


def test_corrupt_vectors_faiss(saved):
    vectors = saved / "vectors.faiss"
    size = vectors.stat().st_size
    vectors.write_bytes(b"\x13" * size)  # same size, garbage
    assert "not a readable faiss index" in load_error(saved, "vectors.faiss")
    vectors.write_bytes(b"\x13" * 10)
    assert "is 10 bytes, index.json records" in load_error(saved, "vectors.faiss")
    vectors.unlink()
    assert "missing" in load_error(saved, "vectors.faiss")


def test_truncated_or_broken_items_jsonl(saved):
    items = saved / "items.jsonl"
    text = items.read_text()
    items.write_text(text[: len(text) // 2])  # cut mid-row
    assert "not valid JSON" in load_error(saved, "items.jsonl")
    lines = text.splitlines(keepends=True)
    items.write_text("".join(lines[:-1]))  # cut at a row's end
    assert "holds 39 rows, index.json records 40" in load_error(saved, "items.jsonl")
    items.write_text("".join(lines[:-1]) + "[1, 2]\n")
    assert "line 40: a row must be a JSON object, not list" in load_error(saved, "items.jsonl")
    items.write_text("".join(lines[:-1]) + lines[3])
    assert "line 40: id 'pair-00003' repeats line 4" in load_error(saved, "items.jsonl")
    items.unlink()
    assert "missing" in load_error(saved, "items.jsonl")


def test_bad_index_json(saved):
    meta = saved / "index.json"
    original = meta.read_text()
    edit_meta(saved, dim=64)
    assert "holds 32-dim vectors, index.json records dim 64" in load_error(saved, "vectors.faiss")
    meta.write_text(original)
    edit_meta(saved, count=41)
    assert "holds 40 vectors, index.json records 41" in load_error(saved, "vectors.faiss")
    meta.write_text(original)
    edit_meta(saved, kind="ivf_flat", parameters={"nprobe": 4})
    assert "is a faiss IndexFlatIP, index.json records kind 'ivf_flat'" in load_error(saved, "vectors.faiss")
    for changes, expected in [
        ({"version": 2}, "version 2: a newer changescope wrote it"),
        ({"format": "something-else"}, "format 'something-else' is not 'changescope-pair-index'"),
        ({"kind": "hnsw"}, "\"kind\" 'hnsw' is not one of flat, ivf_flat"),
        ({"metric": "l2"}, "\"metric\" 'l2' is not"),
        ({"dim": "32"}, '"dim" must be an integer >= 1'),
        ({"model": None}, '"model" must be a JSON object'),
    ]:
        meta.write_text(original)
        edit_meta(saved, **changes)
        assert expected in load_error(saved, "index.json")
    meta.write_text(original[:-20])
    assert "not valid JSON" in load_error(saved, "index.json")
    meta.write_text("[]")
    assert "must hold a JSON object, not list" in load_error(saved, "index.json")
    meta.unlink()
    assert "missing: this folder is not a saved pair index" in load_error(saved, "index.json")


def test_not_an_index_folder(tmp_path):
    assert "no such index folder" in load_error(tmp_path / "nowhere", None)
    (tmp_path / "file").write_text("x")
    assert "is a file" in load_error(tmp_path / "file", None)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("keep me")
    index, _ = filled(3)
    with pytest.raises(DataError, match="is a folder without index.json"):
        index.save(tmp_path / "theirs")
    assert (tmp_path / "theirs" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------------------------- atomicity
def test_a_failed_save_leaves_the_old_index_intact(saved, monkeypatch):
    index = PairIndex.load(saved)
    assert index.add(unit(30, seed=11), rows(30, 40)) == 30
    real_write_items = pair_index._write_items

    def half_then_crash(path, rows_):
        real_write_items(path, list(rows_)[:5])
        raise OSError("disk full")

    monkeypatch.setattr(pair_index, "_write_items", half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        index.save()
    monkeypatch.undo()
    assert len(PairIndex.load(saved)) == 40
    assert sorted(p.name for p in saved.parent.iterdir()) == ["idx"]

    real_replace = os.replace

    def fail_onto_target(src, dst):  # the final rename fails after the old folder was moved aside
        if str(src).endswith(".part"):
            raise OSError("rename failed")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_onto_target)
    with pytest.raises(OSError, match="rename failed"):
        index.save()
    monkeypatch.undo()
    assert len(PairIndex.load(saved)) == 40  # moved back
    assert sorted(p.name for p in saved.parent.iterdir()) == ["idx"]
    index.save()
    assert len(PairIndex.load(saved)) == 70


def test_load_points_at_a_version_an_interrupted_save_left_aside(saved):
    aside = saved.parent / ".idx.abc123.old"
    aside.mkdir()
    os.replace(saved, aside / "idx")
    assert f"an interrupted save left the previous version in {aside / 'idx'}" in load_error(saved, None)


# ----------------------------------------------------------------------------------------- missing faiss
def test_missing_faiss_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(MissingDependencyError) as excinfo:
        PairIndex.create(DIM, MODEL)
    assert (
        str(excinfo.value)
        == "the pair index needs the 'faiss-cpu' package: pip install 'changescope[search]'"
    )
