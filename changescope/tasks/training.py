"""Training a change model (captions, change masks, or both) with Lightning.

The run directory ``OUT`` holds::

    OUT/run.json               what was asked (options, model config, vocabulary): resuming rebuilds from it
    OUT/model/                 the best model so far (save_pretrained + training.json), replaced
                               atomically each time the validation metric improves
    OUT/checkpoints/last.ckpt  the full training state at the end of the last finished epoch (for --resume)
    OUT/metrics.jsonl          one line per epoch: training loss and validation metrics (kept across --resume)

Tasks: ``caption``, ``mask``, ``vqa``, ``grounding``, in any combination. By default a preset with a mask
head trains captions and masks on data with both, captions alone on caption data, and vqa (plus grounding
when there are grounding records) on question-only data such as CDVQA; ``--tasks caption,mask,vqa,grounding``
trains one model for everything. The loss is ``caption cross-entropy + mask_weight * (mask cross-entropy +
dice_weight * soft Dice) + vqa_weight * (type CE + answer CE + free_form_weight * free-form answer CE) +
grounding_weight * (BCE + dice_weight * Dice)``. ``--init MODEL`` starts from a saved model's weights (every
tensor whose name and shape match; a grown vocabulary keeps its old rows).

Model selection: the validation split is captioned greedily after every epoch and scored by pycocoevalcap
(without METEOR, to keep the JVM out of the loop), its masks by a confusion matrix, its questions by
accuracy (OA, AA) and its grounding queries by IoU; the best epoch by ``monitor`` is exported, and training
stops early after ``patience`` epochs without improvement. The default monitor is the sum of each trained
task's main metric (CIDEr-D as a fraction, mIoU without background, vqa_OA, grounding_mIoU), e.g.
``CIDEr-D+mIoU_no_bg`` for captions and masks.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from changescope.data.mix import tiled_if_uncaptioned
from changescope.data.sample import BINARY_CLASSES, IGNORE_INDEX, UNKNOWN_CHANGE
from changescope.data.text import Vocabulary
from changescope.errors import ChangescopeError, DataError, require
from changescope.fileio import write_json_atomic
from changescope.metrics.threshold import (
    THRESHOLD_BINS,
    SourceIndex,
    add_batch,
    calibrate,
    f1_curves,
    probability_histograms,
)
from changescope.models.change_model import ChangeModel
from changescope.models.config import ModelConfig
from changescope.models.heads.mask_head import mask_loss
from changescope.models.heads.query_heads import grounding_loss
from changescope.models.hub import save_pretrained
from changescope.models.presets import build_config
from changescope.models.processor import ChangeProcessor
from changescope.tasks.callbacks import AtomicCheckpoint, MetricsLog
from changescope.tasks.data import binary_remap, binary_target, caption_loader, sequence_loader
from changescope.tasks.queries import OPEN, attach, open_pairs
from changescope.tasks.train_options import (  # noqa: F401 (re-exported: tests and callers import them here)
    CAPTION_MONITORS,
    FREEZABLE,
    GROUNDING_MONITORS,
    MASK_MONITORS,
    METRIC_TASK,
    MONITORS,
    PRIMARY,
    TASKS,
    VQA_MONITORS,
    TrainOptions,
    _gsd_list,
    default_monitor,
    parse_freeze,
    parse_monitor,
    parse_tasks,
)

pl = require("lightning.pytorch", "train", "training")

#: size of the retrieval embeddings a run adds when it trains the retrieval task (override: retrieval_dim)
RETRIEVAL_DIM = 256


class ChangeTask(pl.LightningModule):
    def __init__(
        self,
        config: ModelConfig,
        vocab: Vocabulary | None,
        options: TrainOptions,
        no_change: tuple[str, ...],
    ):
        super().__init__()
        self.model = ChangeModel(config)
        max_len = int(config.decoder_kwargs.get("max_len", 42))
        self.processor = ChangeProcessor(vocab, config.image_size, max_len)
        self.options, self.no_change = options, no_change
        self._reset_validation()
        self._train_losses: list[torch.Tensor] = []
        self.tasks = tuple(parse_tasks(options.tasks) or self.model.tasks)
        self._answer_ids = {a: i for i, a in enumerate(config.answers)}
        self._type_ids = {t: i for i, t in enumerate(config.qtypes)}
        #: the change threshold that maximised the last validation's change F1 (mean over its sources)
        self.calibrated_threshold: float | None = None
        self.val_sources = SourceIndex()
        self.frozen: tuple[str, ...] = ()

    def freeze(self, parts: tuple[str, ...]) -> None:
        """Fix these parts (``FREEZABLE`` names): no gradients, and kept in eval mode (dropout off,
        batch-norm statistics unchanged) while the rest trains."""
        self.frozen = tuple(parts)
        for module in self._frozen_modules():
            module.requires_grad_(False)
            module.eval()

    def _frozen_modules(self):
        for part in self.frozen:
            for name in FREEZABLE[part]:
                module = getattr(self.model, name, None)
                if isinstance(module, torch.nn.Module):
                    yield module

    def train(self, mode: bool = True):
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def on_train_epoch_start(self) -> None:
        # Lightning restores the train / eval modes it saw before fit and validation: re-fix them here
        for module in self._frozen_modules():
            module.eval()

    @property
    def sequences(self) -> bool:
        """A run on T-date sequences: only the temporal head learns (``--tasks sequence``)."""
        return self.tasks == ("sequence",)

    def _sequence_logits(self, batch) -> torch.Tensor:
        if "features" in batch:
            return self.model.sequence(features=batch["features"], classes=False).change_logit
        return self.model.sequence(batch["image"], classes=False).change_logit

    def _forward(self, batch):
        pixels = "grounding" in self.tasks
        masks = "mask" in self.tasks  # a run that does not train or score masks skips the mask head
        if "features" in batch:
            return self.model(features=batch["features"], pixels=pixels, masks=masks)
        return self.model(batch["image"], pixels=pixels, masks=masks)

    def training_step(self, batch, batch_idx):
        if self.sequences:
            return self._sequence_step(batch)
        out = self._forward(batch)
        size = len(batch["id"])
        loss = torch.zeros((), device=out.memory.device)
        if "caption" in self.tasks:
            caption_loss = self.model.decoder.loss(out.memory, batch["tokens"])
            self.log("train/caption_loss", caption_loss, batch_size=size)
            loss = loss + caption_loss
        if out.mask_logits is not None and "mask" in self.tasks:
            masks = mask_loss(
                out.class_logits, batch["mask"], IGNORE_INDEX, self.options.dice_weight, out.change_logit
            )
            self.log("train/mask_loss", masks, batch_size=size)
            loss = loss + self.options.mask_weight * masks
        if "vqa" in self.tasks and batch["questions"]:
            vqa = self._vqa_loss(out, batch)
            self.log("train/vqa_loss", vqa, batch_size=size)
            loss = loss + self.options.vqa_weight * vqa
        if "grounding" in self.tasks and batch["g_queries"]:
            query = self.model.read_queries(
                out.memory, batch["g_queries"], batch["g_pair"].to(out.memory.device)
            )
            logits = self.model.ground(out, query, batch["g_masks"].shape[-2:])
            ground = grounding_loss(logits, batch["g_masks"], self.options.dice_weight)
            self.log("train/grounding_loss", ground, batch_size=size)
            loss = loss + self.options.grounding_weight * ground
        if "retrieval" in self.tasks:
            retrieval = self._retrieval_loss(out, batch)
            self.log("train/retrieval_loss", retrieval, batch_size=size)
            loss = loss + self.options.retrieval_weight * retrieval
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self._train_losses.append(loss.detach())
        return loss

    def _sequence_step(self, batch):
        from changescope.models.heads.temporal_head import temporal_loss

        logits = self._sequence_logits(batch)
        loss = temporal_loss(
            logits, binary_target(batch["interval_masks"]), IGNORE_INDEX, self.options.dice_weight
        )
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["id"]))
        self._train_losses.append(loss.detach())
        return loss

    def _retrieval_loss(self, out, batch) -> torch.Tensor:
        """InfoNCE both ways between each pair and the caption drawn for it this visit; no-change pairs and
        pairs drawn the same sentence are each other's positives (``heads.retrieval_head.relevance``)."""
        from changescope.models.heads.retrieval_head import relevance, retrieval_loss

        texts = batch["caption_text"]
        pairs = self.model.embed_pairs(out.memory)
        positives = relevance(batch["changed"].to(pairs.device), texts)
        scale = self.model.retrieval_head.scale()
        return retrieval_loss(pairs, self.model.embed_texts(texts), positives, scale)

    def _vqa_loss(self, out, batch) -> torch.Tensor:
        """Type CE + closed-answer CE (open questions have no closed answer) + free-form answer CE."""
        device = out.memory.device
        query = self.model.read_queries(out.memory, batch["questions"], batch["q_pair"].to(device))
        type_logits, answer_logits = self.model.answer_logits(query)
        types = torch.tensor([self._type_ids.get(t, -100) for t in batch["qtypes"]], device=device)
        answers = torch.tensor([self._answer_ids.get(a, -100) for a in batch["answers"]], device=device)
        answers[types == self._type_ids.get(OPEN, -1)] = -100
        loss = F.cross_entropy(type_logits, types, ignore_index=-100)
        if (answers >= 0).any():
            loss = loss + F.cross_entropy(answer_logits, answers, ignore_index=-100)
        if self.model.decoder is not None and self.options.free_form_weight > 0:
            memory, mask = self.model.free_form_memory(out.memory, query)
            tokens = self.processor.encode_captions(batch["answers"]).to(device)
            loss = loss + self.options.free_form_weight * self.model.decoder.loss(memory, tokens, mask)
        return loss

    def _reset_validation(self) -> None:
        """Fresh accumulators (``metrics.accumulators``, the ones ``changescope evaluate`` scores with)."""
        from changescope.metrics.accumulators import (
            CaptionAccumulator,
            GroundingAccumulator,
            RetrievalAccumulator,
            VQAAccumulator,
        )
        from changescope.metrics.segmentation import ConfusionMatrix
        from changescope.metrics.temporal import TemporalAccumulator

        self._captions = CaptionAccumulator(self.no_change)
        self._temporal = TemporalAccumulator(IGNORE_INDEX)
        self._answers = VQAAccumulator()
        self._grounding = GroundingAccumulator()
        self._retrieval = RetrievalAccumulator()
        classes = self.model.config.classes
        self._confusion = ConfusionMatrix(len(classes), ignore_index=IGNORE_INDEX) if classes else None
        self._binary_confusion = ConfusionMatrix(2, ignore_index=IGNORE_INDEX)
        self._histograms = None  # per validation source, P(change) of changed / unchanged pixels

    def validation_step(self, batch, batch_idx):
        if self.sequences:
            logits, target = self._sequence_logits(batch), batch["interval_masks"]
            threshold = math.log(
                self.model.config.temporal_threshold / (1 - self.model.config.temporal_threshold)
            )
            self._temporal.update(logits > threshold, target)
            self._update_histograms(logits, binary_target(target), batch["id"])
            return
        out = self._forward(batch)
        device = out.memory.device
        if "vqa" in self.tasks and batch["questions"]:
            query = self.model.read_queries(out.memory, batch["questions"], batch["q_pair"].to(device))
            _, answers, _ = self.model.pick_answers(*self.model.answer_logits(query))
            seen: dict[int, int] = {}
            keys = []
            for pair in batch["q_pair"].tolist():
                seen[pair] = seen.get(pair, -1) + 1
                keys.append((batch["id"][pair], seen[pair]))
            predicted = [self.model.config.answers[a] if a >= 0 else None for a in answers.tolist()]
            self._answers.update(keys, predicted, batch["answers"], batch["qtypes"])
        if "grounding" in self.tasks and batch["g_queries"]:
            query = self.model.read_queries(out.memory, batch["g_queries"], batch["g_pair"].to(device))
            # at the model's size: targets were resized (nearest) to it so that they batch
            pred = self.model.ground(out, query, batch["g_masks"].shape[-2:]) > 0
            self._grounding.update(pred, batch["g_masks"].to(device))
        if "mask" in self.tasks and out.mask_logits is not None:
            pred, target = out.mask_logits.argmax(1), batch["mask"]
            self._confusion.update(pred, target.masked_fill(target == UNKNOWN_CHANGE, IGNORE_INDEX))
            self._binary_confusion.update(pred > 0, binary_target(target))
            if out.change_logit is not None:
                self._update_histograms(out.change_logit, binary_target(target), batch["id"])
        if "caption" in self.tasks:
            texts = self.processor.decode(self.model.decoder.generate(out.memory, beam_size=1))
            self._captions.update(batch["id"], texts, batch["captions"], batch["changed"].tolist())
        if "retrieval" in self.tasks:
            texts = [list(refs) for refs in batch["captions"]]
            flat = self.model.embed_texts([t for refs in texts for t in refs]) if any(texts) else None
            self._retrieval.update(
                batch["id"], self.model.embed_pairs(out.memory), texts, flat, batch["changed"].tolist()
            )

    def _update_histograms(self, change_logit, target, ids: list[str]) -> None:
        if self._histograms is None:
            self._histograms = probability_histograms(self.val_sources.count)
        add_batch(self._histograms, self.val_sources, change_logit, target, ids)

    def _gather_validation(self) -> None:
        """Under DDP each rank saw a shard of the validation split: merge every rank's accumulators so
        that all ranks score the whole split identically (and early stopping agrees). DistributedSampler
        pads a shard by repeating pairs: captions and answers are keyed by id, so a repeat counts once, but
        its pixels count twice in the confusion matrices and grounding sums (at most world_size - 1
        pairs)."""
        import torch.distributed as dist

        if self.trainer.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
            return
        shards: list = [None] * dist.get_world_size()
        mine = (self._captions, self._answers, self._grounding, self._retrieval, self._temporal)
        dist.all_gather_object(shards, mine)
        rank = dist.get_rank()
        for index, theirs in enumerate(shards):
            if index != rank:
                for accumulator, other in zip(mine, theirs, strict=True):
                    accumulator.merge(other)
        for confusion in (self._confusion, self._binary_confusion):
            if confusion is not None:
                dist.all_reduce(confusion.matrix)
        if self._histograms is not None:
            dist.all_reduce(self._histograms)

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self._gather_validation()
        if self._train_losses:
            self.log("train/loss_epoch", torch.stack(self._train_losses).mean())
            self._train_losses = []
        values: dict[str, float] = {}
        if len(self._captions):
            values.update(self._caption_scores())
        if "mask" in self.tasks and self._confusion is not None and self._confusion.matrix.sum() > 0:
            scores = self._confusion.compute(self.model.config.classes)
            values.update({k: float(scores[k]) for k in MASK_MONITORS if scores.get(k) is not None})
            binary = self._binary_confusion.compute(BINARY_CLASSES)
            for key, name in (("change_F1", "F1"), ("change_IoU", "IoU")):
                values[key] = float(binary["per_class"]["change"][name] or 0.0)
        if self._histograms is not None:
            self.calibrated_threshold, values["change_F1_cal"] = calibrate(self._histograms)
            values["change_threshold"] = self.calibrated_threshold
            if self.val_sources.count > 1:  # what the mean is made of: each source's F1 at that threshold
                at = round(self.calibrated_threshold * THRESHOLD_BINS)
                curves, counted = f1_curves(self._histograms), self._histograms[:, 1].sum(-1)
                for s, name in enumerate(self.val_sources.names):
                    if counted[s] > 0:  # a source with changed pixels in this validation
                        values[f"change_F1_cal/{Path(name).name}"] = float(curves[s, at])
        if len(self._answers):
            scores = self._answers.compute()
            values["vqa_OA"], values["vqa_AA"] = scores["OA"], scores["AA"]
        if len(self._grounding):
            scores = self._grounding.compute()
            values["grounding_mIoU"], values["grounding_cIoU"] = scores["mIoU"], scores["cIoU"]
        if len(self._temporal):
            scores = self._temporal.compute()
            values["interval_IoU"], values["interval_F1"] = scores["IoU"] or 0.0, scores["F1"] or 0.0
            values["first_change_exact"] = scores["localisation"]["exact"] or 0.0
            values["false_change"] = scores["localisation"]["false_change"] or 0.0
        if len(self._retrieval):
            scores = self._retrieval.compute()
            for key in ("R@1", "R@5", "R@10", "MRR"):
                both = (scores["text_to_pair"][key] + scores["pair_to_text"][key]) / 2
                values[f"retrieval_{key}"] = both
        self._reset_validation()
        monitor = self.options.monitor or ""
        if "+" in monitor and all(part in values for part in monitor.split("+")):
            values[monitor] = sum(values[part] for part in monitor.split("+"))
        # under DDP every rank holds the same gathered values: syncing averages equal numbers
        distributed = self.trainer.world_size > 1
        for key, value in values.items():
            bar = key in ("CIDEr-D", "mIoU_no_bg", "vqa_OA", "grounding_mIoU", "interval_IoU")
            self.log(f"val/{key}", value, prog_bar=bar, sync_dist=distributed)

    def _caption_scores(self) -> dict[str, float]:
        result = self._captions.compute(meteor=False)
        # S*m without METEOR is not the papers' S*m; it is not logged during training
        values = {key: float(result["all"][key]) for key in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D")}
        if result.get("no_change_accuracy") is not None:
            values["no_change_accuracy"] = float(result["no_change_accuracy"])
        return values

    def configure_optimizers(self):
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        rest = [p for p in self.model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": rest, "lr": self.options.lr}]
        if backbone:
            groups.append({"params": backbone, "lr": self.options.lr * self.options.backbone_lr_scale})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.options.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.options.epochs))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class ExportBest(pl.Callback):
    """Writes ``OUT/model`` with save_pretrained whenever the monitored validation metric improves."""

    def __init__(self, out: Path, monitor: str, options: TrainOptions):
        self.out, self.monitor, self.options = out, monitor, options
        self.best: float = -math.inf
        self.best_epoch: int | None = None

    def on_validation_end(self, trainer, task: ChangeTask):
        # runs after the task's on_validation_epoch_end has logged the metrics, before the checkpoint
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or float(value) <= self.best:
            return
        self.best, self.best_epoch = float(value), trainer.current_epoch
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        # the calibrated threshold is the change head's, or the temporal head's in a sequence run
        field = "temporal_threshold" if task.sequences else "change_threshold"
        threshold = getattr(task.model.config, field)
        if task.calibrated_threshold is not None:
            setattr(task.model.config, field, task.calibrated_threshold)
        try:
            save_pretrained(task.model, task.processor, self.out / "model")
        finally:
            setattr(task.model.config, field, threshold)
        write_json_atomic(
            self.out / "model" / "training.json",
            {
                "epoch": self.best_epoch,
                "monitor": self.monitor,
                "validation": metrics,
                "seed": self.options.seed,
                "options": asdict(self.options),
            },
        )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]


