"""The evaluate layer: one loop over a dataset split, one forward pass per batch, shared accumulators.

``predict_split`` yields every pair's outputs (caption, change mask at the label's size, closed answers,
grounding masks at each target's size) from one forward pass of a batch; ``SplitMetrics`` feeds them to
the accumulators of ``metrics.accumulators`` (the ones training validation uses) and formats the scores
as ``changescope evaluate`` reports them. ``evaluate`` is the command; the demo scores its test pairs through
the same loop, with a callback for its pictures.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from changescope.errors import DataError
from changescope.metrics.accumulators import (
    CaptionAccumulator,
    GroundingAccumulator,
    RetrievalAccumulator,
    VQAAccumulator,
)
from changescope.tasks.inference import Decoding, load, write_jsonl


@dataclass
class PairOutput:
    """What the model said about one pair of a split, beside the sample it read."""

    sample: dict[str, Any]
    caption: str | None = None
    #: class ids at the sample's label size (its image size when unlabelled)
    mask: torch.Tensor | None = None
    #: ``(predicted closed answer or None, true answer, question type)`` per question of the pair
    answers: list[tuple[str | None, str, str]] = field(default_factory=list)
    #: ``(predicted, target)`` boolean masks at the target's own size, per grounding query of the pair
    grounding: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    #: the retrieval embedding of the pair and those of its captions ``[len(captions), dim]``
    embedding: np.ndarray | None = None
    caption_embeddings: np.ndarray | None = None
    #: the caption-embedding baseline: the generated caption and the references as plain sentence embeddings
    caption_vector: np.ndarray | None = None
    reference_vectors: np.ndarray | None = None


def _label_size(mask: torch.Tensor, sample: dict[str, Any]) -> torch.Tensor:
    if "mask" in sample and mask.shape != sample["mask"].shape:
        resized = torch.nn.functional.interpolate(
            mask[None, None].float(), size=tuple(sample["mask"].shape), mode="nearest-exact"
        )
        return resized[0, 0].long()
    return mask


def predict_split(
    model,
    processor,
    dataset,
    decoding: Decoding,
    masks: bool = True,
    captions: bool = True,
    queries: list | None = None,
    retrieval: bool = False,
) -> Iterator[PairOutput]:
    """Every pair of ``dataset`` in order, ``decoding.batch_size`` at a time and one forward pass a batch.

    The caption when ``captions`` and the model has a decoder; the class mask when ``masks`` and it has a
    mask head (logits upsampled bilinearly to the image's size before argmax, then to the label's size;
    pairs larger than the model's size are mapped tile by tile at their own resolution, as ``detect``
    does); closed answers and grounding masks for ``queries`` (``tasks.queries.attach`` of the split's
    records, one ``PairQueries`` per pair), each grounding logit map upsampled to its target's size; with
    ``retrieval``, the pair's retrieval embedding and those of its reference captions."""
    from changescope.tasks.detection import mask_probabilities
    from changescope.tasks.queries import read_target
    from changescope.tasks.vqa import _closed

    masks = masks and "mask" in model.tasks
    captions = captions and model.decoder is not None
    vqa = queries is not None and "vqa" in model.tasks
    grounding = queries is not None and "grounding" in model.tasks
    size = processor.image_size
    for start in range(0, len(dataset), decoding.batch_size):
        indices = range(start, min(start + decoding.batch_size, len(dataset)))
        outputs = [PairOutput(dataset[i]) for i in indices]
        images = torch.stack([processor.resize(o.sample["image"]) for o in outputs])
        gsds = {o.sample.get("gsd") for o in outputs}
        out = model(images, masks=masks, pixels=grounding, gsd=gsds.pop() if len(gsds) == 1 else None)
        if captions:
            texts = processor.decode(model.generate_from(out.memory, **decoding.kwargs()))
            for o, text in zip(outputs, texts, strict=True):
                o.caption = text
        if masks:
            for k, o in enumerate(outputs):
                image = o.sample["image"]
                if max(image.shape[-2:]) > size:
                    mask = mask_probabilities(model, processor, image, o.sample.get("gsd")).argmax(0)
                else:
                    mask = processor.resize_logits(out.mask_logits[k : k + 1], image.shape[-2:]).argmax(1)[0]
                o.mask = _label_size(mask, o.sample)
        if vqa:
            rows = [(k, q) for k, i in enumerate(indices) for q in queries[i].vqa]
            if rows:
                index = torch.tensor([k for k, _ in rows])
                read = model.read_queries(out.memory, [question for _, (question, _, _) in rows], index)
                for (k, (_, qtype, truth)), (_, closed, _) in zip(rows, _closed(model, read), strict=True):
                    outputs[k].answers.append((closed, truth, qtype))
        if grounding:
            rows = [(k, g) for k, i in enumerate(indices) for g in queries[i].grounding]
            if rows:
                index = torch.tensor([k for k, _ in rows])
                read = model.read_queries(out.memory, [text for _, (text, _) in rows], index)
                logits = model.ground(out, read, (size, size))
                for (k, (_, path)), row in zip(rows, logits, strict=True):
                    target = read_target(path)
                    pred = processor.resize_logits(row[None, None].float(), target.shape)[0, 0] > 0
                    outputs[k].grounding.append((pred.numpy(), target))
        if retrieval:
            pairs = model.embed_pairs(out.memory).numpy()
            refs = [t for o in outputs for t in o.sample["captions"]]
            texts = model.embed_texts(refs).numpy() if refs else np.zeros((0, pairs.shape[1]), np.float32)
            start = 0
            if captions:
                from changescope.models.heads.retrieval_head import sentence_embeddings

                plain = sentence_embeddings(model.question_encoder, [o.caption for o in outputs] + refs)
                generated, references = plain[: len(outputs)].numpy(), plain[len(outputs) :].numpy()
            for k, (o, vector) in enumerate(zip(outputs, pairs, strict=True)):
                rows = slice(start, start + len(o.sample["captions"]))
                o.embedding, o.caption_embeddings = vector, texts[rows]
                if captions:
                    o.caption_vector, o.reference_vectors = generated[k], references[rows]
                start += len(o.sample["captions"])
        yield from outputs


