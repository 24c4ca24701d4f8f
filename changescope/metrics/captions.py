"""Caption metrics as the change-captioning papers report them, computed by pycocoevalcap itself.

Protocol (returned by :func:`caption_protocol`, so every result can state it):

* **Text.** Predictions and references both go through :func:`changescope.data.text.normalize`
  (lower-case; words are runs of letters/digits; punctuation dropped; single spaces). This replaces
  coco-caption's Java PTB tokenizer, so BLEU, ROUGE-L and CIDEr-D never depend on Java, and scores are
  computed on words, not on vocabulary ids as several released repos do. It can split a few words
  differently from PTB (hyphens separate words here: "top-left" -> "top left").
* **Scorers.** pycocoevalcap's own ``Bleu(4)`` (option "closest"), ``Meteor`` (meteor-1.5.jar,
  ``-l en -norm``), ``Rouge`` (ROUGE-L, beta 1.2) and ``Cider``. Nothing is re-implemented.
  pycocoevalcap's ``Cider`` *is* CIDEr-D (Gaussian length penalty with sigma 6, clipped n-gram counts)
  although it calls itself "CIDEr"; its IDF comes from the scored references, so it is reported on a
  whole split only, never on the change / no-change subsets (on no-change pairs it is 0 by construction).
* **Values** are fractions as pycocoevalcap returns them (CIDEr-D unscaled, about 0..10); the papers'
  tables multiply every column by 100. S*m = (BLEU-4 + METEOR + ROUGE-L + CIDEr-D) / 4.
* **METEOR** runs a Java subprocess. ``meteor=None`` uses it when ``java`` is on PATH; without Java, METEOR
  and S*m are ``None`` and ``result["unavailable"]["METEOR"]`` says why. One JVM serves a whole call.
* **SPICE** is never computed (``None``): it needs Stanford CoreNLP models and the papers do not report it.
* **Empty text.** A prediction that normalises to "" is scored as the empty caption: pycocoevalcap 1.2's
  scorers accept it and give it 0 (for BLEU it adds no words, so it also lowers the brevity penalty). It is
  never replaced by a placeholder word, which could match a reference. References that normalise to "" are
  dropped, since an empty reference would give ROUGE-L a free match and BLEU a zero length; a pair left
  with no reference is a ``ValueError``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from changescope.data.text import TOKENIZER_RULE, normalize
from changescope.errors import ChangescopeError

BLEU_KEYS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4")
SCORE_KEYS = (*BLEU_KEYS, "METEOR", "ROUGE-L", "CIDEr-D", "S*m", "SPICE")

SPICE_REASON = (
    "not computed: SPICE needs Stanford CoreNLP models, and the change-captioning papers do not report it"
)
SUBSET_CIDER_REASON = (
    "not reported on a subset: CIDEr-D's IDF comes from the scored references (0 on no-change pairs)"
)
NO_JAVA_REASON = "Java not found on PATH (METEOR runs meteor-1.5.jar); install a Java runtime to report it"
DISABLED_REASON = "disabled (meteor=False)"

Texts = dict[Any, list[str]]


class _Meteor(Meteor):
    """pycocoevalcap's ``Meteor`` with an explicit ``close``.

    Its own ``__del__`` takes a lock that ``compute_score`` leaves held when the JVM dies mid-call, so
    garbage collection would hang; ``close`` needs no lock and is safe to call twice.
    """

    def close(self) -> None:
        proc = getattr(self, "meteor_p", None)
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        proc.wait()

    def failure(self) -> str:
        """Stop the JVM and return the last line it wrote to stderr (to explain a failed call)."""
        proc = self.meteor_p
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError, ValueError):
            lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
            if lines:
                return lines[-1]
        return f"the JVM exited with code {proc.returncode}"

    def __del__(self) -> None:
        self.close()


@contextlib.contextmanager
def meteor_session(meteor: bool | None = None) -> Iterator[tuple[_Meteor | None, str | None]]:
    """Yield ``(scorer, reason)``: one METEOR JVM, or ``None`` and why not. The JVM is closed on exit.

    ``meteor=None`` uses METEOR when ``java`` is on PATH; ``True`` requires it; ``False`` skips it.
    """
    reason = None
    if meteor is False:
        reason = DISABLED_REASON
    elif shutil.which("java") is None:
        if meteor:
            raise ChangescopeError(
                "METEOR needs Java: `java` is not on PATH (install a JRE, or pass meteor=False)"
            )
        reason = NO_JAVA_REASON
    scorer = None
    if reason is None:
        try:
            scorer = _Meteor()
        except OSError as err:
            raise ChangescopeError(f"cannot start METEOR's JVM (java -jar meteor-1.5.jar): {err}") from err
    try:
        yield scorer, reason
    finally:
        if scorer is not None:
            scorer.close()


def _name_ids(ids: list) -> str:
    shown = ", ".join(repr(i) for i in ids[:5])
    return shown + (f" and {len(ids) - 5} more" if len(ids) > 5 else "")


def _check_ids(predictions: Mapping, references: Mapping) -> None:
    missing = [key for key in references if key not in predictions]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} reference id(s): {_name_ids(missing)}")
    extra = [key for key in predictions if key not in references]
    if extra:
        raise ValueError(f"{len(extra)} predicted id(s) have no references: {_name_ids(extra)}")


def prepare(predictions: Mapping[Any, str], references: Mapping[Any, Sequence[str]]) -> tuple[Texts, Texts]:
    """Check ids and normalise: ``(res, gts)`` in pycocoevalcap's layout, keyed in ``references`` order."""
    _check_ids(predictions, references)
    if not references:
        raise ValueError("no captions to score")
    res: Texts = {}
    gts: Texts = {}
    for key, refs in references.items():
        prediction = predictions[key]
        if not isinstance(prediction, str):
            raise ValueError(f"prediction for id {key!r} is {type(prediction).__name__}, not a string")
        if isinstance(refs, str) or not all(isinstance(r, str) for r in refs):
            raise ValueError(f"references for id {key!r} must be a list of strings")
        kept = [text for text in (normalize(r) for r in refs) if text]
        if not kept:
            raise ValueError(f"id {key!r} has no reference caption with any words")
        gts[key] = kept
        res[key] = [normalize(prediction)]
    return res, gts