def _is_sequences(dataset) -> bool:
    from changescope.data.readers.timeseries import SequenceDataset

    return isinstance(dataset, SequenceDataset)


def _default_tasks(options: TrainOptions, train_ds, records, captions) -> tuple[str, ...]:
    if _is_sequences(train_ds):
        return ("sequence",)
    preset_has_masks = bool(build_config(options.preset, 0).mask_head_kwargs)
    tasks = []
    if captions:
        tasks.append("caption")
        if preset_has_masks and train_ds.has_masks:
            tasks.append("mask")
    elif any(r.task == "vqa" for r in records):
        tasks.append("vqa")
        if any(r.task == "grounding" for r in records):
            tasks.append("grounding")
    elif train_ds.has_masks:
        tasks.append("mask")
    return tuple(tasks)


def _check_tasks(options: TrainOptions, tasks, train_ds, records, captions) -> None:
    have = {
        "caption": bool(captions),
        "mask": train_ds.has_masks,
        "vqa": any(r.task == "vqa" for r in records),
        "grounding": any(r.task == "grounding" for r in records),
        "retrieval": bool(captions),
        "sequence": _is_sequences(train_ds),
    }
    what = {
        "caption": "captions",
        "mask": "change masks",
        "vqa": "question records",
        "grounding": "grounding records",
        "retrieval": "captions",
        "sequence": "sequences of dates with interval masks",
    }
    for task in tasks:
        if not have[task]:
            others = ",".join(t for t in TASKS if have[t]) or "nothing"
            raise DataError(
                options.data, f"the train split has no {what[task]} for --tasks {task} (it has: {others})"
            )


