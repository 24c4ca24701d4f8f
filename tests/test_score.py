import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from changescope.data.readers.levir import LEVIR_NO_CHANGE
from changescope.errors import DataError
from changescope.metrics.score import score_predictions

CHANGED = {
    "test_000001": ["A new road is built across the field.", "a road appears in the middle of the scene"],
    "test_000004": ["two buildings are built at the top left", "some houses appear at the top left corner"],
}
SPLITS = {
    "train_000001": "train",
    "val_000002": "val",
    "test_000001": "test",
    "test_000003": "test",  # no change (the five LEVIR sentences)
    "test_000004": "test",
}


def _levir(root: Path) -> Path:
    images = []
    for name, split in SPLITS.items():
        sentences = CHANGED.get(name, list(LEVIR_NO_CHANGE))
        images.append(
            {
                "filename": f"{name}.png",
                "split": split,
                "sentences": [{"raw": f" {s} .", "tokens": s.split()} for s in sentences],
            }
        )
        for side in ("A", "B"):
            folder = root / "images" / split / side
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    (root / "LevirCCcaptions.json").write_text(json.dumps({"images": images}))
    return root


def _write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def levir(tmp_path):
    return _levir(tmp_path / "levir")


def test_perfect_and_wrong_predictions(levir, tmp_path):
    perfect = _write(
        tmp_path / "perfect.jsonl",
        [
            {"id": "test_000001", "caption": "A new road is built across the field."},
            {"id": "test_000003", "caption": "the scene is the same as before"},
            "",  # blank lines are skipped
            {"id": "test_000004", "caption": "two buildings are built at the top left"},
        ],
    )
    good = score_predictions(perfect, levir, meteor=False)
    assert good["BLEU-4"] > 0.99 and good["ROUGE-L"] > 0.99
    assert good["no_change_accuracy"] == 1.0 and good["change_accuracy"] == 1.0
    assert good["n"] == 3 and good["split"] == "test" and good["format"] == "levir-cc"
    assert good["counts"] == {"change": 2, "no_change": 1}
    assert set(good["subsets"]) == {"change", "no_change"} and "CIDEr-D" not in good["subsets"]["change"]
    assert good["METEOR"] is None and good["S*m"] is None
    assert "pycocoevalcap 1." in good["protocol"]["scorer"] and "CIDEr-D" in good["protocol"]

    wrong = _write(
        tmp_path / "wrong.jsonl",
        [{"id": i, "caption": "there is no difference"} for i in ("test_000001", "test_000004")]
        + [{"id": "test_000003", "caption": "a large river appears"}],
    )
    bad = score_predictions(wrong, levir, meteor=False)
    assert bad["BLEU-4"] < 0.1 < good["BLEU-4"] and bad["CIDEr-D"] < good["CIDEr-D"]
    assert bad["no_change_accuracy"] == 0.0 and bad["change_accuracy"] == 0.0

    val = _write(tmp_path / "val.jsonl", [{"id": "val_000002", "caption": "no change has occurred"}])
    only_val = score_predictions(val, levir, split="val", meteor=False)
    assert only_val["n"] == 1 and set(only_val["subsets"]) == {"no_change"}


GOOD = [
    {"id": "test_000001", "caption": "a road"},
    {"id": "test_000003", "caption": "no change"},
    {"id": "test_000004", "caption": "houses"},
]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([GOOD[0], "{not json", *GOOD[1:]], "line 2: not valid JSON"),
        ([GOOD[0], {"id": "test_000003"}, GOOD[2]], 'line 2: expected an object with "id" and "caption"'),
        ([GOOD[0], ["test_000003", "x"], GOOD[2]], 'line 2: expected an object with "id" and "caption"'),
        ([*GOOD[:2], {"id": "test_000004", "caption": None}], 'line 3: "caption" must be a string'),
        ([*GOOD[:2], {"id": 4, "caption": "x"}], 'line 3: "id" must be a string'),
        ([*GOOD, GOOD[1]], "line 4: duplicate id 'test_000003' (first on line 2)"),
        ([*GOOD, {"id": "train_000001", "caption": "x"}], "line 4: unknown id 'train_000001'"),
        (GOOD[:1], "no prediction for id 'test_000003', 'test_000004' (2 of 3 pairs)"),
    ],
)
def test_prediction_file_errors(levir, tmp_path, rows, message):
    pred = _write(tmp_path / "pred.jsonl", rows)
    with pytest.raises(DataError) as info:
        score_predictions(pred, levir, meteor=False)
    text = str(info.value)
    assert text.startswith(f"{pred}: ") and message in text and "\n" not in text


def test_missing_prediction_file(levir, tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match="prediction file not found") as info:
        score_predictions(missing, levir, meteor=False)
    assert str(info.value).startswith(str(missing))
