"""Paper-style text tables for metric results (percent, two decimals, as the papers print them)."""

from __future__ import annotations

from collections.abc import Mapping

CAPTION_COLUMNS = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D", "S*m")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def caption_table(result: Mapping) -> str:
    """Render the ``score`` / ``evaluate`` result: the whole-set row, subsets, accuracies and the protocol."""
    width = 9
    lines = ["".join(f"{c:>{width}}" for c in CAPTION_COLUMNS)]
    lines.append("".join(f"{_pct(result.get(c)):>{width}}" for c in CAPTION_COLUMNS))
    subsets = result.get("subsets") or {}
    for name in ("change", "no_change"):
        if name in subsets:
            row = subsets[name]
            cells = "".join(
                f"{(_pct(row.get(c)) if c not in ('CIDEr-D', 'S*m') else '-'):>{width}}"
                for c in CAPTION_COLUMNS
            )
            lines.append(f"{cells}   ({name} subset, n={(result.get('counts') or {}).get(name, '?')})")
    for key in ("no_change_accuracy", "change_accuracy"):
        if result.get(key) is not None:
            lines.append(f"{key.replace('_', ' ')}: {_pct(result[key])} %")
    for metric, reason in (result.get("unavailable") or {}).items():
        lines.append(f"{metric} unavailable: {reason}")
    if "n" in result:
        lines.append(
            f"{result['n']} pairs, split '{result.get('split', '?')}'; scores in percent "
            "(CIDEr-D x100); subset CIDEr-D is not reported (IDF is 0 on no-change references)"
        )
    return "\n".join(lines)