def _answer_space(records) -> tuple[list[str], list[str], dict[str, list[int]]]:
    """Closed answers, question types and which answers each type took, from the train records."""
    vqa = [r for r in records if r.task == "vqa"]
    answers = sorted({r.answer for r in vqa})
    qtypes = sorted({r.qtype for r in vqa})
    index = {a: i for i, a in enumerate(answers)}
    answer_types = {t: sorted({index[r.answer] for r in vqa if r.qtype == t}) for t in qtypes}
    return answers, qtypes, answer_types


def _prepare_run(options: TrainOptions, out: Path) -> tuple[ModelConfig, Vocabulary | None]:
    """A new run: tasks, vocabulary and answers (train split) and model config; all recorded in run.json."""
    train_ds, records = open_pairs(options.data, "train", options.format, check_files=False)
    captions = [c for e in train_ds.entries for c in e.captions]
    tasks = parse_tasks(options.tasks) or _default_tasks(options, train_ds, records, captions)
    if not tasks:
        raise DataError(options.data, "the train split has no captions, masks or question records to learn")
    _check_tasks(options, tasks, train_ds, records, captions)
    overrides = dict(options.overrides)
    if "vqa" in tasks:
        answers, qtypes, answer_types = _answer_space(records)
        if "caption" in tasks:
            qtypes.append(OPEN)  # description prompts, answered by the caption decoder
            answer_types[OPEN] = []
        overrides.update(answers=answers, qtypes=qtypes, answer_types=answer_types)
    overrides["grounding"] = "grounding" in tasks
    if "retrieval" in tasks:
        overrides.setdefault("retrieval_dim", RETRIEVAL_DIM)
    else:
        overrides["retrieval_dim"] = 0
    if "sequence" in tasks:
        overrides.setdefault("temporal_kwargs", dict(TEMPORAL_KWARGS))
    if options.question_encoder is not None:
        overrides["question_encoder"] = options.question_encoder
    vocab = None
    if "caption" in tasks:
        # free-form answers are decoded with the caption vocabulary, so it holds the answers' words too
        texts = captions + [r.answer for r in records if r.task == "vqa"]
        vocab = Vocabulary.build(texts, min_freq=options.min_freq)
        if options.init:
            vocab = _extend_init_vocab(options.init, vocab)
    if options.image_size is not None:
        overrides["image_size"] = options.image_size
    if options.pretrained is not None:
        overrides["backbone_pretrained"] = options.pretrained
    overrides["classes"] = list(train_ds.classes) if "mask" in tasks else []
    if options.gsd is not None:
        overrides["gsd"] = _gsd_list(options.gsd)
    config = build_config(options.preset, len(vocab) if vocab else 0, **overrides)
    if options.init:
        config, vocab = _keep_init_heads(options, config, vocab, tasks)
    if "mask" in tasks and not config.change_head_kwargs and _unknown_changes(train_ds, config):
        # changes of unknown class can only train a change head: give the model one
        config.change_head_kwargs = dict(build_config("lite", 0).change_head_kwargs)
    options.tasks = ",".join(tasks)
    options.monitor = options.monitor or default_monitor(tasks)
    missing = {METRIC_TASK[m] for m in parse_monitor(options.monitor)} - set(tasks)
    if missing:
        raise ChangescopeError(f"--monitor {options.monitor} needs the {' and '.join(sorted(missing))} task")
    write_json_atomic(
        out / "run.json",
        {
            "options": asdict(options),
            "config": config.to_dict(),
            "vocab": vocab.to_dict() if vocab else None,
        },
    )
    return config, vocab


