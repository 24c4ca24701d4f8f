"""``changescope train --preset llm-...``: instruction tuning of a ChangeLLM (projector + LoRA).

The same command, run folder and files as every other model (``RUN/model``, ``RUN/checkpoints/last.ckpt``,
``RUN/metrics.jsonl``, ``--resume``), with its own Lightning module: the vision model is frozen, so its
features are computed once per pair (``--cache-features``, the default) and only the projector and the
LoRA adapters learn; with ``--freeze backbone`` a copy of the vision model's change encoder learns too
(from the cached last backbone level: the "partly tuned vision" of the LLaVA-style change models).
``--data`` is a folder of ``changescope-instructions`` files (``train.jsonl``,
``val.jsonl``) or a dataset with change masks (SynthChange, a CD folder), whose instructions are then
written into ``RUN/instructions`` first (``data.instructions.write_instructions``). The best model by
validation next-token accuracy on the assistant's turns is exported merged (``models.llm_hub``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from changescope.data.instructions import read_instructions, write_instructions
from changescope.errors import ChangescopeError, DataError, require_all
from changescope.fileio import write_json_atomic
from changescope.models.llm_hub import LLM_PRESETS, build_change_llm, save_change_llm
from changescope.tasks.callbacks import AtomicCheckpoint, MetricsLog
from changescope.tasks.train_options import TrainOptions, parse_freeze

MONITOR = "val/token_accuracy"


def instruction_files(options: TrainOptions, out: Path) -> Path:
    """The folder with ``train.jsonl`` and ``val.jsonl``: ``--data`` itself, or instructions written from
    the labelled dataset ``--data`` into ``RUN/instructions``."""
    data = Path(options.data)
    if (data / "train.jsonl").is_file():
        folder = data
    else:
        folder = out / "instructions"
        if not (folder / "val.jsonl").is_file():
            write_instructions(data, folder, ("train", "val"), seed=options.seed)
    for split in ("train", "val"):
        if not (folder / f"{split}.jsonl").is_file():
            raise DataError(folder / f"{split}.jsonl", "instruction file not found")
    return folder


class InstructionItems(Dataset):
    """Encoded conversations with their pair's cached vision features (or its images)."""

    def __init__(self, rows: list[dict[str, Any]], processor, features: dict[str, tuple] | None):
        self.rows, self.processor, self.features = rows, processor, features

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        item = self.processor.encode(row["conversations"])
        key = "\n".join(row["images"])
        if self.features is not None:
            item["memory"], item["last"] = self.features[key]
        else:
            item["images"] = self.processor.read_pair(*row["images"][:2])
        return item


def cache_features(model, processor, rows, batch_size: int = 16) -> dict[str, tuple]:
    """Each distinct pair's vision features once (fp16 to halve the memory; fixed inputs)."""
    pairs = list(dict.fromkeys("\n".join(r["images"]) for r in rows))
    cache = {}
    for start in range(0, len(pairs), batch_size):
        keys = pairs[start : start + batch_size]
        images = torch.stack([processor.read_pair(*k.split("\n")[:2]) for k in keys])
        memory, last = model.vision_features(images)
        for i, key in enumerate(keys):
            cache[key] = (memory[i].half(), last[i].half())
    return cache