def _meteor_score(scorer: _Meteor, gts: Texts, res: Texts) -> float:
    try:
        score, _ = scorer.compute_score(gts, res)
    except (OSError, ValueError) as err:  # a dead JVM: broken pipe, or an empty line where a score should be
        raise ChangescopeError(f"METEOR (java -jar meteor-1.5.jar) failed: {scorer.failure()}") from err
    return float(score)


def group_scores(
    gts: Texts,
    res: Texts,
    scorer: _Meteor | None,
    meteor_reason: str | None,
    with_cider: bool = True,
) -> dict[str, Any]:
    """Scores of one group of pairs (already normalised); without CIDEr-D and S*m for a subset."""
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    out: dict[str, Any] = {key: float(value) for key, value in zip(BLEU_KEYS, bleu, strict=True)}
    out["METEOR"] = None if scorer is None else _meteor_score(scorer, gts, res)
    out["ROUGE-L"] = float(rouge)
    unavailable = {"SPICE": SPICE_REASON}
    if meteor_reason is not None:
        unavailable["METEOR"] = meteor_reason
    if with_cider:
        cider, _ = Cider().compute_score(gts, res)
        out["CIDEr-D"] = float(cider)
        parts = (out["BLEU-4"], out["METEOR"], out["ROUGE-L"], out["CIDEr-D"])
        out["S*m"] = None if out["METEOR"] is None else sum(parts) / 4
    else:
        unavailable["CIDEr-D"] = unavailable["S*m"] = SUBSET_CIDER_REASON
    out["SPICE"] = None
    out["unavailable"] = unavailable
    return out