#: config fields that belong to each task's head
TASK_FIELDS = {
    "caption": ("vocab_size",),
    "mask": ("classes",),
    "vqa": ("answers", "qtypes", "answer_types"),
    "grounding": ("grounding",),
    "retrieval": ("retrieval_dim",),
    "sequence": ("temporal_kwargs",),
}
#: the temporal head a sequence run adds to a model that has none
TEMPORAL_KWARGS = {"d_model": 32, "num_layers": 2, "num_heads": 4, "fine_channels": 16}


def _keep_init_heads(
    options: TrainOptions, config: ModelConfig, vocab: Vocabulary | None, tasks: tuple[str, ...]
) -> tuple[ModelConfig, Vocabulary | None]:
    """Fine-tuning: the init model's architecture, with its heads of the tasks this run does not train kept
    as they are (so ``--init default --data MYPAIRS`` improves the change map and still captions and
    answers). Binary change data keeps the init model's classes (its changes train the change logit)."""
    from changescope.tasks.inference import resolve_model

    path = resolve_model(options.init)
    init = ModelConfig.load(path / "config.json")
    merged = ModelConfig.from_dict(init.to_dict(), path)
    # a saved model whose weights file leaves the frozen backbone to its package (``hub``): build it from
    # the package, as from_pretrained does; without this --init trained on a random backbone
    merged.backbone_pretrained = merged.backbone_pretrained or init.backbone_weights == "package"
    for task in tasks:
        for name in TASK_FIELDS[task]:
            setattr(merged, name, getattr(config, name))
    if "mask" in tasks:
        if init.classes and binary_remap(config.classes, init.classes):
            merged.classes = list(init.classes)
        merged.change_head_kwargs = init.change_head_kwargs or config.change_head_kwargs
        # the run trains one change head on its data, for every input: a coarse head it does not train
        # would decide change on satellite inputs with weights the user's pairs never saw (and with one
        # head, the GSD probe that picks between two goes too)
        merged.coarse_gsd, merged.coarse_change_threshold = None, ModelConfig.coarse_change_threshold
        merged.gsd_probe = False
    if options.gsd is not None:
        merged.gsd = _gsd_list(options.gsd)
    if options.image_size is not None:
        merged.image_size = options.image_size
    if "caption" not in tasks and init.vocab_size and (path / "vocab.json").is_file():
        vocab = Vocabulary.load(path / "vocab.json")
    return merged, vocab


