"""Many pairs per process: folders and manifests (``tasks/pairs.py``), and describe / detect / ask over them.

``detect FOLDER_OR_MANIFEST --out DIR`` writes ``DIR/<id>/`` and ``DIR/results.jsonl`` and resumes; the
batched ``iter_detections`` / ``iter_answers`` give what ``detect_pair`` / ``ask_pair`` give pair by pair.
The CLI runs in this process (``cli.main``) on the shipped model; pairs come from SynthChange, plus one
larger than the model's size (tiled) and one of another size.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from changescope.cli import main
from changescope.errors import DataError
from changescope.tasks.pairs import list_pairs, read_manifest


@pytest.fixture(scope="module")
def model():
    from changescope.tasks.inference import load

    return load("default")


@pytest.fixture(scope="module")
def folder(synth, tmp_path_factory):
    """A folder of 5 pairs: 3 SynthChange pairs (64 px), one resized to 90 x 70 and one of 300 x 280
    (larger than the model's 256: mapped tile by tile)."""
    root = tmp_path_factory.mktemp("pairs") / "pairs"
    source = synth / "images" / "test"
    names = sorted(p.name for p in (source / "A").iterdir())[:4]
    for side in ("A", "B"):
        (root / side).mkdir(parents=True)
        for name in names[:3]:
            shutil.copy(source / side / name, root / side / name)
        with Image.open(source / side / names[3]) as image:
            image.convert("RGB").resize((90, 70)).save(root / side / "wide.png")
        rng = np.random.default_rng(0 if side == "A" else 1)
        big = np.zeros((280, 300, 3), np.uint8) + 60
        big[40:120, 50:150] = rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)
        Image.fromarray(big).save(root / side / "big.png")
    return root


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- manifests -------------------------------------------------------------------------------------------


def test_csv_and_jsonl_manifests_resolve_paths_against_their_folder(folder, tmp_path):
    a, b = folder / "A", folder / "B"
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "imgs").symlink_to(folder, target_is_directory=True)
    csv_text = (
        "\ufeffnote, Before ,after,id\n"  # a BOM, an extra column, spaced and capitalised header names
        f'"a, quoted note",imgs/A/wide.png,imgs/B/wide.png,\n'
        "\n"  # blank lines are skipped
        f"x,{a / 'big.png'},{b / 'big.png'},the big one\n"
    )
    pairs = read_manifest(_write(lists / "m.csv", csv_text))
    assert pairs == [
        ("wide", lists / "imgs/A/wide.png", lists / "imgs/B/wide.png"),  # id: the after file's stem
        ("the big one", a / "big.png", b / "big.png"),
    ]
    jsonl = '{"before": "imgs/A/wide.png", "after": "imgs/B/wide.png", "id": 7, "extra": [1]}\n\n'
    jsonl += json.dumps({"before": str(a / "big.png"), "after": str(b / "big.png")}) + "\n"
    pairs = read_manifest(_write(lists / "m.jsonl", jsonl))
    assert pairs == [
        ("7", lists / "imgs/A/wide.png", lists / "imgs/B/wide.png"),
        ("big", a / "big.png", b / "big.png"),
    ]
    assert list_pairs(lists / "m.jsonl") == pairs
    assert [p[0] for p in list_pairs(folder)] == ["big", "test_000000", "test_000001", "test_000002", "wide"]


