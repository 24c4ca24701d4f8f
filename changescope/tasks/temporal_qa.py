"""Temporal questions over a stack of dates, answered from the interval masks a model found.

"When did the scene first change?", "when were buildings built?", "how many times did it change?",
"did anything change between 2016 and 2019?": every answer here is read off
:class:`~changescope.tasks.sequence.SequenceChange` (which intervals hold changed objects, of which class),
never generated, so it cites what it came from (``source``, ``intervals``). Answers use the wording of
the SynthChange temporal questions (``data/synth/sequence.py``): "between 2016 and 2018" (the years on
either side of an interval), "never", a count in digits, "yes" / "no".

A change class names what changed, not which way: the mask of a new building and of a demolished one are
both "building", so "when were buildings demolished?" is answered with the interval where buildings
changed. Questions that are not about time return None (ask them of a pair).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

#: words of a question -> the change class it asks about
CLASS_WORDS = {
    "building": ("building", "buildings", "house", "houses", "home", "homes"),
    "road": ("road", "roads", "street", "streets"),
    "tree": ("tree", "trees", "wood", "woods", "forest", "vegetation"),
    "water": ("water", "pond", "ponds", "lake", "lakes", "river"),
}
NEVER = "never"
_YEAR = re.compile(r"\b(1[89]\d\d|2\d\d\d)\b")


def _words(question: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", question.lower())


def asked_class(question: str, classes: Sequence[str]) -> str | None:
    words = set(_words(question))
    for name, synonyms in CLASS_WORDS.items():
        if name in classes and words & set(synonyms):
            return name
    return None


def _intervals_with(change, name: str | None) -> list[int]:
    """Intervals whose mask holds objects (of class ``name``, or of any class)."""
    out = []
    for row in change.results:
        classes = row.get("classes", {})
        rows = [classes.get(name, {})] if name else list(classes.values())
        if any(c.get("objects", 0) > 0 for c in rows):
            out.append(row["interval"])
    return out


def _year(date: str) -> str:
    return date[:4]


def interval_phrase(dates: Sequence[str], i: int) -> str:
    return f"between {_year(dates[i])} and {_year(dates[i + 1])}"


def _span(question: str, dates: Sequence[str]) -> tuple[int, int] | None:
    """The date indices of "between YEAR and YEAR" (first date in the first year, last in the second)."""
    years = _YEAR.findall(question)
    if len(years) < 2:
        return None
    first, last = sorted(years[:2])
    a = next((t for t, d in enumerate(dates) if _year(d) >= first), None)
    b = next((t for t in range(len(dates) - 1, -1, -1) if _year(dates[t]) <= last), None)
    if a is None or b is None or a >= b:
        return None
    return a, b


def answer_temporal(
    question: str, change, dates: Sequence[str], classes: Sequence[str]
) -> dict[str, Any] | None:
    """The answer to a temporal ``question`` about ``change`` (a ``SequenceChange`` over ``dates``), or None
    when the question is not about time. Returns ``{"answer", "type", "intervals", "class", "source"}``."""
    words = _words(question)
    name = asked_class(question, classes)
    found = _intervals_with(change, name)
    result = {"class": name, "source": f"interval masks ({change.method})"}
    if "how" in words and ("times" in words or "intervals" in words or "often" in words):
        return {**result, "answer": str(len(found)), "type": "count_changes", "intervals": found}
    span = _span(question, dates)
    if span is not None and ("between" in words or "from" in words):
        a, b = span
        inside = [i for i in found if a <= i < b]
        return {**result, "answer": "yes" if inside else "no", "type": "change_between", "intervals": inside}
    if "when" not in words:
        return None
    if "last" in words or "latest" in words:
        chosen, qtype = found[-1:], "last_change"
    else:
        chosen, qtype = found[:1], ("when" if name else "first_change")
    answer = interval_phrase(dates, chosen[0]) if chosen else NEVER
    return {**result, "answer": answer, "type": qtype, "intervals": chosen}