def _unknown_changes(dataset, config: ModelConfig) -> bool:
    """Whether the training data holds changes of unknown class for this model (binary labels)."""
    return any(getattr(dataset, "remaps", ())) or binary_remap(dataset.classes, config.classes)


def _default_freeze(options: TrainOptions, config: ModelConfig, tasks: tuple[str, ...]) -> tuple[str, ...]:
    """What a run keeps fixed: ``--freeze`` when given; otherwise, fine-tuning from ``--init``, the change
    encoder whenever the model has heads this run does not train (their inputs must not move)."""
    explicit = parse_freeze(options.freeze)
    if explicit is not None:
        return explicit
    if not options.init:
        return ()
    model_tasks = {
        "caption": config.vocab_size > 0,
        "mask": bool(config.classes),
        "vqa": bool(config.answers),
        "grounding": config.grounding,
        "retrieval": config.retrieval_dim > 0,
        "sequence": bool(config.temporal_kwargs),
    }
    untrained = [t for t, has in model_tasks.items() if has and t not in tasks]
    heads = {
        "caption": "decoder",
        "mask": "mask_head",
        "vqa": "questions",
        "grounding": "grounding",
        "retrieval": "retrieval",
        "sequence": "temporal",
    }
    frozen = (["encoder"] if untrained else []) + [heads[t] for t in untrained]
    if "mask" in untrained and config.change_head_kwargs:
        frozen.append("change_head")  # part of the mask output: fixed with it
    if "grounding" in untrained and "mask_head" not in frozen:
        # grounding reads the mask head's fused map: that map must not move, so only the change head
        # (the change / no-change decision) learns
        frozen.append("mask_head")
    return tuple(frozen)