@pytest.mark.parametrize(
    "name, text, fragment",
    [
        ("m.csv", "", "line 1: empty manifest"),
        ("m.csv", "before,after\n", "line 2: no pairs listed"),
        ("m.csv", "before,image\nA/wide.png,B/wide.png\n", "line 1: no 'after' column"),
        ("m.csv", "before,after\nA/wide.png,B/wide.png\nA/big.png\n", "line 3: no 'after'"),
        (
            "m.csv",
            "before,after\nA/wide.png,B/wide.png\nA/big.png,B/none.png\n",
            "line 3: after image not found",
        ),
        ("m.csv", "before,after\nA/wide.png,  \n", "line 2: 'after' is empty"),
        ("m.csv", "before,after\nA/wide.png,B\n", "line 2: after image is a folder"),
        (
            "m.csv",
            "id,before,after\nx,A/wide.png,B/wide.png\nx,A/big.png,B/big.png\n",
            "line 3: id 'x' is already used on line 2",
        ),
        (
            "m.csv",
            "before,after\nA/wide.png,B/wide.png\nA/big.png,B/wide.png\n",
            "line 3: id 'wide' is already used",
        ),
        ("m.csv", "id,before,after\n../up,A/wide.png,B/wide.png\n", "line 2: id '../up' is not a plain name"),
        ("m.jsonl", "", "line 1: no pairs listed"),
        (
            "m.jsonl",
            '{"before": "A/wide.png", "after": "B/wide.png"}\n{"before": "A/big.png"\n',
            "line 2: not valid JSON",
        ),
        ("m.jsonl", '\n["A/wide.png", "B/wide.png"]\n', "line 2: expected an object"),
        ("m.jsonl", '{"before": "A/wide.png"}\n', "line 1: no 'after'"),
        ("m.jsonl", '{"before": "A/wide.png", "after": 3}\n', "line 1: 'after' must be a file path"),
        ("m.jsonl", '{"before": "A/wide.png", "after": "B/wide.png", "id": [1]}\n', "line 1: 'id' must be"),
        ("m.txt", "before,after\n", "not '.txt'"),
    ],
)
def test_bad_manifest_is_one_line_naming_file_and_line(folder, tmp_path, name, text, fragment):
    manifest = folder / name  # relative paths in the rows resolve against the pairs folder
    manifest.write_text(text, encoding="utf-8")
    try:
        with pytest.raises(DataError) as err:
            read_manifest(manifest)
    finally:
        manifest.unlink()
    message = str(err.value)
    assert message.startswith(f"{manifest}: ") and fragment in message, message
    assert len(message.splitlines()) == 1


def test_bad_manifest_through_the_cli_is_one_line_and_exit_1(folder, tmp_path, capsys):
    manifest = _write(tmp_path / "m.csv", f"before,after\n{folder / 'A/wide.png'},{folder / 'B/gone.png'}\n")
    for argv in (
        ["describe", manifest],
        ["detect", manifest, "--out", tmp_path / "det"],
        ["ask", manifest, "what changed?", "--out", tmp_path / "a.jsonl"],
    ):
        code, _, err = _run(argv, capsys)
        assert code == 1 and err.strip().splitlines() == [
            f"error: {manifest}: line 2: after image not found: {folder / 'B/gone.png'}"
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]
    assert _run(["detect", tmp_path / "nowhere", "--out", tmp_path / "det"], capsys)[0] == 1
    assert _run(["describe", _write(tmp_path / "notes.txt", "x")], capsys)[2].count("\n") == 1


# -- detect over many pairs ------------------------------------------------------------------------------


