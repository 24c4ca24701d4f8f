"""`changescope describe` on bad input: one line naming the file, exit 1, no output file."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from changescope.data.text import Vocabulary
from changescope.models.change_model import ChangeModel
from changescope.models.hub import save_pretrained
from changescope.models.presets import build_config
from changescope.models.processor import ChangeProcessor


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    vocab = Vocabulary.build(["a new road is built", "there is no difference"], 1)
    config = build_config(
        "lite",
        len(vocab),
        backbone_pretrained=False,
        image_size=64,
        encoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4},
        decoder_kwargs={"d_model": 32, "num_layers": 1, "num_heads": 4, "ffn_dim": 64, "max_len": 10},
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("m") / "model"
    save_pretrained(ChangeModel(config).eval(), ChangeProcessor(vocab, 64, 10), path)
    return path


def _image(path, shape, mode=None):
    array = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    Image.fromarray(array, mode).save(path)
    return path


def describe(*args):
    return subprocess.run(
        [sys.executable, "-m", "changescope", "describe", *map(str, args)], capture_output=True, text=True
    )


def test_any_size_and_band_rule(tmp_path, model_dir):
    a = _image(tmp_path / "a.png", (90, 120, 3))
    b = _image(tmp_path / "b.png", (90, 120, 4), "RGBA")  # 4 bands: the first 3 are used
    proc = describe(model_dir, a, b, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["caption"] is not None


@pytest.mark.parametrize("case", ["missing", "unreadable", "sizes", "one-band"])
def test_bad_pairs_are_one_line_errors(tmp_path, model_dir, case):
    a = _image(tmp_path / "a.png", (64, 64, 3))
    b = tmp_path / "b.png"
    if case == "unreadable":
        b.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif case == "sizes":
        _image(b, (32, 64, 3))
    elif case == "one-band":
        _image(b, (64, 64), "L")
    proc = describe(model_dir, a, b)
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "b.png" in proc.stderr


def test_folder_with_a_broken_pair_writes_nothing(tmp_path, model_dir):
    for side in ("A", "B"):
        (tmp_path / "pairs" / side).mkdir(parents=True)
        _image(tmp_path / "pairs" / side / "p1.png", (64, 64, 3))
    _image(tmp_path / "pairs" / "A" / "p2.png", (64, 64, 3))
    (tmp_path / "pairs" / "B" / "p2.png").write_bytes(b"junk")
    out = tmp_path / "captions.jsonl"
    proc = describe(model_dir, tmp_path / "pairs", "--out", out)
    assert proc.returncode == 1 and "p2.png" in proc.stderr
    assert not out.exists() and not list(tmp_path.glob("*.part"))


def test_bad_model_directories(tmp_path, model_dir):
    a = _image(tmp_path / "a.png", (64, 64, 3))
    b = _image(tmp_path / "b.png", (64, 64, 3))
    (tmp_path / "nomodel").mkdir()
    (tmp_path / "nomodel" / "model.safetensors").write_bytes(b"")
    proc = describe(tmp_path / "nomodel", a, b)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "nomodel" in proc.stderr and "config.json not found" in proc.stderr
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for name in ("config.json", "model.safetensors"):
        (wrong / name).write_bytes((model_dir / name).read_bytes())
    Vocabulary.build(["another vocabulary entirely here"], 1).save(wrong / "vocab.json")
    proc = describe(wrong, a, b)
    assert proc.returncode == 1 and "vocab.json" in proc.stderr and "wrong vocabulary" in proc.stderr


def test_folder_streams_into_a_part_file_and_resumes(tmp_path, model_dir):
    import json

    for side in ("A", "B"):
        (tmp_path / "pairs" / side).mkdir(parents=True)
        for i in range(5):
            _image(tmp_path / "pairs" / side / f"p{i}.png", (64, 64, 3))
    out = tmp_path / "captions.jsonl"
    assert describe(model_dir, tmp_path / "pairs", "--out", out, "--batch-size", "2").returncode == 0
    full = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in full] == [f"p{i}" for i in range(5)] and not list(tmp_path.glob("*.part"))
    # an interrupted run: two complete rows (marked, to see they are kept, not redone) and a torn line
    kept = [{**full[0], "caption": "KEPT"}, {**full[3], "caption": "KEPT"}]
    partial = tmp_path / "captions.jsonl.part"
    partial.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"id": "p1", "capt')
    out.unlink()
    proc = describe(model_dir, tmp_path / "pairs", "--out", out)
    assert proc.returncode == 0 and "2 kept from an interrupted run" in proc.stdout
    resumed = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert sorted(resumed) == [f"p{i}" for i in range(5)] and not partial.exists()
    assert resumed["p0"]["caption"] == resumed["p3"]["caption"] == "KEPT"
    assert [resumed[f"p{i}"] for i in (1, 2, 4)] == [full[i] for i in (1, 2, 4)]