def _extend_init_vocab(init: str, vocab: Vocabulary) -> Vocabulary:
    """The init model's words first (so its embedding rows keep their ids), then the new ones."""
    from changescope.tasks.inference import resolve_model

    path = resolve_model(init) / "vocab.json"
    if not path.is_file():
        return vocab
    old = Vocabulary.load(path)
    words = old.itos[4:]
    known = set(words)
    return Vocabulary(words + [w for w in vocab.itos[4:] if w not in known], min_freq=vocab.min_freq)


def load_init_weights(model: ChangeModel, init: str) -> dict[str, int]:
    """Copy a saved model's tensors into ``model`` where names match: equal shapes whole, and a grown
    first dimension (a vocabulary with appended words) row by row. Returns counts for the log."""
    from safetensors.torch import load_file

    from changescope.tasks.inference import resolve_model

    path = resolve_model(init) / "model.safetensors"
    if not path.is_file():
        raise DataError(path, "--init needs a saved model (model.safetensors not found)")
    saved = load_file(str(path))
    packaged = ModelConfig.load(path.parent / "config.json").backbone_weights == "package"
    if packaged and not model.config.backbone_pretrained:
        raise ChangescopeError(
            f"--init {init}: its backbone comes from the {model.config.backbone} package, but this model was "
            "built with a random one (backbone_pretrained is false)"
        )
    state = model.state_dict()
    counts = {"copied": 0, "grown": 0, "skipped": 0, "new": 0, "packaged": 0}
    with torch.no_grad():
        for name, tensor in state.items():
            old = saved.get(name)
            if old is None and packaged and name.startswith("backbone."):
                counts["packaged"] += 1  # built from the package already (see _keep_init_heads)
            elif old is None:
                counts["new"] += 1
            elif old.shape == tensor.shape:
                tensor.copy_(old.to(tensor.dtype))
                counts["copied"] += 1
            elif (
                old.dim() == tensor.dim()
                and old.shape[1:] == tensor.shape[1:]
                and old.shape[0] < tensor.shape[0]
            ):
                tensor[: old.shape[0]].copy_(old.to(tensor.dtype))
                counts["grown"] += 1
            else:
                counts["skipped"] += 1
    return counts


