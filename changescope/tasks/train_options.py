"""What ``changescope train`` takes: one dataclass, the single source of the command's flags and of the
``--config`` YAML keys.

Each field of :class:`TrainOptions` carries its command-line help in its metadata (see :func:`option`); the
CLI builds the ``train`` command's signature from ``fields(TrainOptions)``, so a new option needs only a new
field here. Fields made with ``cli=False`` (``overrides``) are set only from the ``--config`` YAML.

This module is light (no torch, no Lightning): the CLI imports it to build its help.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from changescope.errors import ChangescopeError, DataError

CAPTION_MONITORS = ("CIDEr-D", "BLEU-4", "ROUGE-L")
MASK_MONITORS = ("mIoU", "mIoU_no_bg", "mF1_no_bg", "change_F1", "change_IoU", "change_F1_cal")
VQA_MONITORS = ("vqa_OA", "vqa_AA")
GROUNDING_MONITORS = ("grounding_mIoU", "grounding_cIoU")
#: retrieval scores are the mean of the text -> pair and pair -> text directions
RETRIEVAL_MONITORS = ("retrieval_R@1", "retrieval_R@5", "retrieval_R@10", "retrieval_MRR")
#: T-date sequences: pooled per-interval change IoU / F1, and the share of changed pixels whose first
#: changed interval is found exactly (``metrics.temporal``)
SEQUENCE_MONITORS = ("interval_IoU", "interval_F1", "first_change_exact")
#: metric -> the task that produces it
METRIC_TASK = {
    **{m: "caption" for m in CAPTION_MONITORS},
    **{m: "mask" for m in MASK_MONITORS},
    **{m: "vqa" for m in VQA_MONITORS},
    **{m: "grounding" for m in GROUNDING_MONITORS},
    **{m: "retrieval" for m in RETRIEVAL_MONITORS},
    **{m: "sequence" for m in SEQUENCE_MONITORS},
}
MONITORS = tuple(METRIC_TASK)
PRIMARY = {
    "caption": "CIDEr-D",
    "mask": "mIoU_no_bg",
    "vqa": "vqa_OA",
    "grounding": "grounding_mIoU",
    "retrieval": "retrieval_R@5",
    "sequence": "interval_IoU",
}
TASKS = tuple(PRIMARY)
#: what --accelerator takes (Lightning's accelerator names)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu", "hpu")


def parse_tasks(value: str | None) -> tuple[str, ...] | None:
    """``"caption,mask"`` -> ``("caption", "mask")``; None stays None (the default for preset and data)."""
    if value is None:
        return None
    tasks = tuple(t.strip() for t in value.replace("+", ",").split(",") if t.strip())
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ChangescopeError(f"--tasks takes a comma-separated subset of {', '.join(TASKS)}; got {value!r}")
    if "sequence" in tasks and len(set(tasks)) > 1:
        raise ChangescopeError(
            "--tasks sequence trains on T-date sequences alone; train the pair tasks in another run"
        )
    return tuple(t for t in TASKS if t in tasks)


#: --freeze name -> the ChangeModel submodules it fixes
FREEZABLE = {
    "backbone": ("backbone",),
    "encoder": ("encoder",),
    "decoder": ("decoder",),
    "mask_head": ("mask_head",),
    "change_head": ("change_head", "coarse_change_head", "gsd_probe"),
    "questions": ("question_encoder", "fusion", "answer_head"),
    "grounding": ("grounding_head",),
    "retrieval": ("retrieval_head",),
    "temporal": ("temporal_head",),
}


def parse_freeze(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if value.strip() == "none":
        return ()
    parts = tuple(p.strip() for p in value.split(",") if p.strip())
    bad = [p for p in parts if p not in FREEZABLE]
    if bad or not parts:
        raise ChangescopeError(
            f"--freeze takes 'none' or a comma-separated subset of {', '.join(FREEZABLE)}; got {value!r}"
        )
    return parts


def default_monitor(tasks: tuple[str, ...]) -> str:
    return "+".join(PRIMARY[t] for t in tasks)


def parse_monitor(monitor: str) -> list[str]:
    """A metric, or a sum of metrics joined by '+' (``CIDEr-D+mIoU_no_bg``)."""
    parts = monitor.split("+")
    bad = [p for p in parts if p not in METRIC_TASK]
    if bad:
        raise ChangescopeError(
            f"--monitor takes one of {', '.join(MONITORS)} or a sum of them joined by '+'; got {monitor!r}"
        )
    return parts


def _gsd_list(value) -> list[float]:
    values = [value] if isinstance(value, (int, float, str)) else list(value)
    try:
        out = sorted(float(v) for v in values)
    except ValueError:
        raise ChangescopeError(f"--gsd takes metres per pixel (numbers), got {value!r}") from None
    if not out or out[0] <= 0:
        raise ChangescopeError(f"--gsd must be positive, got {value!r}")
    return out


def _comma_list(text: str) -> list[str] | None:
    """A comma-separated flag value (``--gsd 0.5,10``) as the list its YAML key takes; '' is not given."""
    return text.split(",") if text else None


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    cli: bool = True,
    metavar: str | None = None,
    parse=None,
):
    """A :class:`TrainOptions` field with what ``changescope train`` needs to offer it as a flag.

    ``help`` is the flag's help (and the YAML key's documentation); ``flag`` the flag when it is not
    ``--field-name`` (bools always become ``--x/--no-x``); ``cli=False`` keeps the field out of the flags
    (set only from the ``--config`` YAML); ``parse`` turns the flag's text into the field's value
    (e.g. a comma-separated list), ``metavar`` names the flag's value in the help.
    """
    metadata = {"help": help, "flag": flag, "cli": cli, "metavar": metavar, "parse": parse}
    if isinstance(default, (dict, list, set)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def cli_flag(f) -> str:
    """The flag of a :class:`TrainOptions` field (``batch_size`` -> ``--batch-size``)."""
    return f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"


@dataclass
class TrainOptions:
    data: str = option(
        "", "Dataset directory, or a mix file (YAML / JSON) of several datasets.", metavar="PATH"
    )
    out: str = option("", "Run directory (model/, checkpoints/, metrics).", metavar="PATH")
    preset: str = option("lite", "Architecture (see `changescope models`).")
    format: str | None = option(None, "Dataset format; detected when omitted.")
    epochs: int = option(20, "Epochs to train at most (see --patience).")
    batch_size: int = option(32, "Pairs per training and validation batch.")
    lr: float = option(2e-4, "Learning rate of encoder and decoder.")
    backbone_lr_scale: float = option(
        0.1, "The backbone's learning rate as a fraction of --lr, when it trains."
    )
    weight_decay: float = option(0.01, "AdamW weight decay.")
    min_freq: int = option(5, "Vocabulary: train words seen >= N times.")
    image_size: int | None = option(
        None, "Input size in pixels (default: the preset's, or the init model's)."
    )
    pretrained: bool | None = option(None, "Backbone weights (default: the preset's choice).")
    seed: int = option(0, "Random seed (weights, shuffling, augmentation).")
    patience: int = option(5, "Early stop after N epochs without gain.")
    monitor: str | None = option(
        None,
        "Validation metric for the best model: one of "
        + ", ".join(MONITORS)
        + ", or a sum joined by '+' (default: the sum of each trained task's main metric).",
    )
    tasks: str | None = option(
        None,
        "A comma-separated subset of caption, mask, vqa, grounding, retrieval (default: what the preset and "
        "the data allow).",
    )
    mask_weight: float = option(1.0, "Weight of the mask loss.")
    dice_weight: float = option(1.0, "Weight of the soft Dice term within the mask and grounding losses.")
    vqa_weight: float = option(1.0, "Weight of the VQA loss.")
    grounding_weight: float = option(1.0, "Weight of the grounding loss.")
    retrieval_weight: float = option(1.0, "Weight of the retrieval (InfoNCE) loss.")
    free_form_weight: float = option(
        0.5, "Weight of the free-form (caption decoder) answer loss within the VQA loss."
    )
    questions_per_pair: int = option(3, "Questions drawn per pair per visit in training.")
    gsd: list[float] | None = option(
        None,
        "Metres per pixel of the training imagery, one or several ('0.5,10'), recorded in the model's "
        "config (default: the init model's).",
        metavar="M[,M...]",
        parse=_comma_list,
    )
    question_encoder: str | None = option(
        None, "minilm (all-MiniLM-L6-v2) or words (no transformers needed); default: the preset's."
    )
    init: str | None = option(
        None,
        "Start from a saved model ('default', a model or run directory): its heads that this run does not "
        "train are kept, and fixed.",
        metavar="MODEL",
    )
    num_workers: int = option(0, "Data-loading worker processes (0: load in the training process).")
    limit_pairs: int | None = option(None, "Use only the first N pairs a split.")
    cache_features: bool = option(
        True, "Precompute frozen backbone features once (ignored when the backbone trains)."
    )
    freeze: str | None = option(
        None,
        "Parts kept fixed: 'none' or a comma-separated subset of "
        + ", ".join(FREEZABLE)
        + " (default: with --init, the change encoder when the init model has heads this run does not "
        "train, so they keep their inputs). LLM presets: the vision model is fixed; --freeze backbone "
        "tunes a copy of its change encoder.",
    )
    augment: bool = option(
        True, "Random quarter turns and mirrors of cached features and masks in mask-only training."
    )
    llm: str | None = option(
        None,
        "LLM presets (llm-*): the causal LM: smollm2-135m (the packaged GGUF), tiny-llama, a .gguf file or "
        "a Hugging Face model folder (default: the preset's).",
        metavar="NAME_OR_PATH",
    )
    accelerator: str = option("auto", f"Lightning accelerator: {', '.join(ACCELERATORS)}.")
    devices: int = option(1, "Processes / GPUs; > 1 trains with DDP.")
    overrides: dict[str, Any] = option(
        {},
        "Model config fields over the preset's (e.g. encoder_kwargs: {d_model: 32}); YAML only (--config).",
        cli=False,
    )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], source: str | Path | None = None) -> TrainOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DataError(source, f"unknown training options {unknown} (known: {', '.join(sorted(known))})")
        return cls(**values)

    def validate(self) -> None:
        """Check every option before anything is read or written (flags and --config YAML alike)."""
        from changescope.models.presets import PRESETS

        if not self.data or not self.out:
            raise ChangescopeError("training needs --data and --out")
        self._check_types()
        data, out = Path(self.data), Path(self.out)
        if not data.exists():
            raise DataError(data, "training data not found (a dataset folder or a mix file)")
        if data.is_file() and data.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise DataError(data, "not a dataset folder or a mix file (.yaml / .yml / .json)")
        if out.exists() and not out.is_dir():
            raise DataError(out, "is a file; --out takes a run folder")
        from changescope.models.llm_hub import LLM_PRESETS

        if self.preset not in PRESETS and self.preset not in LLM_PRESETS:
            known = ", ".join([*PRESETS, *LLM_PRESETS])
            raise ChangescopeError(f"--preset: unknown preset '{self.preset}' (known: {known})")
        if self.llm is not None and self.preset not in LLM_PRESETS:
            raise ChangescopeError(f"--llm takes an LLM preset (llm-*), not '{self.preset}'")
        if self.llm is not None:
            from changescope.models.llm_hub import check_lm_source

            check_lm_source(self.llm)
        if self.question_encoder not in (None, "minilm", "words"):
            raise ChangescopeError(f"--question-encoder takes minilm or words, got '{self.question_encoder}'")
        if self.init not in (None, "default") and not Path(self.init).exists():
            raise DataError(self.init, "--init model not found")
        parse_tasks(self.tasks)
        parse_freeze(self.freeze)
        if self.monitor is not None:
            parse_monitor(self.monitor)
        if self.gsd is not None:
            _gsd_list(self.gsd)
        if self.accelerator not in ACCELERATORS:
            raise ChangescopeError(
                f"--accelerator takes one of {', '.join(ACCELERATORS)}, got '{self.accelerator}'"
            )
        for name in ("epochs", "batch_size", "min_freq", "devices", "questions_per_pair"):
            if getattr(self, name) < 1:
                raise ChangescopeError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "patience", "num_workers"):
            if getattr(self, name) < 0:
                raise ChangescopeError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("mask_weight", "dice_weight", "vqa_weight", "grounding_weight", "retrieval_weight",
                     "free_form_weight", "backbone_lr_scale", "weight_decay"):  # fmt: skip
            if not getattr(self, name) >= 0:
                raise ChangescopeError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ChangescopeError(f"--lr must be a positive number, got {self.lr}")
        if self.image_size is not None and self.image_size < 32:
            raise ChangescopeError(f"--image-size must be >= 32 pixels, got {self.image_size}")
        if self.limit_pairs is not None and self.limit_pairs < 1:
            raise ChangescopeError(f"--limit-pairs must be >= 1, got {self.limit_pairs}")

    def _check_types(self) -> None:
        """Values from a YAML config arrive untyped: refuse ``epochs: two`` here, not as a traceback later."""
        for f in fields(self):
            value = getattr(self, f.name)
            kind = str(f.type)
            if value is None or f.name in ("gsd", "overrides"):
                continue
            if kind.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
                raise ChangescopeError(f"--{f.name.replace('_', '-')} takes a whole number, got {value!r}")
            if kind.startswith("float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ChangescopeError(f"--{f.name.replace('_', '-')} takes a number, got {value!r}")
            if kind.startswith("str") and not isinstance(value, str):
                raise ChangescopeError(f"--{f.name.replace('_', '-')} takes text, got {value!r}")
            if kind.startswith("bool") and not isinstance(value, bool):
                raise ChangescopeError(f"--{f.name.replace('_', '-')} takes true or false, got {value!r}")