def caption_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    meteor: bool | None = None,
) -> dict[str, Any]:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, S*m (fractions) of one caption per id against its references.

    ``predictions`` and ``references`` must have exactly the same ids (``ValueError`` names the first
    missing or extra ones). See the module docstring for the protocol: text normalised by ``normalize``
    instead of the PTB tokenizer, pycocoevalcap's scorers, CIDEr-D = pycocoevalcap's ``Cider``, empty text.
    Returns the keys of ``SCORE_KEYS`` plus ``"unavailable"`` (metric -> reason; SPICE always, METEOR
    when Java is missing or ``meteor=False``, and then METEOR and S*m are ``None``).
    """
    res, gts = prepare(predictions, references)
    with meteor_session(meteor) as (scorer, reason):
        return group_scores(gts, res, scorer, reason)


def _subset(texts: Texts, ids: list) -> Texts:
    return {key: texts[key] for key in ids}


def evaluate_captions(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    changed: Mapping[str, bool],
    no_change_sentences: Sequence[str],
    meteor: bool | None = None,
) -> dict[str, Any]:
    """Whole-set scores plus the change / no-change subsets and accuracies the papers report.

    Returns ``{"all": caption_scores(...), "change": ..., "no_change": ..., "no_change_accuracy",
    "change_accuracy", "counts": {"change": n, "no_change": n}}``. Subset scores leave out CIDEr-D and S*m
    (CIDEr-D's IDF comes from the scored references; it is 0 on no-change pairs); an empty subset is
    ``None``. ``no_change_accuracy`` is the fraction of no-change pairs whose normalised prediction is one
    of the normalised ``no_change_sentences``; ``change_accuracy`` the fraction of changed pairs whose
    prediction is not one (both ``None`` when their subset is empty or no sentences are given).
    One METEOR JVM scores all three groups.
    """
    res, gts = prepare(predictions, references)
    missing = [key for key in gts if key not in changed]
    if missing:
        raise ValueError(f"no change flag for {len(missing)} id(s): {_name_ids(missing)}")
    fixed = {normalize(s) for s in no_change_sentences} - {""}
    groups = {
        "change": [key for key in gts if changed[key]],
        "no_change": [key for key in gts if not changed[key]],
    }
    says_no_change = {key: res[key][0] in fixed for key in gts}

    def accuracy(ids: list, want_no_change: bool) -> float | None:
        if not ids or not fixed:
            return None
        return sum(says_no_change[key] == want_no_change for key in ids) / len(ids)

    with meteor_session(meteor) as (scorer, reason):
        result: dict[str, Any] = {"all": group_scores(gts, res, scorer, reason)}
        for name, ids in groups.items():
            result[name] = (
                group_scores(_subset(gts, ids), _subset(res, ids), scorer, reason, with_cider=False)
                if ids
                else None
            )
    result["no_change_accuracy"] = accuracy(groups["no_change"], True)
    result["change_accuracy"] = accuracy(groups["change"], False)
    result["counts"] = {name: len(ids) for name, ids in groups.items()}
    return result


def caption_protocol() -> dict[str, str]:
    """A short statement of how the caption scores were computed, to store with every result."""
    return {
        "text": f"changescope.data.text.normalize ({TOKENIZER_RULE}); replaces the Java PTB tokenizer",
        "scorer": f"pycocoevalcap {importlib.metadata.version('pycocoevalcap')} (Bleu 'closest', Meteor 1.5 "
        "-l en -norm, Rouge-L beta 1.2, Cider)",
        "CIDEr-D": "pycocoevalcap's Cider is CIDEr-D (sigma 6, clipped counts); IDF from the scored "
        "references, so it is not reported on subsets",
        "S*m": "(BLEU-4 + METEOR + ROUGE-L + CIDEr-D) / 4",
        "values": "fractions (papers print x100)",
    }
