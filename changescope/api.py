"""The Python API: ``changescope.load("default")`` returns a :class:`ChangePipeline`.

    import changescope

    pipe = changescope.load("default")                  # or a model / run directory; precision="bf16"
    pipe.describe("before.png", "after.png")            # -> "a new building is constructed at the bottom"
    pipe.describe(["a1.png", "a2.png"], ["b1.png", "b2.png"])   # batched -> a list of captions
    found = pipe.detect("before.png", "after.png")      # found.mask: class ids [H, W]; found.result: counts
    reply = pipe.ask("before.png", "after.png", "how many buildings were built?")
    pipe.scene("a.tif", "b.tif", "out/")                # the `changescope scene` pipeline; its summary

Images are file paths, PIL images or ``[H, W, 3]`` arrays (uint8, or float in [0, 1]). The methods are
the ones the command line runs (``tasks/``), so a caption, mask or answer here is the one the CLI gives.
Inference needs no training extra (Lightning); questions need ``[vqa]``, scenes ``[geo]``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from changescope.errors import ChangescopeError
from changescope.tasks.detection import MIN_AREA


class ChangePipeline:
    """A loaded change model and what can be asked of it."""

    def __init__(self, model, processor, path: Path):
        self.model, self.processor, self.path = model, processor, path

    def __repr__(self) -> str:
        return f"ChangePipeline({str(self.path)!r}, tasks={list(self.tasks)}, precision={self.precision!r})"

    @property
    def tasks(self) -> tuple[str, ...]:
        """What the model does: a subset of caption, mask, vqa, grounding."""
        return tuple(self.model.tasks)

    @property
    def classes(self) -> list[str]:
        """The change classes of ``detect``'s mask (index 0: no change)."""
        return list(self.model.config.classes)

    @property
    def precision(self) -> str:
        return self.model.precision

    def describe(self, before, after, *, beam: int = 1, batch_size: int = 32) -> str | list[str]:
        """A caption of what changed. One pair gives a string; two lists (or tuples) of images give a list,
        captioned ``batch_size`` pairs at a time. With a mask head, a "no change" caption that the model's own
        mask contradicts is replaced by one written from the mask, as ``changescope describe`` does."""
        from changescope.tasks.inference import Decoding, describe_files

        single = not isinstance(before, (list, tuple))
        befores, afters = ([before], [after]) if single else (list(before), list(after))
        if len(befores) != len(afters):
            raise ChangescopeError(f"{len(befores)} before images but {len(afters)} after images")
        decoding = Decoding(beam_size=beam, batch_size=batch_size)
        pairs = [(str(i), a, b) for i, (a, b) in enumerate(zip(befores, afters, strict=True))]
        rows = describe_files(self.model, self.processor, pairs, decoding)
        captions = [row["caption"] for row in rows]
        return captions[0] if single else captions

    def detect(self, before, after, *, min_area: int = MIN_AREA, gsd: float | None = None, beam: int = 1):
        """Where it changed: a ``Detection`` with ``mask`` (class ids ``[H, W]`` at the input's size, objects
        under ``min_area`` pixels removed) and ``result`` (per class pixels, percent, objects with boxes as
        normalised xyxy, and the caption). ``gsd``: metres per pixel, resampled when far from the model's."""
        from changescope.tasks.detection import detect_pair
        from changescope.tasks.inference import Decoding

        if min_area < 0:
            raise ChangescopeError("min_area must be >= 0")
        return detect_pair(self.model, self.processor, before, after, min_area, Decoding(beam_size=beam), gsd)

    def ask(self, before, after, question: str, *, min_area: int = MIN_AREA):
        """An ``Answer``: ``result["answer"]`` (closed answers from the VQA head, free-form from the caption
        decoder) and, with a grounding head, ``mask`` (bool ``[H, W]``: where the asked-for change is)."""
        from changescope.tasks.vqa import ask_pair

        return ask_pair(self.model, self.processor, before, after, question, min_area)

    def scene(self, a: str | Path, b: str | Path, out: str | Path, *, overwrite: bool = False, **options):
        """Run ``changescope scene`` on two rasters of any size; return its summary (also in
        ``OUT/summary.json``). ``options`` are ``tasks.scene.SceneOptions`` fields (bands, tile, ...)."""
        from changescope.tasks.scene import SceneOptions, run_scene

        triple = (self.model, self.processor, self.path)
        return run_scene(a, b, out, triple, SceneOptions(**options), progress=False, overwrite=overwrite)


def load(
    model: str | Path = "default", precision: str | None = None, device: str | None = None
) -> ChangePipeline:
    """The model ``model`` (a model directory, a training run directory, or 'default': the shipped one) as a
    :class:`ChangePipeline`. ``precision``: 'fp32', 'bf16' or 'fp16' inference autocast (None: the
    measured default). ``device``: e.g. 'cuda' (default: cpu)."""
    from changescope.tasks.inference import load as load_model

    loaded, processor, path = load_model(model, precision)
    if device is not None:
        loaded.to(torch.device(device))
    return ChangePipeline(loaded, processor, path)


__all__ = ["ChangePipeline", "load"]