def _rows(path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def test_batched_iter_detections_equals_detect_pair(model, folder):
    from changescope.tasks.detection import detect_pair, iter_detections
    from changescope.tasks.inference import Decoding

    m, processor, _ = model
    pairs = list_pairs(folder)
    batched = list(iter_detections(m, processor, iter(pairs), 10, Decoding(), None, batch_size=3))
    assert len(batched) == len(pairs)
    for (pair_id, a, b), found in zip(pairs, batched, strict=True):
        alone = detect_pair(m, processor, a, b, 10)
        np.testing.assert_array_equal(found.mask, alone.mask, err_msg=pair_id)
        assert found.result == alone.result
        # the decoded after image is kept, exactly as read_rgb reads the file
        from changescope.data.imageio import read_rgb

        np.testing.assert_array_equal(found.image, read_rgb(b))
    assert batched[0].mask.shape == (280, 300) and batched[-1].mask.shape == (70, 90)
    # resampling to the model's GSD takes the per-pair path for every pair, with the same results
    coarse = list(iter_detections(m, processor, pairs[1:3], 10, Decoding(), 3.0, batch_size=2))
    for (_, a, b), found in zip(pairs[1:3], coarse, strict=True):
        np.testing.assert_array_equal(found.mask, detect_pair(m, processor, a, b, 10, gsd=3.0).mask)


def test_detect_folder_writes_a_folder_per_pair_and_results_jsonl(model, folder, tmp_path, capsys):
    from changescope.tasks.detection import detect_pair

    m, processor, path = model
    out = tmp_path / "det"
    code, printed, err = _run(
        ["detect", folder, "--out", out, "--batch-size", "2", "--min-area", "4"], capsys
    )
    assert code == 0, err
    assert "wrote 5 results" in printed
    pairs = list_pairs(folder)
    assert sorted(p.name for p in out.iterdir()) == sorted([p[0] for p in pairs] + ["results.jsonl"])
    rows = _rows(out / "results.jsonl")
    assert list(rows) == [p[0] for p in pairs]  # in the pairs' order
    for pair_id, a, b in pairs:
        assert sorted(p.name for p in (out / pair_id).iterdir()) == ["mask.png", "overlay.png", "result.json"]
        result = json.loads((out / pair_id / "result.json").read_text())
        assert rows[pair_id] == {"id": pair_id, **result}
        alone = detect_pair(m, processor, a, b, 4)
        np.testing.assert_array_equal(np.asarray(Image.open(out / pair_id / "mask.png")), alone.mask)
        assert result == json.loads(json.dumps({**alone.result, "model": str(path)}))
        with Image.open(out / pair_id / "overlay.png") as overlay:
            assert overlay.size == Image.open(b).size


def test_detect_rerun_redoes_only_missing_pairs_and_overwrite_redoes_all(folder, tmp_path, capsys):
    out = tmp_path / "det"
    assert _run(["detect", folder, "--out", out], capsys)[0] == 0
    first = _rows(out / "results.jsonl")
    # mark two finished pairs (to see that they are kept, not redone); remove one pair's folder
    for pair_id in ("big", "test_000001"):
        record = out / pair_id / "result.json"
        record.write_text(json.dumps({**json.loads(record.read_text()), "caption": "KEPT"}))
    shutil.rmtree(out / "test_000000")
    code, printed, _ = _run(["detect", folder, "--out", out], capsys)
    assert code == 0 and "(4 kept from an earlier run)" in printed
    again = _rows(out / "results.jsonl")
    assert (
        sorted(again) == sorted(first)
        and again["big"]["caption"] == again["test_000001"]["caption"] == "KEPT"
    )
    assert again["test_000000"] == first["test_000000"] and (out / "test_000000" / "mask.png").is_file()

    # an interrupted run: results.jsonl.part with one complete row and a torn line, one folder missing
    partial = out / "results.jsonl.part"
    partial.write_text(json.dumps(again["wide"]) + "\n" + '{"id": "big", "capt')
    (out / "results.jsonl").unlink()
    shutil.rmtree(out / "test_000002")
    code, printed, _ = _run(["detect", folder, "--out", out], capsys)
    assert code == 0 and "(4 kept from an earlier run)" in printed and not partial.exists()
    resumed = _rows(out / "results.jsonl")
    assert sorted(resumed) == sorted(first) and resumed["test_000002"] == first["test_000002"]
    assert resumed["big"]["caption"] == "KEPT"

    code, printed, _ = _run(["detect", folder, "--out", out, "--overwrite"], capsys)
    assert code == 0 and "kept" not in printed
    assert _rows(out / "results.jsonl") == first  # every pair redone
    assert json.loads((out / "big" / "result.json").read_text())["caption"] != "KEPT"


def test_detect_folder_refuses_a_foreign_output_folder_before_loading(folder, tmp_path, capsys):
    out = tmp_path / "det"
    (out / "wide").mkdir(parents=True)
    (out / "results.jsonl").write_text("")
    (out / "wide" / "holiday.jpg").write_bytes(b"not ours")
    code, _, err = _run(["detect", folder, "--out", out], capsys)
    assert code == 1 and "did not write" in err and "wide" in err
    assert sorted(p.name for p in out.rglob("*")) == ["holiday.jpg", "results.jsonl", "wide"]


# -- ask and describe over many pairs --------------------------------------------------------------------


def test_ask_over_a_manifest_writes_one_row_per_pair(model, folder, tmp_path, capsys):
    from changescope.tasks.vqa import ask_pair, iter_answers

    m, processor, path = model
    lines = [
        {"id": "one", "before": "A/test_000000.png", "after": "B/test_000000.png"},
        {"before": "A/wide.png", "after": "B/wide.png"},
        {"id": "three", "before": "A/test_000002.png", "after": "B/test_000002.png"},
    ]
    manifest = _write(folder / "ask.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "answers.jsonl"
    try:
        code, printed, err = _run(
            ["ask", manifest, "has anything changed?", "--out", out, "--batch-size", "2"], capsys
        )
        assert code == 0 and "wrote 3 answers" in printed, err
        rows = _rows(out)
        assert list(rows) == ["one", "wide", "three"]
        pairs = read_manifest(manifest)
        batched = list(iter_answers(m, processor, pairs, "has anything changed?", batch_size=3))
        for (pair_id, a, b), answer in zip(pairs, batched, strict=True):
            alone = ask_pair(m, processor, a, b, "has anything changed?")
            assert rows[pair_id] == {"id": pair_id, **alone.result, "model": str(path)}
            assert answer.result == alone.result
            np.testing.assert_array_equal(answer.mask, alone.mask)
            assert answer.image.shape == (*alone.mask.shape, 3)
        code, printed, _ = _run(["ask", manifest, "has anything changed?"], capsys)
        assert code == 0 and [line.split("\t")[:2] for line in printed.splitlines()] == [
            [i, rows[i]["answer"]] for i in rows
        ]
    finally:
        manifest.unlink()


def test_describe_over_a_manifest(folder, tmp_path, capsys):
    manifest = _write(
        tmp_path / "m.csv",
        f"id,before,after\nfirst,{folder / 'A/test_000001.png'},{folder / 'B/test_000001.png'}\n"
        f"second,{folder / 'A/big.png'},{folder / 'B/big.png'}\n",
    )
    out = tmp_path / "captions.jsonl"
    code, printed, err = _run(["describe", "default", manifest, "--out", out], capsys)
    assert code == 0 and "wrote 2 captions" in printed, err
    rows = _rows(out)
    assert list(rows) == ["first", "second"]
    code, printed, _ = _run(["describe", folder / "A/test_000001.png", folder / "B/test_000001.png"], capsys)
    assert printed.strip() == rows["first"]["caption"]


def test_api_detect_and_ask_take_lists_of_pairs(model, folder):
    from changescope.api import ChangePipeline

    pipe = ChangePipeline(*model)
    pairs = list_pairs(folder)
    befores, afters = [p[1] for p in pairs], [p[2] for p in pairs]
    found = pipe.detect(befores, afters, batch_size=2)
    assert len(found) == len(pairs)
    for (_, a, b), detection in zip(pairs, found, strict=True):
        np.testing.assert_array_equal(detection.mask, pipe.detect(a, b).mask)
    answers = pipe.ask(befores[:2], afters[:2], "is there any change?", batch_size=2)
    assert [x.result for x in answers] == [
        pipe.ask(a, b, "is there any change?").result for a, b in zip(befores[:2], afters[:2], strict=True)
    ]
