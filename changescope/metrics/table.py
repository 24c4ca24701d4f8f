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


def detection_table(result: Mapping) -> str:
    """Render change-detection scores (``ConfusionMatrix.compute`` output): per class, then the means."""
    columns = ("IoU", "F1", "precision", "recall")
    names = list(result["per_class"])
    first = max(12, *(len(n) + 2 for n in names))
    lines = [f"{'class':<{first}}" + "".join(f"{c:>11}" for c in columns) + f"{'pixels':>13}"]
    for name in names:
        row = result["per_class"][name]
        cells = "".join(f"{_pct(row[c]):>11}" for c in columns)
        lines.append(f"{name:<{first}}{cells}{row['support']:>13}")
    lines.append(
        f"mIoU {_pct(result['mIoU'])}  mIoU without background {_pct(result['mIoU_no_bg'])}  "
        f"mF1 {_pct(result['mF1'])}  mF1 without background {_pct(result['mF1_no_bg'])}  "
        f"OA {_pct(result['OA'])} (percent)"
    )
    return "\n".join(lines)


def vqa_table(result: Mapping, baseline: Mapping | None = None) -> str:
    """Render ``vqa_scores`` output: accuracy per question type, then OA and AA (with a baseline column)."""
    names = list(result["per_type"])
    first = max(20, *(len(n) + 2 for n in names))
    header = f"{'question type':<{first}}{'accuracy':>10}" + (f"{'baseline':>10}" if baseline else "")
    lines = [header + f"{'questions':>11}"]
    for name in names:
        base = f"{_pct(baseline['per_type'].get(name)):>10}" if baseline else ""
        lines.append(f"{name:<{first}}{_pct(result['per_type'][name]):>10}{base}{result['counts'][name]:>11}")
    for key in ("OA", "AA"):
        base = f"{_pct(baseline[key]):>10}" if baseline else ""
        lines.append(f"{key:<{first}}{_pct(result[key]):>10}{base}{result['n'] if key == 'OA' else '':>11}")
    return "\n".join(lines)


def grounding_line(result: Mapping) -> str:
    miou, ciou = _pct(result["mIoU"]), _pct(result["cIoU"])
    return f"grounding: mIoU {miou}  cIoU {ciou} (percent), {result['n']} queries"


def retrieval_table(result: Mapping) -> str:
    """The ``evaluate`` retrieval block: hit-rate R@k and MRR both ways for the model, on changed pairs
    only, and for the caption-embedding baseline; then RSICRC's P@k / R@k (over the relevant set)."""
    columns = ("R@1", "R@5", "R@10", "MRR")
    head = f"{'':<34}" + "".join(f"{c:>8}" for c in columns)
    lines = [head]
    rows = [("model", result), ("model, changed pairs only", result.get("changed_only"))]
    baseline = result.get("caption_baseline")
    if baseline is not None:
        rows += [
            ("caption baseline", baseline),
            ("caption baseline, changed only", baseline.get("changed_only")),
        ]
    for label, block in rows:
        if block is None:
            continue
        for direction, name in (("text_to_pair", "text->pair"), ("pair_to_text", "pair->text")):
            values = block[direction]
            lines.append(f"{label + ', ' + name:<34}" + "".join(f"{_pct(values[c]):>8}" for c in columns))
    rsicrc = result["rsicrc"]
    ks = sorted(int(k[2:]) for k in rsicrc if k.startswith("P@"))
    lines.append(
        "RSICRC (first caption as query; R@k over the relevant set): "
        + ", ".join(f"P@{k} {_pct(rsicrc[f'P@{k}'])} R@{k} {_pct(rsicrc[f'R@{k}'])}" for k in ks)
    )
    lines.append(
        f"{result['pairs']} pairs, {result['texts']} captions; no-change pairs are relevant to each other"
    )
    return "\n".join(lines)