class SplitMetrics:
    """The accumulators of one split: captions, change-mask confusion, closed answers, grounding IoU.

    ``binary``: the split's labels are background / change only, so a class model is scored on its
    changed / unchanged decision."""

    def __init__(
        self,
        captions: bool,
        classes: list[str] | None,
        binary: bool = False,
        no_change_sentences: tuple[str, ...] = (),
        vqa: bool = False,
        grounding: bool = False,
        retrieval: bool = False,
    ):
        from changescope.data.sample import BINARY_CLASSES, IGNORE_INDEX
        from changescope.metrics.segmentation import ConfusionMatrix

        self.binary = binary
        self.classes = list(BINARY_CLASSES if binary else classes or [])
        self.captions = CaptionAccumulator(no_change_sentences) if captions else None
        self.confusion = ConfusionMatrix(len(self.classes), ignore_index=IGNORE_INDEX) if classes else None
        self.answers = VQAAccumulator() if vqa else None
        self.grounding = GroundingAccumulator() if grounding else None
        self.retrieval = RetrievalAccumulator() if retrieval else None
        self.retrieval_baseline = RetrievalAccumulator() if retrieval else None

    def update(self, output: PairOutput) -> None:
        from changescope.tasks.data import binary_target

        sample = output.sample
        if self.captions is not None and output.caption is not None:
            self.captions.update([sample["id"]], [output.caption], [sample["captions"]], [sample["changed"]])
        if self.confusion is not None and output.mask is not None and "mask" in sample:
            mask = binary_target(output.mask) if self.binary else output.mask
            self.confusion.update(mask, sample["mask"])
        if self.answers is not None and output.answers:
            keys = [(sample["id"], k) for k in range(len(output.answers))]
            predicted, truth, qtypes = zip(*output.answers, strict=True)
            self.answers.update(keys, predicted, truth, qtypes)
        if self.grounding is not None:
            for pred, target in output.grounding:
                self.grounding.update(pred, target)
        if self.retrieval is not None and output.embedding is not None:
            self.retrieval.update(
                [sample["id"]],
                output.embedding[None],
                [sample["captions"]],
                output.caption_embeddings,
                [sample["changed"]],
            )
        if self.retrieval_baseline is not None and output.caption_vector is not None:
            self.retrieval_baseline.update(
                [sample["id"]],
                output.caption_vector[None],
                [sample["captions"]],
                output.reference_vectors,
                [sample["changed"]],
            )

    def compute(self, dataset, root: str | Path, meteor: bool | None = None) -> dict[str, Any]:
        """Caption keys as ``changescope score`` gives them, ``detection``, ``vqa`` and ``grounding``."""
        from changescope.metrics.score import caption_report

        result: dict[str, Any] = {}
        if self.captions is not None and len(self.captions):
            try:
                scores = self.captions.compute(meteor=meteor)
            except ValueError as err:  # e.g. a pair whose references hold no words
                raise DataError(root, str(err)) from None
            result.update(caption_report(scores, dataset))
        if self.confusion is not None:
            result["detection"] = {
                **self.confusion.compute(self.classes),
                "classes": self.classes,
                "binary": self.binary,
            }
        if self.answers is not None and len(self.answers):
            result["vqa"] = self.answers.compute()
        if self.grounding is not None and len(self.grounding):
            result["grounding"] = self.grounding.compute()
        if self.retrieval is not None and len(self.retrieval):
            result["retrieval"] = self.retrieval.compute()
            mixed = any(self.retrieval.changed.values()) and not all(self.retrieval.changed.values())
            if mixed:
                result["retrieval"]["changed_only"] = self.retrieval.compute(exclude_unchanged=True)
            if len(self.retrieval_baseline):
                baseline = self.retrieval_baseline.compute()
                if mixed:
                    baseline["changed_only"] = self.retrieval_baseline.compute(exclude_unchanged=True)
                result["retrieval"]["caption_baseline"] = baseline
        return result


