"""Captions and answers that agree with the change mask of the same model.

A caption decoder and a mask head read the same change tokens but are trained (and fail) separately: on
real imagery a SynthChange-trained decoder often says "the two scenes seem identical" while the mask head,
trained on real change labels, marks a new building. The mask is the measurable output, so it wins:

- ``says_no_change(text)``: whether a sentence is a no-change sentence (LEVIR-CC's five, Dubai-CC's
  wordings, and the phrases they share).
- ``caption_from_mask(summary)``: a LEVIR-style sentence written from the mask's objects (class, count in
  LEVIR's words, the 3 x 3 grid cell of the largest object), the same vocabulary SynthChange's captions use.
- ``reconcile(caption, summary)``: the caption, or the mask's sentence when the caption says "no change"
  although the mask holds at least one object; with ``source`` saying which.
- ``agrees(caption, summary)`` is the consistency metric: both say "no change", or both say "change".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from changescope.data.readers.levir import LEVIR_NO_CHANGE
from changescope.data.synth.geometry import POSITIONS, grid_cell
from changescope.data.text import normalize

#: fragments that only no-change sentences contain (LEVIR-CC, Dubai-CC, SynthChange)
_NO_CHANGE = re.compile(
    r"\b(no (change|changes|difference|differences)|nothing (has )?changed|identical|"
    r"same as before|(almost|nearly) nothing|(remains?|stay(s|ed)?|kept) (the same|unchanged)|unchanged|"
    r"no (new|obvious|significant|visible) (change|changes|difference))\b"
)
_FIXED = {normalize(s) for s in LEVIR_NO_CHANGE}
#: what a tile whose label holds no object is described as (retrieval training and its benchmark)
NO_CHANGE_SENTENCE = "there is no difference"


def says_no_change(text: str | None) -> bool:
    if not text:
        return False
    words = normalize(text)
    return words in _FIXED or bool(_NO_CHANGE.search(words))


def _count(n: int) -> str:
    return {1: "a", 2: "two", 3: "three"}.get(n, "several" if n <= 6 else "many")


_PLURALS = {
    "change": "changed areas",
    "building": "buildings",
    "road": "roads",
    "tree": "trees",
    "water": "water",
}
_SINGULAR = {"change": "changed area", "building": "building", "road": "road", "tree": "group of trees"}


def _noun(name: str, n: int) -> str:
    if n == 1:
        return _SINGULAR.get(name, name)
    return _PLURALS.get(name, name if name.endswith("s") else f"{name}s")


def caption_from_mask(summary: dict[str, Any]) -> str | None:
    """A sentence for a ``postprocess.summarize_mask`` result, or None when it holds no object.

    Classes are named largest area first (at most two); the position is the grid cell of the centre of the
    largest object's box. Binary models (class "change") say "a changed area" / "several changed areas".
    """
    classes = [(name, c) for name, c in summary.get("classes", {}).items() if c["objects"] > 0]
    if not classes:
        return None
    classes.sort(key=lambda item: -item[1]["pixels"])
    name, top = classes[0]
    areas = top["object_areas"]
    x0, y0, x1, y1 = top["boxes"][max(range(len(areas)), key=areas.__getitem__)]
    where = POSITIONS[grid_cell((y0 + y1) / 2, (x0 + x1) / 2, 1)][0]
    n = top["objects"]
    verb = "has" if n == 1 else "have"
    if name == "water":
        first = f"the water has changed {where}"
    elif name == "change":
        first = f"{_count(n)} {_noun(name, n)} {verb} appeared {where}"
    else:
        first = f"{_count(n)} {_noun(name, n)} {verb} changed {where}"
    if len(classes) > 1:
        other, second = classes[1]
        first += f" and {_count(second['objects'])} {_noun(other, second['objects'])} changed nearby"
    return first


def region_caption(class_name: str) -> str:
    """The sentence for one changed region whose caption contradicted it (a scene's polygon)."""
    if class_name == "water":
        return "the water has changed here"
    return (
        f"{_count(1)} {_noun(class_name, 1)} has {'appeared' if class_name == 'change' else 'changed'} here"
    )


@dataclass
class Reconciled:
    caption: str | None
    #: "model" (the decoder's caption), "mask" (written from the mask, which contradicted the caption)
    source: str


def reconcile(caption: str | None, summary: dict[str, Any]) -> Reconciled:
    """The caption, unless it says no change while the mask holds objects: then the mask's sentence."""
    if caption is not None and says_no_change(caption) and summary.get("objects", 0) > 0:
        return Reconciled(caption_from_mask(summary), "mask")
    return Reconciled(caption, "model")


def agrees(caption: str | None, summary: dict[str, Any]) -> bool:
    """True when caption and mask agree on whether anything changed."""
    return says_no_change(caption) == (summary.get("objects", 0) == 0)
