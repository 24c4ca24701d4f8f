"""A ChangeLLM's numbers, checked against the change mask of the vision model it reads.

A language model states counts and shares as it learned to say them; the mask head of its own vision
model (the frozen change model, run as ``detect`` runs it: ``tasks.detection.iter_detections``) measures
them. Every reply that states a number, answers how many / how much, or says whether anything changed
gets a **citation** of that mask: what it counts (of the class the question or reply names, else all
classes: a change mask's class is the class of what changed, built or removed), the share of the image
it covers, what the reply stated and whether the two agree. The reply's text is kept as the model wrote
it and the mask's reading is appended, so a reader sees both and which one a number came from;
``agrees`` is the rate ``evaluate`` and the benchmark report.

Agreement: a stated count equals the mask's object count; a stated share is within 2 percentage points
or a quarter of the mask's share, a stated range ("0 to 10", CDVQA's ratio bins) holds it within 1 point;
"yes" / a change sentence agrees with a mask holding objects, "no" / a no-change sentence
(``tasks.consistency.says_no_change``) with an empty one.
"""

from __future__ import annotations

import re
from typing import Any

from changescope.tasks.consistency import _PLURALS, says_no_change

_WORDS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty"
).split()
NUMBER_WORDS = {word: n for n, word in enumerate(_WORDS)}
_NUMBER = re.compile(r"\b(\d+(?:\.\d+)?|" + "|".join(_WORDS) + r")\b\s*(%|percent\b)?", re.IGNORECASE)
_COUNT_Q = re.compile(r"\bhow many\b|\bnumber of\b|\bcount\b", re.IGNORECASE)
_AREA_Q = re.compile(r"\bhow much\b|\bratio\b|\bshare\b|\bpercent|\bproportion\b|\barea\b", re.IGNORECASE)
_CHANGED_Q = re.compile(r"^\s*(did|does|has|have|is|are|was|were)\b.*\bchang", re.IGNORECASE)
#: a share given as a bin, as CDVQA-style ratio answers are ("0 to 10", "10_to_20 %")
_RANGE = re.compile(r"\b(\d+(?:\.\d+)?)\s*(?:to|-|_to_)\s*(\d+(?:\.\d+)?)\s*(?:%|percent\b)?")
_NONE = re.compile(r"\b(none|nothing|no change)\b", re.IGNORECASE)
_BELOW_ONE = re.compile(r"\bless than 1\s*(%|percent)", re.IGNORECASE)


def stated_range(text: str) -> tuple[float, float] | None:
    """The first ``a to b`` range a sentence states, if any."""
    found = _RANGE.search(text.replace("_", " "))
    return (float(found.group(1)), float(found.group(2))) if found else None


def stated_numbers(text: str) -> tuple[list[int], list[float]]:
    """The counts (whole numbers, digits or words up to twenty) and the percentages a sentence states."""
    counts: list[int] = []
    shares: list[float] = []
    if _BELOW_ONE.search(text):
        shares.append(0.5)
        text = _BELOW_ONE.sub(" ", text)
    for match in _NUMBER.finditer(text):
        word, percent = match.group(1).lower(), match.group(2)
        value = float(NUMBER_WORDS[word]) if word in NUMBER_WORDS else float(word)
        if percent:
            shares.append(value)
        elif value.is_integer():
            counts.append(int(value))
    return counts, shares


def _named_class(text: str, classes: dict[str, Any]) -> str | None:
    """The first change class a question or reply names (singular or plural), if any."""
    lowered = text.lower()
    for name in classes:
        forms = {name, _PLURALS.get(name, name + "s"), name.replace("_", " ")}
        if any(re.search(rf"\b{re.escape(f)}\b", lowered) for f in forms):
            return name
    return None


def _close(stated: float, measured: float) -> bool:
    return abs(stated - measured) <= max(2.0, 0.25 * measured)


def citation(question: str, answer: str, summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The mask's reading behind ``answer`` to ``question`` (``summary``: ``postprocess.summarize_mask`` of
    the vision model's cleaned mask), or None when the reply states no number and no change / no change
    (or there is no mask)."""
    if summary is None:
        return None
    counts, shares = stated_numbers(answer)
    span = stated_range(answer)
    kind = None
    if _AREA_Q.search(question) or shares:
        kind = "area"
        if not shares and not span:  # "none of it"; a bare number answers a ratio question in percent
            shares = [0.0] if _NONE.search(answer) else [float(c) for c in counts[:1]]
    elif _COUNT_Q.search(question) or counts:
        kind = "count"
        if not counts and _NONE.search(answer):
            counts = [0]
    elif _CHANGED_Q.search(question) or says_no_change(answer):
        kind = "changed"
    if kind is None:
        return None
    classes = summary.get("classes", {})
    name = _named_class(question, classes) or _named_class(answer, classes)
    part = classes[name] if name is not None else None
    objects = part["objects"] if part else int(summary["objects"])
    percent = float(part["percent"] if part else summary["changed_percent"])
    if kind == "count":
        agrees = bool(counts) and counts[0] == objects
    elif kind == "area" and span is not None and not shares:
        agrees = span[0] - 1 <= percent <= span[1] + 1
    elif kind == "area":
        agrees = bool(shares) and _close(shares[0], percent)
    else:
        said_change = not (says_no_change(answer) or re.match(r"\s*no\b", answer, re.IGNORECASE))
        agrees = said_change == (objects > 0)
    return {
        "source": "change mask",
        "kind": kind,
        "class": name,
        "objects": objects,
        "changed_percent": round(percent, 2),
        "stated": {"counts": counts, "percent": shares, "range": list(span) if span else None},
        "agrees": agrees,
    }


def cited(answer: str, cite: dict[str, Any] | None) -> str:
    """``answer`` with the mask's reading appended: "... [change mask: 3 buildings, 2.1 % of the image]"."""
    if cite is None:
        return answer
    name = cite["class"]
    n = cite["objects"]
    noun = (_PLURALS.get(name, f"{name}s") if n != 1 else name) if name else "changed objects"
    if name is None and n == 1:
        noun = "changed object"
    return f"{answer} [change mask: {n} {noun}, {cite['changed_percent']:.1f} % of the image]"
