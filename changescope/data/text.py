"""Word-level tokenizer and vocabulary for captions.

Tokenizer rule (used for the vocabulary *and* for scoring, so both see the same words):
lower-case, then keep maximal runs of letters and digits (an apostrophe inside a word is kept, as in
"building's"); every other character, punctuation included, separates words. So
"Two new buildings, at the top-left." -> ["two", "new", "buildings", "at", "the", "top", "left"].

Vocabulary rule: built from the *train split only*; a word is kept when it occurs at least ``min_freq``
times there (the ``>=`` rule of Chg2Cap; RSICC uses ``>``). Special tokens come first:
``<pad>`` = 0, ``<unk>`` = 1, ``<start>`` = 2, ``<end>`` = 3; then words by descending count, ties
alphabetically, so the same captions always give the same ids. Words outside the vocabulary encode as
``<unk>``; ``decode`` drops ``<pad>``/``<start>``/``<unk>`` and stops at ``<end>``, so a caption shown to
a user or scored never contains a special token.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from changescope.errors import DataError
from changescope.fileio import write_json_atomic

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIALS = (PAD, UNK, START, END)
TOKENIZER_RULE = "lower-case; words = runs of letters/digits (inner apostrophes kept); all else separates"
VOCAB_FORMAT = "changescope-vocab/1"


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def normalize(text: str) -> str:
    """The form every caption is scored in: tokens joined by single spaces."""
    return " ".join(tokenize(text))


class Vocabulary:
    def __init__(self, words: Sequence[str], min_freq: int = 1):
        self.itos: list[str] = list(SPECIALS) + list(words)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("vocabulary words must be unique and must not repeat special tokens")
        self.min_freq = min_freq

    pad_id, unk_id, start_id, end_id = 0, 1, 2, 3

    @classmethod
    def build(cls, captions: Iterable[str], min_freq: int = 5) -> Vocabulary:
        """Build from (train-split) captions with the ``count >= min_freq`` rule."""
        if min_freq < 1:
            raise ValueError("min_freq must be >= 1")
        counts = Counter(tok for caption in captions for tok in tokenize(caption))
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls(words, min_freq=min_freq)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi and word not in SPECIALS

    def encode(self, text: str, max_len: int | None = None) -> list[int]:
        """``<start> w1 .. wn <end>``; with ``max_len`` (tokens incl. start/end) the words are cut to fit."""
        ids = [self.stoi.get(tok, self.unk_id) for tok in tokenize(text)]
        if max_len is not None:
            if max_len < 2:
                raise ValueError("max_len must leave room for <start> and <end>")
            ids = ids[: max_len - 2]
        return [self.start_id, *ids, self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id, self.unk_id):
                continue
            words.append(self.itos[i])
        return " ".join(words)

    def to_dict(self) -> dict:
        return {
            "format": VOCAB_FORMAT,
            "tokenizer": TOKENIZER_RULE,
            "min_freq": self.min_freq,
            "specials": list(SPECIALS),
            "words": self.itos[len(SPECIALS) :],
        }

    @property
    def sha256(self) -> str:
        """Identifies the exact id mapping; recorded with every result."""
        canon = json.dumps({"specials": list(SPECIALS), "words": self.itos[len(SPECIALS) :]})
        return hashlib.sha256(canon.encode()).hexdigest()

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "vocabulary file not found")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(path, f"vocabulary is not valid JSON ({err})") from None
        if not isinstance(obj, dict) or obj.get("format") != VOCAB_FORMAT:
            raise DataError(path, f"not a changescope vocabulary (expected format '{VOCAB_FORMAT}')")
        if obj.get("specials") != list(SPECIALS):
            raise DataError(path, f"special tokens {obj.get('specials')} differ from {list(SPECIALS)}")
        words = obj.get("words")
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise DataError(path, "'words' must be a list of strings")
        try:
            return cls(words, min_freq=int(obj.get("min_freq", 1)))
        except ValueError as err:
            raise DataError(path, str(err)) from None
