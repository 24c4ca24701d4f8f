"""SynthChange: determinism, exact masks, captions and answers that agree with the pixels, readers."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from changescope.data.readers import detect_format, open_dataset
from changescope.data.readers.levir import LEVIR_NO_CHANGE, LevirMCI
from changescope.data.readers.synthchange import SynthChange
from changescope.data.records import RecordDataset
from changescope.data.sample import validate_sample
from changescope.data.synth import generate, make_pair
from changescope.data.synth.captions import captions
from changescope.data.synth.classes import BUILDING, LC_ROAD, LC_TREE, MASK_CLASSES, ROAD, TREE, WATER
from changescope.data.synth.geometry import component_boxes
from changescope.data.synth.png import encode_png
from changescope.data.synth.questions import vqa
from changescope.data.synth.writer import split_counts, text_rng
from changescope.data.text import tokenize
from changescope.errors import DataError


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate(out, 24, size=64, seed=7)
    return out


# ---------------------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    generate(tmp_path / "a", 5, size=64, seed=3)
    generate(tmp_path / "b", 5, size=64, seed=3)
    generate(tmp_path / "c", 5, size=64, seed=4)
    a, b, c = (tree_digest(tmp_path / n) for n in "abc")
    assert a == b
    assert len(a) > 20
    assert a["images/train/A/train_000000.png"] != c.get("images/train/A/train_000000.png")


def test_pairs_do_not_depend_on_each_other():
    alone = make_pair(11, 5, 64)
    after_others = [make_pair(11, i, 64) for i in range(6)][5]
    assert np.array_equal(alone.image_a, after_others.image_a)
    assert np.array_equal(alone.mask, after_others.mask)


# -------------------------------------------------------------------------------------- exact masks
def _row_col_words(cell: tuple[int, int]) -> tuple[set[str], set[str]]:
    rows = [{"top", "upper"}, set(), {"bottom", "lower"}]
    cols = [{"left"}, set(), {"right"}]
    return rows[cell[0]], cols[cell[1]]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_built_buildings_are_in_the_mask_exactly_and_captions_name_their_place(index):
    size = 128
    pair = make_pair(21, index, size, kinds=["buildings_built"])
    event = pair.event("buildings_built")
    assert event is not None and event.added
    painted = np.zeros((size, size), bool)
    for building in event.added:
        footprint = building.full_mask(size)
        assert (pair.mask[footprint] == BUILDING).all()
        painted |= footprint
    assert np.array_equal(painted, pair.mask == BUILDING)
    assert np.array_equal(painted, pair.mask != 0)
    # the position in every caption comes from the centroid of the mask, computed here independently
    ys, xs = np.nonzero(pair.mask)
    cell = (min(int(3 * (ys.mean() + 0.5) / size), 2), min(int(3 * (xs.mean() + 0.5) / size), 2))
    row_words, col_words = _row_col_words(cell)
    all_rows, all_cols = {"top", "upper", "bottom", "lower"}, {"left", "right"}
    texts = captions(pair, text_rng(21, index))
    assert len(texts) == 5 and len(set(texts)) == 5
    for text in texts:
        words = set(tokenize(text))
        assert words & {"building", "buildings", "house", "houses"}
        assert (words & all_rows) <= row_words and (not row_words or words & row_words), text
        assert (words & all_cols) <= col_words and (not col_words or words & col_words), text
        if cell == (1, 1):
            assert words & {"center", "middle"}, text


@pytest.mark.parametrize("index", range(8))
def test_only_changed_footprints_and_shadows_differ_between_the_clean_renders(index):
    pair = make_pair(5, index, 96)
    changed = pair.mask != 0
    assert np.array_equal(changed, pair.land_cover_a != pair.land_cover_b)
    differs = np.abs(pair.clean_a - pair.clean_b).max(axis=0) > 1e-3
    assert not (differs & ~changed & ~(pair.shadow_a | pair.shadow_b)).any()
    if changed.any():
        assert differs[changed].mean() > 0.98
    assert pair.changed == bool(changed.any()) == bool(pair.events)


def test_mask_classes_follow_the_change_types():
    expected = {
        "roads_built": ROAD,
        "trees_cleared": TREE,
        "water_appeared": WATER,
        "water_dried": WATER,
        "buildings_demolished": BUILDING,
    }
    for k, (kind, cls) in enumerate(expected.items()):
        pair = make_pair(2, k, 128, kinds=[kind])
        event = pair.event(kind)
        assert event is not None, kind
        assert set(np.unique(pair.mask[event.footprint(128)])) == {cls}


def test_unchanged_pairs_are_misregistered_but_keep_an_empty_mask():
    pairs = [make_pair(9, i, 64, changed=False) for i in range(6)]
    assert all(not p.mask.any() and not p.events for p in pairs)
    assert any(p.nuisance["shift"] != (0, 0) for p in pairs)
    assert all(max(abs(v) for v in p.nuisance["shift"]) <= 2 for p in pairs)
    changed = make_pair(9, 0, 64, kinds=["trees_cleared"])
    assert changed.nuisance["shift"] == (0, 0)


# ---------------------------------------------------------------------------------------- questions
def _ratio_bin(part: int, total: int) -> str:
    if part == 0:
        return "0"
    pct = 100 * part / total
    k = min(int(np.ceil(pct / 10)) - 1, 9)
    return f"{10 * k}_to_{10 * k + 10}"


_QUESTION_CLASS = {"buildings": BUILDING, "roads": ROAD, "trees": TREE, "water": WATER}


@pytest.mark.parametrize("index", range(10))
def test_vqa_answers_agree_with_the_mask_and_the_painted_objects(index):
    pair = make_pair(13, index, 96)
    answers = vqa(pair, np.random.default_rng(index))
    qtypes = {q for q, _, _ in answers}
    assert {"change_or_not", "change_ratio", "count"} <= qtypes
    for qtype, question, answer in answers:
        words = tokenize(question)
        if qtype == "change_or_not":
            named = [c for w, c in _QUESTION_CLASS.items() if w in words]
            present = (pair.mask == named[0]).any() if named else pair.mask.any()
            assert answer == ("yes" if present else "no"), question
        elif qtype == "change_ratio":
            assert answer == _ratio_bin(int(np.count_nonzero(pair.mask)), pair.mask.size)
        elif qtype == "count":
            kind = {"built": "buildings_built", "demolished": "buildings_demolished"}[words[-1]]
            kind = "roads_built" if "roads" in words else kind
            event = pair.event(kind)
            assert answer == str(0 if event is None else len(event.added or event.removed)), question


def test_yes_and_no_both_occur():
    answers = [a for i in range(12) for q, _, a in vqa(make_pair(3, i, 64), np.random.default_rng(i))]
    assert "yes" in answers and "no" in answers


# ------------------------------------------------------------------------------------ dataset files
def test_levir_mci_and_record_readers_read_the_output(dataset):
    summary = json.loads((dataset / "synthchange.json").read_text())
    assert detect_format(dataset) == "synthchange"
    assert isinstance(open_dataset(dataset, "val"), SynthChange)
    for split in ("train", "val", "test"):
        levir = LevirMCI(dataset, split)
        assert len(levir) == summary["counts"][split]["pairs"] == split_counts(24, (0.7, 0.15, 0.15))[split]
        sample = validate_sample(levir[0])
        assert set(sample["mask"].unique().tolist()) <= {0, 1, 2}
        for task in ("vqa", "grounding", "retrieval"):
            records = RecordDataset(dataset / "records.jsonl", task=task, split=split)
            assert len(records) >= len(levir)
            validate_sample(records[0])
    grounding = RecordDataset(dataset / "records.jsonl", task="grounding")
    negatives = [r for r in grounding.records if r.meta["negative"]]
    positives = [r for r in grounding.records if not r.meta["negative"]]
    assert negatives and positives
    assert all(r.boxes == [] for r in negatives)
    sample = validate_sample(grounding[grounding.records.index(positives[0])])
    assert sample["mask"].any() and len(sample["boxes"]) >= 1


def test_synthchange_reader_decodes_all_five_classes_and_flags_match_captions(dataset):
    seen: set[int] = set()
    changed = []
    for split in ("train", "val", "test"):
        data = SynthChange(dataset, split)
        for i in range(len(data)):
            sample = validate_sample(data[i])
            seen |= set(sample["mask"].unique().tolist())
            assert sample["changed"] == bool(sample["mask"].any())
            assert SynthChange.changed_from_captions(sample["captions"]) == sample["changed"]
            if not sample["changed"]:
                assert sample["captions"] == list(LEVIR_NO_CHANGE)
            changed.append(sample["changed"])
    assert seen == set(range(len(MASK_CLASSES)))
    assert 0.25 <= np.mean(changed) <= 0.75


def test_grounding_targets_are_binary_and_boxes_cover_them(dataset):
    grounding = RecordDataset(dataset / "records.jsonl", task="grounding")
    for record in grounding.records[:12]:
        values = np.asarray(Image.open(dataset / record.mask))
        assert set(np.unique(values).tolist()) <= {0, 255}
        assert (values.any()) == bool(record.boxes)
        h, w = values.shape
        for x0, y0, x1, y1 in record.boxes:
            rows, cols = slice(round(y0 * h), round(y1 * h)), slice(round(x0 * w), round(x1 * w))
            assert values[rows, cols].any()


def test_caption_json_is_karpathy_style(dataset):
    images = json.loads((dataset / "LevirCCcaptions.json").read_text())["images"]
    assert [im["imgid"] for im in images] == list(range(len(images)))
    for image in images:
        assert image["filename"] == f"{image['split']}_{int(image['filename'][-10:-4]):06d}.png"
        assert len(image["sentences"]) == 5
        for sentence in image["sentences"]:
            assert sentence["tokens"] == tokenize(sentence["raw"])
            assert sentence["raw"] == sentence["raw"].lower()
        assert image["sentids"] == [s["sentid"] for s in image["sentences"]]


def test_split_counts_follow_the_fractions(tmp_path):
    summary = generate(tmp_path / "d", 10, size=64, split_fractions=(0.5, 0.3, 0.2))
    counts = {s: summary["counts"][s]["pairs"] for s in ("train", "val", "test")}
    assert counts == {"train": 5, "val": 3, "test": 2}
    names = sorted(p.name for p in (tmp_path / "d/images/val/A").iterdir())
    assert names == [f"val_{i:06d}.png" for i in range(3)]


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "kwargs",
    [
        {"pairs": 0},
        {"pairs": 2, "size": 32},
        {"pairs": 2, "split_fractions": (0.5, 0.5, 0.5)},
        {"pairs": 2, "split_fractions": (1.2, -0.1, -0.1)},
        {"pairs": 2, "split_fractions": (1.0, 0.0)},
        {"pairs": 2, "seed": -1},
    ],
)
def test_bad_arguments_raise_one_line_errors(tmp_path, kwargs):
    with pytest.raises(ValueError) as err:
        generate(tmp_path / "out", **kwargs)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


def test_existing_non_empty_output_is_refused_and_untouched(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    before = tree_digest(out)
    with pytest.raises(DataError, match="refusing to overwrite") as err:
        generate(out, 2, size=64)
    assert "\n" not in str(err.value) and str(out) in str(err.value)
    assert tree_digest(out) == before
    generate(tmp_path / "empty_is_fine", 1, size=64)


def test_an_interrupted_run_leaves_no_output(tmp_path):
    def stop(done: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "out", 5, size=64, progress=stop)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------- helpers
def test_component_boxes_are_normalised_per_8_connected_component():
    mask = np.zeros((10, 20), bool)
    mask[1:3, 2:5] = True
    mask[3, 5] = True  # touches the first block diagonally
    mask[6:9, 10:20] = True
    assert component_boxes(mask) == [[2 / 20, 1 / 10, 6 / 20, 4 / 10], [10 / 20, 6 / 10, 1.0, 9 / 10]]
    assert component_boxes(np.zeros((4, 4), bool)) == []


@pytest.mark.parametrize("shape", [(7, 5), (16, 9, 3)])
def test_png_encoder_round_trips_through_pillow(shape):
    array = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(encode_png(array))))
    assert np.array_equal(decoded, array)


@pytest.mark.parametrize("size", [64, 100])
def test_any_size_from_64_works(size):
    pair = make_pair(1, 3, size, kinds=["buildings_built", "trees_cleared"])
    assert pair.image_a.shape == pair.image_b.shape == (size, size, 3)
    assert pair.mask.shape == (size, size) and pair.mask.any()


def _gap(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance between the True pixels of two masks (brute force on pixel centres)."""
    pa, pb = np.argwhere(a).astype(float), np.argwhere(b).astype(float)
    if len(pa) == 0 or len(pb) == 0:
        return float("inf")
    return float(np.sqrt(((pa[:, None, :] - pb[None, :, :]) ** 2).sum(-1).min()))


def test_relations_in_captions_hold_in_the_painted_scene():
    """A road / tree relation in a building caption means every new building lies close to a road /
    to trees that are in both images (6 m to a road edge, 8 m between outlines, 0.5 m per pixel)."""
    size, checked = 128, 0
    scale = size / 256
    for index in range(16):
        pair = make_pair(31, index, size, kinds=["buildings_built"])
        event = pair.event("buildings_built")
        text = " ".join(captions(pair, text_rng(31, index)))
        unchanged_trees = (pair.land_cover_a == LC_TREE) & (pair.land_cover_b == LC_TREE)
        roads = pair.land_cover_b == LC_ROAD
        for building in event.added:
            footprint = building.full_mask(size)
            if any(p in text for p in ("along the road", "beside the road", "by the road")):
                assert _gap(footprint, roads) <= 12 * scale + 1.5, index
                checked += 1
            if any(p in text for p in ("near the trees", "next to the trees", "close to the trees")):
                assert _gap(footprint, unchanged_trees) <= 16 * scale + 1.5, index
                checked += 1
    assert checked > 0
