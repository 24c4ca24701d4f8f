"""The Python API: ``changescope.load("default")`` returns a :class:`ChangePipeline`.

    import changescope

    pipe = changescope.load("default")                  # or a model / run directory; precision="bf16"
    pipe.describe("before.png", "after.png")            # -> "a new building is constructed at the bottom"
    pipe.describe(["a1.png", "a2.png"], ["b1.png", "b2.png"])   # batched -> a list of captions
    found = pipe.detect("before.png", "after.png")      # found.mask: class ids [H, W]; found.result: counts
    pipe.detect(["a1.png", "a2.png"], ["b1.png", "b2.png"])     # batched -> a list of detections
    reply = pipe.ask("before.png", "after.png", "how many buildings were built?")
    pipe.scene("a.tif", "b.tif", "out/")                # the `changescope scene` pipeline; its summary
    pipe.scene("2016.tif", "2018.tif", "2020.tif", out="out/")   # a stack: per interval, date of change
    pipe.sequence(["2016.png", "2018.png", "2020.png"], ["2016", "2018", "2020"])   # when it changed
    pipe.match("before.png", "after.png", ["new roads", "no change"])   # pair -> text: ranked sentences
    pipe.embed("before.png", "after.png") @ pipe.embed_texts(["new roads"]).T   # the search space

Images are file paths, PIL images or ``[H, W, 3]`` arrays (uint8, or float in [0, 1]). The methods are
the ones the command line runs (``tasks/``), so a caption, mask or answer here is the one the CLI gives.
Inference needs no training extra (Lightning); questions need ``[vqa]``, scenes ``[geo]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from changescope.errors import ChangescopeError
from changescope.postprocess import MIN_AREA


def _pairs(before, after) -> tuple[bool, list[tuple[str, object, object]]]:
    """``(single, pairs)``: one pair of images, or two lists (or tuples) of them, as ``(id, before, after)``
    with the position as id."""
    single = not isinstance(before, (list, tuple))
    befores, afters = ([before], [after]) if single else (list(before), list(after))
    if len(befores) != len(afters):
        raise ChangescopeError(f"{len(befores)} before images but {len(afters)} after images")
    return single, [(str(i), a, b) for i, (a, b) in enumerate(zip(befores, afters, strict=True))]


class ChangePipeline:
    """A loaded change model and what can be asked of it."""

    def __init__(self, model, processor, path: Path):
        self.model, self.processor, self.path = model, processor, path

    def __repr__(self) -> str:
        return (
            f"ChangePipeline({str(self.path)!r}, tasks={list(self.tasks)}, precision={self.precision!r}, "
            f"tta={self.tta})"
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        """What the model does: a subset of caption, mask, vqa, grounding, retrieval."""
        return tuple(self.model.tasks)

    @property
    def classes(self) -> list[str]:
        """The change classes of ``detect``'s mask (index 0: no change)."""
        return list(self.model.config.classes)

    @property
    def precision(self) -> str:
        return self.model.precision

    @property
    def tta(self) -> int:
        """Test-time views the change masks average (``load(..., tta=)``)."""
        return self.model.tta

    def describe(
        self, before, after, *, beam: int = 1, batch_size: int = 32, gsd: float | None = None
    ) -> str | list[str]:
        """A caption of what changed. One pair gives a string; two lists (or tuples) of images give a list,
        captioned ``batch_size`` pairs at a time. With a mask head, a "no change" caption that the model's own
        mask contradicts is replaced by one written from the mask, as ``changescope describe`` does; ``gsd``
        (metres per pixel) picks the change head of that mask (the default has one for 5 m or coarser)."""
        from changescope.tasks.describe import describe_files
        from changescope.tasks.inference import Decoding

        single, pairs = _pairs(before, after)
        decoding = Decoding(beam_size=beam, batch_size=batch_size)
        rows = describe_files(self.model, self.processor, pairs, decoding, gsd)
        captions = [row["caption"] for row in rows]
        return captions[0] if single else captions

    def detect(
        self,
        before,
        after,
        *,
        min_area: int = MIN_AREA,
        gsd: float | None = None,
        beam: int = 1,
        batch_size: int = 32,
    ):
        """Where it changed: a ``Detection`` with ``mask`` (class ids ``[H, W]`` at the input's size, objects
        under ``min_area`` pixels removed), ``result`` (per class pixels, percent, objects with boxes as
        normalised xyxy, and the caption) and ``image`` (the decoded after image, for overlays). ``gsd``:
        metres per pixel, resampled when far from the model's. Two lists (or tuples) of images give a list,
        ``batch_size`` pairs per forward pass (``tasks.detection.iter_detections``)."""
        from changescope.tasks.detection import iter_detections
        from changescope.tasks.inference import Decoding

        if min_area < 0:
            raise ChangescopeError("min_area must be >= 0")
        if batch_size < 1:
            raise ChangescopeError("batch_size must be >= 1")
        single, pairs = _pairs(before, after)
        decoding = Decoding(beam_size=beam, batch_size=batch_size)
        found = list(iter_detections(self.model, self.processor, pairs, min_area, decoding, gsd, batch_size))
        return found[0] if single else found

    def ask(self, before, after, question: str, *, min_area: int = MIN_AREA, batch_size: int = 16):
        """An ``Answer``: ``result["answer"]`` (closed answers from the VQA head, free-form from the caption
        decoder), with a grounding head ``mask`` (bool ``[H, W]``: where the asked-for change is), and
        ``image`` (the decoded after image). Two lists (or tuples) of images give a list of answers to the
        one question, ``batch_size`` pairs per forward pass (``tasks.vqa.iter_answers``)."""
        from changescope.tasks.vqa import iter_answers

        if batch_size < 1:
            raise ChangescopeError("batch_size must be >= 1")
        single, pairs = _pairs(before, after)
        answers = list(iter_answers(self.model, self.processor, pairs, question, min_area, batch_size))
        return answers[0] if single else answers

    def embed(self, before, after, *, batch_size: int = 32) -> np.ndarray:
        """Unit retrieval embeddings of pairs (the vectors ``changescope index`` stores): ``[dim]`` for one
        pair, ``[N, dim]`` for two lists; a dot product with :meth:`embed_texts` is the search score."""
        from changescope.tasks.search import iter_embeddings

        if batch_size < 1:
            raise ChangescopeError("batch_size must be >= 1")
        single, pairs = _pairs(before, after)
        rows = [{"before": a, "after": b} for _, a, b in pairs]
        vectors = np.stack([v for _, v in iter_embeddings(self.model, self.processor, rows, batch_size)])
        return vectors[0] if single else vectors

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Unit retrieval embeddings ``[N, dim]`` of sentences (search queries, captions)."""
        if isinstance(texts, str) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ChangescopeError("texts must be a non-empty list of non-empty sentences")
        self.model.require("retrieval")
        with torch.inference_mode():
            return self.model.embed_texts(list(texts)).numpy()

    def match(self, before, after, texts: list[str], *, batch_size: int = 32):
        """Pair -> text: ``texts`` ranked by how well each describes the pair, as ``(text, score)`` best
        first (score: the cosine of the retrieval embeddings). Two lists of images give one ranking each."""
        scores = np.atleast_2d(self.embed(before, after, batch_size=batch_size)) @ self.embed_texts(texts).T
        ranked = [[(texts[j], float(row[j])) for j in np.argsort(-row, kind="stable")] for row in scores]
        return ranked[0] if not isinstance(before, (list, tuple)) else ranked

    def sequence(self, images, dates=None, *, min_area: int = MIN_AREA, batch_size: int = 16):
        """Three or more dates (oldest first, one size): a ``SequenceChange`` with ``interval_masks``
        (class ids ``[T-1, H, W]``), ``first_change`` (``[H, W]``, -1 = never), per-interval ``results`` and
        a dated ``caption``. Each interval is mapped by this pair model on its own
        (``tasks.sequence.detect_sequence``); ``dates`` label the caption."""
        from changescope.tasks.sequence import detect_sequence

        return detect_sequence(self.model, self.processor, list(images), dates, min_area, batch_size)

    def scene(
        self,
        *paths: str | Path,
        out: str | Path | None = None,
        dates: list[str] | None = None,
        overwrite: bool = False,
        **options,
    ):
        """Run ``changescope scene`` on rasters of any size; return its summary (also in
        ``OUT/summary.json``): ``scene(a, b, out)`` for a pair, ``scene(d1, d2, d3, ..., out=OUT)`` for a
        stack of dates, oldest first (``out`` may also be the last positional argument). ``dates``: one
        per file (YYYY-MM-DD, YYYYMMDD or YYYY; default for a stack: from each file's metadata or name).
        ``options`` are ``tasks.scene.SceneOptions`` fields (bands, tile, ...)."""
        from changescope.tasks.scene import SceneOptions, run_scene, run_scene_stack

        if out is None and paths:
            *paths, out = paths
        if out is None or len(paths) < 2:
            raise ChangescopeError("scene takes 2 or more rasters, oldest first, and an output folder (out=)")
        triple = (self.model, self.processor, self.path)
        run = {"options": SceneOptions(**options), "progress": False, "overwrite": overwrite, "dates": dates}
        if len(paths) == 2:
            return run_scene(*paths, out, triple, **run)
        return run_scene_stack(paths, out, triple, **run)


def load(
    model: str | Path = "default",
    precision: str | None = None,
    device: str | None = None,
    tta: int | None = None,
) -> ChangePipeline:
    """The model ``model`` (a model directory, a training run directory, or 'default': the shipped one) as a
    :class:`ChangePipeline`. ``precision``: 'fp32', 'bf16' or 'fp16' inference autocast (None: the
    measured default). ``device``: e.g. 'cuda' (default: cpu). ``tta``: change masks averaged over this
    many flips and turns of each pair (1, 2, 4 or 8; None: the model's own setting, 4 for the default;
    steadier masks for about that many times the mask work, RESULTS.md "Test-time views")."""
    from changescope.tasks.inference import default_precision
    from changescope.tasks.inference import load as load_model

    loaded, processor, path = load_model(model, precision, tta)
    if device is not None:
        loaded.to(torch.device(device))
        if precision is None:
            loaded.set_precision(default_precision(device))
    return ChangePipeline(loaded, processor, path)


__all__ = ["ChangePipeline", "load"]