def collate(processor):
    def run(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = processor.collate(items)
        if "memory" in items[0]:
            batch["memory"] = torch.stack([i["memory"] for i in items]).float()
            batch["last"] = torch.stack([i["last"] for i in items]).float()
        return batch

    return run


class LLMTask(pl.LightningModule):
    """Loss on the assistant's tokens; validation next-token accuracy on them."""

    def __init__(self, model, processor, options: TrainOptions, lr: float):
        super().__init__()
        self.model, self.processor, self.options, self.lr = model, processor, options, lr
        self._correct = self._total = 0
        self._loss = 0.0
        # checkpoints hold what trains (projector, LoRA): the frozen LM and vision model are rebuilt
        self.strict_loading = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        trained = {name for name, p in self.named_parameters() if p.requires_grad}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in trained}

    def _step(self, batch):
        features = (batch["memory"], batch["last"]) if "memory" in batch else None
        return self.model(batch, features)

    def training_step(self, batch, _):
        loss, _, _ = self._step(batch)
        size = len(batch["labels"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, batch, _):
        loss, logits, targets = self._step(batch)
        keep = targets != -100
        self._correct += int((logits.argmax(-1)[keep] == targets[keep]).sum())
        self._total += int(keep.sum())
        self._loss += float(loss) * int(keep.sum())

    def on_validation_epoch_end(self):
        total = max(self._total, 1)
        self.log("val/token_accuracy", self._correct / total)
        self.log("val/loss", self._loss / total)
        self._correct = self._total = 0
        self._loss = 0.0

    def configure_optimizers(self):
        params = [p for p in self.model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.options.weight_decay)


class ExportBestLLM(pl.Callback):
    """Writes ``OUT/model`` (merged, ``save_change_llm``) whenever validation token accuracy improves."""

    def __init__(self, out: Path, options: TrainOptions):
        self.out, self.options = out, options
        self.best, self.best_epoch = -math.inf, None

    def on_validation_end(self, trainer, task: LLMTask):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(MONITOR)
        if value is None or float(value) <= self.best:
            return
        self.best, self.best_epoch = float(value), trainer.current_epoch
        save_change_llm(task.model, task.processor, self.out / "model", torch.bfloat16)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        write_json_atomic(
            self.out / "model" / "training.json",
            {
                "epoch": self.best_epoch,
                "monitor": MONITOR,
                "validation": metrics,
                "seed": self.options.seed,
                "options": asdict(self.options),
            },  # fmt: skip
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


def tunes_encoder(options: TrainOptions) -> bool:
    """``--freeze backbone`` (the encoder not named) tunes a copy of the vision model's change encoder; the
    backbone stays fixed for every LLM preset, and the vision model itself is never changed."""
    fixed = parse_freeze(options.freeze)
    if fixed is None or "encoder" in fixed:
        return False
    if "backbone" not in fixed:
        raise ChangescopeError(
            "LLM presets keep the vision backbone fixed: --freeze backbone tunes a copy of the change "
            "encoder, no --freeze keeps the whole vision model fixed"
        )
    return True


def train_llm(options: TrainOptions, resume: bool = False) -> dict[str, Any]:
    """Instruction-tune a ChangeLLM: the vision model is ``--init`` (default: the shipped default)."""
    out = Path(options.out)
    last = out / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise DataError(last, "no checkpoint to resume from (the run stopped before its first epoch)")
        saved = json.loads((out / "run.json").read_text(encoding="utf-8"))["options"]
        options = TrainOptions(**{**saved, "epochs": options.epochs or saved["epochs"]})
    else:
        options.validate()
        if (out / "run.json").exists():
            raise DataError(out, "already holds a training run: pass --resume to continue it, or --out")
        if options.devices > 1:
            raise ChangescopeError("LLM presets train on one device (--devices 1)")
        require_all(("transformers", "peft", "gguf", "accelerate"), "llm", f"--preset {options.preset}")
    pl.seed_everything(options.seed, workers=True, verbose=False)
    spec = LLM_PRESETS[options.preset]
    vision_init = options.init or "default"
    model, processor = build_change_llm(options.preset, vision_init, options.llm, tunes_encoder(options))
    if not resume:  # the run folder appears once the model could be built
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "run.json", {"options": asdict(options), "kind": "change-llm"})
    folder = instruction_files(options, out)
    loaders = []
    for split, shuffle in (("train", True), ("val", False)):
        rows = read_instructions(folder / f"{split}.jsonl")
        if options.limit_pairs:
            rows = rows[: options.limit_pairs]
        if not rows:
            raise DataError(folder / f"{split}.jsonl", "holds no conversations")
        features = cache_features(model, processor, rows) if options.cache_features else None
        items = InstructionItems(rows, processor, features)
        loaders.append(DataLoader(items, options.batch_size, shuffle=shuffle, collate_fn=collate(processor)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"{options.preset}: {model.config.lm_source}, {trainable:,} trainable parameters", flush=True)
    default_lr = TrainOptions.__dataclass_fields__["lr"].default
    task = LLMTask(model, processor, options, spec["lr"] if options.lr == default_lr else options.lr)
    export = ExportBestLLM(out, options)
    trainer = pl.Trainer(
        default_root_dir=out,
        max_epochs=options.epochs,
        accelerator=options.accelerator,
        devices=1,
        callbacks=[
            AtomicCheckpoint(dirpath=out / "checkpoints", save_top_k=0, save_last=True),
            export,
            MetricsLog(out / "metrics.jsonl"),
            pl.callbacks.EarlyStopping(monitor=MONITOR, mode="max", patience=options.patience),
        ],
        logger=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        gradient_clip_val=1.0,
    )
    trainer.fit(task, *loaders, ckpt_path=str(last) if resume else None)
    if export.best_epoch is None:
        raise ChangescopeError("training finished without a validation result; no model was exported")
    summary = {"model": str(out / "model"), "best_epoch": export.best_epoch, MONITOR: export.best,
               "epochs_run": trainer.current_epoch, "tasks": ["instructions"]}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary
