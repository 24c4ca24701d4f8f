"""``changescope score``: score any model's captions against a dataset split under one protocol.

PRED.jsonl holds one JSON object per line, ``{"id": "<pair id>", "caption": "..."}``, where the pair id is
the image file name without its extension (``test_000004``). Blank lines are skipped. Every pair of the
split needs exactly one prediction, and every prediction must name a pair of the split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from changescope.data.readers import open_dataset
from changescope.errors import DataError
from changescope.metrics.captions import caption_protocol, evaluate_captions


def _name_ids(ids: list[str]) -> str:
    shown = ", ".join(f"'{i}'" for i in ids[:3])
    return shown + (f" and {len(ids) - 3} more" if len(ids) > 3 else "")


def read_predictions(path: str | Path) -> dict[str, str]:
    """``{id: caption}`` from a PRED.jsonl file; every malformed line is a ``DataError`` naming it."""
    return _read_lines(Path(path))[0]


def _read_lines(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """Captions by id, and the line each id is on (for error messages)."""
    if not path.is_file():
        raise DataError(path, "prediction file not found")
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # tolerate a BOM
    except UnicodeDecodeError:
        raise DataError(path, "not UTF-8 text") from None
    captions: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, f"line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict) or "id" not in obj or "caption" not in obj:
            raise DataError(path, f'line {number}: expected an object with "id" and "caption"')
        key, caption = obj["id"], obj["caption"]
        if not isinstance(key, str):
            raise DataError(path, f'line {number}: "id" must be a string, got {json.dumps(key)}')
        if not isinstance(caption, str):
            raise DataError(path, f'line {number}: "caption" must be a string, got {type(caption).__name__}')
        if key in captions:
            raise DataError(path, f"line {number}: duplicate id '{key}' (first on line {first_line[key]})")
        captions[key] = caption
        first_line[key] = number
    return captions, first_line


def _references(dataset: Any, root: Path) -> tuple[dict[str, list[str]], dict[str, bool]]:
    if not hasattr(dataset, "entries") or not hasattr(dataset, "changed"):
        raise DataError(root, f"format '{getattr(dataset, 'name', '?')}' has no captions to score")
    references: dict[str, list[str]] = {}
    changed: dict[str, bool] = {}
    for entry in dataset.entries:
        if entry.id in references:
            raise DataError(
                entry.source or root, f"pair id '{entry.id}' is listed twice in split '{dataset.split}'"
            )
        references[entry.id] = list(entry.captions)
        changed[entry.id] = bool(dataset.changed(entry))
    if not references:
        raise DataError(root, f"split '{dataset.split}' has no pairs")
    return references, changed


def score_predictions(
    pred_path: str | Path,
    data_root: str | Path,
    split: str = "test",
    format: str | None = None,
    meteor: bool | None = None,
) -> dict[str, Any]:
    """Score PRED.jsonl against the references of ``data_root``'s ``split``.

    Returns the whole-split scores at the top level ("BLEU-1".."BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D",
    "S*m", "SPICE", "unavailable"), plus "no_change_accuracy", "change_accuracy", "subsets" (change /
    no-change scores without CIDEr-D; a subset with no pair is left out), "counts", "n", "split", "format"
    and "protocol" (how the numbers were computed). See ``changescope.metrics.captions`` for the rules.
    """
    pred_path, root = Path(pred_path), Path(data_root)
    predictions, line_of = _read_lines(pred_path)
    dataset = open_dataset(root, split=split, format=format, check_files=False)
    references, changed = _references(dataset, root)
    unknown = [key for key in predictions if key not in references]
    if unknown:
        key = unknown[0]
        raise DataError(
            pred_path, f"line {line_of[key]}: unknown id '{key}' (not a pair of split '{split}' in {root})"
        )
    missing = [key for key in references if key not in predictions]
    if missing:
        raise DataError(
            pred_path,
            f"no prediction for id {_name_ids(missing)} ({len(missing)} of {len(references)} pairs)",
        )
    return score_dataset(predictions, dataset, root, meteor=meteor)


def score_dataset(
    predictions: dict[str, str], dataset: Any, root: str | Path, meteor: bool | None = None
) -> dict[str, Any]:
    """Score captions keyed by pair id against every pair of an opened caption dataset (same keys as
    :func:`score_predictions`); the caller has checked that the ids match."""
    root = Path(root)
    references, changed = _references(dataset, root)
    try:
        result = evaluate_captions(
            predictions, references, changed, type(dataset).no_change_sentences, meteor=meteor
        )
    except ValueError as err:  # e.g. a pair whose references hold no words
        raise DataError(root, str(err)) from None
    return caption_report(result, dataset)


def caption_report(result: dict[str, Any], dataset: Any) -> dict[str, Any]:
    """``evaluate_captions``' result as ``score`` and ``evaluate`` print it: whole-split scores at the top
    level, then accuracies, subsets, counts, ``n``, split, format and protocol."""
    subsets = {name: result[name] for name in ("change", "no_change") if result[name] is not None}
    return {
        **result["all"],
        "no_change_accuracy": result["no_change_accuracy"],
        "change_accuracy": result["change_accuracy"],
        "subsets": subsets,
        "counts": result["counts"],
        "n": sum(result["counts"].values()),
        "split": dataset.split,
        "format": getattr(dataset, "name", None),
        "protocol": caption_protocol(),
    }