def score_split(
    model,
    processor,
    dataset,
    decoding: Decoding,
    records: list | None = None,
    masks: bool = True,
    captions: bool = True,
    on_pair: Callable[[PairOutput], None] | None = None,
    retrieval: bool = True,
) -> SplitMetrics:
    """Run ``predict_split`` over a split and accumulate its scores; ``on_pair`` sees every pair's output
    (the demo draws its overlays from it)."""
    from changescope.data.sample import BINARY_CLASSES
    from changescope.tasks.queries import attach

    masks = masks and "mask" in model.tasks and getattr(dataset, "has_masks", True)
    captions = captions and model.decoder is not None
    retrieval = retrieval and "retrieval" in model.tasks and any(e.captions for e in dataset.entries)
    tasks = [t for t in ("vqa", "grounding") if t in model.tasks and any(r.task == t for r in records or ())]
    queries = attach(dataset.entries, [r for r in records if r.task in tasks], "records") if tasks else None
    metrics = SplitMetrics(
        captions=captions,
        classes=list(model.config.classes) if masks else None,
        binary=masks and tuple(dataset.classes) == BINARY_CLASSES,
        no_change_sentences=tuple(getattr(type(dataset), "no_change_sentences", ())),
        vqa="vqa" in tasks,
        grounding="grounding" in tasks,
        retrieval=retrieval,
    )
    with torch.inference_mode():
        outputs = predict_split(model, processor, dataset, decoding, masks, captions, queries, retrieval)
        for output in outputs:
            metrics.update(output)
            if on_pair is not None:
                on_pair(output)
    return metrics


def evaluate(
    spec: str | Path,
    data: str | Path,
    split: str = "test",
    format: str | None = None,
    decoding: Decoding | None = None,
    meteor: bool | None = None,
    predictions_out: str | Path | None = None,
    precision: str | None = None,
    limit: int | None = None,
    tta: int | None = None,
) -> dict[str, Any]:
    """Run every task the model and the data share on ``split`` and score it: caption keys as ``score``
    gives them, ``detection`` (change masks), ``vqa`` (OA, AA, per type), ``grounding`` (mIoU, cIoU) and
    ``retrieval`` (both directions, RSICRC's numbers, changed pairs only, and the caption-embedding
    baseline). ``limit``: only the split's first pairs (a quick look; papers score whole splits). ``tta``: the
    test-time views the change masks average (None: the model's own; ``ChangeModel.set_tta``)."""
    from changescope.data.sample import BINARY_CLASSES
    from changescope.tasks.queries import first_pairs, open_pairs

    decoding = decoding or Decoding()
    model, processor, path = load(spec, precision, tta)
    dataset, records = open_pairs(data, split, format)
    records = first_pairs(dataset, [r for r in records if r.task in model.tasks], limit)
    with_masks = "mask" in model.tasks and dataset.has_masks
    has_references = any(e.captions for e in dataset.entries)
    with_captions = model.decoder is not None and has_references
    with_retrieval = "retrieval" in model.tasks and has_references
    binary = tuple(dataset.classes) == BINARY_CLASSES
    if with_masks and not binary and list(dataset.classes) != list(model.config.classes):
        raise DataError(
            data,
            f"the data's mask classes {list(dataset.classes)} differ from the model's "
            f"{list(model.config.classes)}",
        )
    if not (with_captions or with_masks or with_retrieval or records):
        raise DataError(
            data,
            "this split has nothing the model can be scored on "
            f"(it was trained for: {', '.join(model.tasks)})",
        )
    metrics = score_split(
        model, processor, dataset, decoding, records, masks=with_masks, captions=with_captions
    )
    if metrics.captions is not None and predictions_out is not None:
        rows = ({"id": k, "caption": v} for k, v in metrics.captions.predictions.items())
        write_jsonl(predictions_out, rows)
    result = metrics.compute(dataset, data, meteor=meteor)
    training = path / "training.json"
    result.update(
        {
            "model": str(path),
            "preset": model.config.preset,
            "tasks": list(model.tasks),
            "decoding": {**asdict(decoding), "max_len": processor.max_len},
            "precision": model.precision,
            "tta": model.tta,
            "vocab_sha256": processor.vocab.sha256 if processor.vocab is not None else None,
            "seed": json.loads(training.read_text())["seed"] if training.is_file() else None,
            "data": str(data),
            "split": split,
            "n": len(dataset),
            "limit": limit,
        }
    )
    return result


def caption_split(model, processor, dataset, decoding: Decoding) -> dict[str, str]:
    """Captions by pair id for every pair of a split."""
    with torch.inference_mode():
        outputs = predict_split(model, processor, dataset, decoding, masks=False)
        return {o.sample["id"]: o.caption for o in outputs}
