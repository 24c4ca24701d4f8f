"""The `changescope` command as a user runs it: a real subprocess, exit codes, one-line errors."""

import json
import subprocess
import sys

import pytest
from data import make_fixtures as fx

from changescope.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "changescope", *map(str, args)], capture_output=True, text=True, cwd=cwd
    )


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_data_check_clean_dataset_json(tmp_path, capsys):
    root = fx.make_levir_mci(tmp_path / "mci")
    assert main(["data", "check", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "levir-mci"
    assert report["splits"]["train"]["pairs"] == len(fx.LEVIR_PAIRS["train"])


@pytest.mark.parametrize("kind", fx.CORRUPTIONS["levir-mci"])
def test_data_check_reports_each_malformed_variant(tmp_path, capsys, kind):
    root = fx.make_levir_mci(tmp_path / "mci")
    bad = fx.corrupt(root, kind)
    assert main(["data", "check", str(root)]) == 1
    assert bad.name in capsys.readouterr().out


def test_subprocess_errors_are_one_line(tmp_path):
    _assert_one_line_error(run_cli("data", "check", tmp_path / "nowhere"), "nowhere", "not found")
    _assert_one_line_error(
        run_cli("data", "check", tmp_path, "--format", "pascal"), "unknown format 'pascal'"
    )
    root = fx.make_levir_cc(tmp_path / "cc")
    pred = tmp_path / "pred.jsonl"
    pred.write_text('{"id": "test_000001", "caption": "there is no difference"}\n')
    _assert_one_line_error(
        run_cli("score", pred, "--data", root, "--split", "test", "--no-meteor"), "no prediction for id"
    )
    _assert_one_line_error(run_cli("score", pred, "--data", root, "--split", "holdout"), "unknown split")


def test_data_vocab_uses_train_split_only(tmp_path):
    root = fx.make_levir_cc(tmp_path / "cc")
    out = tmp_path / "vocab.json"
    proc = run_cli("data", "vocab", root, "--out", out, "--min-freq", "1")
    assert proc.returncode == 0, proc.stderr
    words = set(json.loads(out.read_text())["words"])
    from changescope.data.readers import open_dataset
    from changescope.data.text import tokenize

    train = {w for e in open_dataset(root, "train").entries for c in e.captions for w in tokenize(c)}
    assert words == train


def test_score_json_keys(tmp_path):
    root = fx.make_levir_cc(tmp_path / "cc")
    from changescope.data.readers import open_dataset

    test = open_dataset(root, "test")
    pred = tmp_path / "pred.jsonl"
    pred.write_text("".join(json.dumps({"id": e.id, "caption": e.captions[0]}) + "\n" for e in test.entries))
    proc = run_cli("score", pred, "--data", root, "--split", "test", "--json", "--no-meteor")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    for key in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S*m"):
        assert key in result
    assert result["BLEU-4"] > 0.99 and result["METEOR"] is None
    assert result["no_change_accuracy"] == 1.0
    table = run_cli("score", pred, "--data", root, "--split", "test", "--no-meteor")
    assert table.returncode == 0 and "CIDEr-D" in table.stdout