def _load_run(out: Path) -> tuple[TrainOptions, ModelConfig, Vocabulary]:
    path = out / "run.json"
    if not path.is_file():
        raise DataError(path, "no training run to resume here (run.json not found)")
    run = json.loads(path.read_text(encoding="utf-8"))
    vocab = Vocabulary(run["vocab"]["words"], min_freq=run["vocab"]["min_freq"]) if run["vocab"] else None
    return TrainOptions.from_mapping(run["options"], path), ModelConfig.from_dict(run["config"], path), vocab


def _is_llm_run(options: TrainOptions, out: Path, resume: bool) -> bool:
    """An instruction-tuning run (``--preset llm-*``, or resuming one): ``tasks.llm_training``."""
    from changescope.models.llm_hub import is_llm_preset

    if not resume:
        return is_llm_preset(options.preset)
    try:
        return json.loads((out / "run.json").read_text(encoding="utf-8")).get("kind") == "change-llm"
    except (OSError, ValueError):
        return False


def train(options: TrainOptions, resume: bool = False) -> dict[str, Any] | None:
    """Train (or resume) a change model; return a summary with the best validation metric and model path.

    With ``devices > 1`` Lightning's DDP launcher starts one process per device by re-running this command;
    those processes (``LOCAL_RANK`` > 0) read the run that rank 0 prepared, and return None.
    """
    out = Path(options.out)
    if _is_llm_run(options, out, resume):
        from changescope.tasks.llm_training import train_llm

        return train_llm(options, resume)
    last = out / "checkpoints" / "last.ckpt"
    launched_rank = int(os.environ.get("LOCAL_RANK", "0")) if options.devices > 1 else 0
    if launched_rank > 0 and not resume:
        saved, config, vocab = _load_run(out)  # rank 0 prepared this run before launching us
        options = saved
    elif resume:
        saved, config, vocab = _load_run(out)
        if not last.is_file():
            raise DataError(
                last, "no checkpoint to resume from (the run stopped before its first epoch ended)"
            )
        # the run's own settings win, except how long to train
        options = TrainOptions(**{**asdict(saved), "epochs": options.epochs or saved.epochs})
    else:
        options.validate()
        options = TrainOptions(**asdict(options))  # _prepare_run fills in tasks and monitor
        if (out / "run.json").exists():
            raise DataError(
                out, "already holds a training run: pass --resume to continue it, or another --out"
            )
        out.mkdir(parents=True, exist_ok=True)
        config, vocab = _prepare_run(options, out)

    pl.seed_everything(options.seed, workers=True, verbose=False)
    val_ds, _ = open_pairs(options.data, "val", options.format, check_files=False)
    task = ChangeTask(config, vocab, options, tuple(val_ds.no_change_sentences))
    task.val_sources = SourceIndex.of_dataset(val_ds)
    tasks = task.tasks
    if options.init and not resume and launched_rank == 0:
        counts = load_init_weights(task.model, options.init)
        print(f"--init {options.init}: {counts}", flush=True)
    task.freeze(_default_freeze(options, config, tasks))
    if task.frozen:
        print(f"kept fixed: {', '.join(task.frozen)}", flush=True)

    def loader(split: str, train_mode: bool):
        dataset, records = open_pairs(options.data, split, options.format)
        if task.sequences:
            if options.limit_pairs:
                dataset.entries = dataset.entries[: options.limit_pairs]
            model = task.model if options.cache_features else None
            return sequence_loader(
                dataset,
                task.processor,
                options.batch_size,
                train_mode,
                options.num_workers,
                options.seed,
                model,
                augment=options.augment,
            )
        dataset = tiled_if_uncaptioned(dataset, config.image_size)
        if options.limit_pairs:
            dataset.entries = dataset.entries[: options.limit_pairs]
            keys = {str(e.images[0].resolve()) for e in dataset.entries}
            records = [r for r in records if str(Path(r.images[0]["path"]).resolve()) in keys]
        queries = None
        if "vqa" in tasks or "grounding" in tasks:
            queries = attach(dataset.entries, [r for r in records if r.task in tasks], options.data)
        model = task.model if options.cache_features else None
        return caption_loader(
            dataset,
            task.processor,
            options.batch_size,
            train_mode,
            options.num_workers,
            options.seed,
            model,
            masks="mask" in tasks,
            captions="caption" in tasks or "retrieval" in tasks,
            queries=queries,
            questions=options.questions_per_pair,
            open_prompts="vqa" in tasks and "caption" in tasks,
            remap_binary="mask" in tasks and binary_remap(dataset.classes, config.classes),
            augment=options.augment,
        )

    monitor = f"val/{options.monitor}"
    export = ExportBest(out, monitor, options)
    callbacks = [
        AtomicCheckpoint(dirpath=out / "checkpoints", save_top_k=0, save_last=True),
        export,
        MetricsLog(out / "metrics.jsonl"),
        pl.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=options.patience),
    ]
    trainer = pl.Trainer(
        default_root_dir=out,
        max_epochs=options.epochs,
        accelerator=options.accelerator,
        devices=options.devices,
        strategy="ddp" if options.devices > 1 else "auto",
        callbacks=callbacks,
        logger=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        deterministic=False,
        gradient_clip_val=5.0,
    )
    trainer.fit(task, loader("train", True), loader("val", False), ckpt_path=str(last) if resume else None)
    if not trainer.is_global_zero:
        return None  # under DDP, rank 0 exports the model and reports
    if export.best_epoch is None:
        raise ChangescopeError("training finished without a validation result; no model was exported")
    return {
        "model": str(out / "model"),
        "best_epoch": export.best_epoch,
        monitor: export.best,
        "epochs_run": trainer.current_epoch,
        "tasks": list(tasks),
    }
