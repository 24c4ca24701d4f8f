import json

import pytest

from changescope.data.text import Vocabulary, normalize, tokenize
from changescope.errors import DataError


def test_tokenize_rule():
    assert tokenize("Two new buildings, at the top-left.") == [
        "two",
        "new",
        "buildings",
        "at",
        "the",
        "top",
        "left",
    ]
    assert tokenize("the building's roof") == ["the", "building's", "roof"]
    assert tokenize("  ") == []
    assert normalize(" There is NO difference . ") == "there is no difference"


def test_build_counts_train_only_with_ge_rule():
    captions = ["a road", "a road", "a house"]
    vocab = Vocabulary.build(captions, min_freq=2)
    assert vocab.itos == ["<pad>", "<unk>", "<start>", "<end>", "a", "road"]
    assert "house" not in vocab
    # ties are broken alphabetically so ids never depend on input order
    assert Vocabulary.build(["b a", "a b"], min_freq=1).itos[4:] == ["a", "b"]


def test_encode_decode_unk_and_max_len():
    vocab = Vocabulary.build(["a new road is built"], min_freq=1)
    ids = vocab.encode("A new bridge is built.")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert vocab.unk_id in ids
    assert vocab.decode(ids) == "a new is built"
    assert vocab.decode(vocab.encode("a new road is built", max_len=4)) == "a new"
    assert vocab.decode([vocab.start_id, vocab.stoi["road"], vocab.end_id, vocab.stoi["a"]]) == "road"


def test_save_load_round_trip_and_hash(tmp_path):
    vocab = Vocabulary.build(["two buildings are built", "a road appears"], min_freq=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded.itos == vocab.itos and loaded.sha256 == vocab.sha256
    assert Vocabulary.build(["something else"], min_freq=1).sha256 != vocab.sha256


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": "other"}), "not a changescope vocabulary"),
        (json.dumps({"format": "changescope-vocab/1", "specials": ["<pad>"], "words": []}), "special tokens"),
        (
            json.dumps(
                {
                    "format": "changescope-vocab/1",
                    "specials": ["<pad>", "<unk>", "<start>", "<end>"],
                    "words": ["a", "a"],
                }
            ),
            "unique",
        ),
    ],
)
def test_load_rejects_bad_files(tmp_path, content, problem):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(DataError, match=problem) as info:
        Vocabulary.load(path)
    assert "vocab.json" in str(info.value) and "\n" not in str(info.value)
