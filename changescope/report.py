"""Self-contained HTML reports: what a model said about each pair, next to the images and references."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from changescope.fileio import write_text_atomic

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px} .note{color:#555;max-width:900px}
.pair{display:flex;gap:16px;align-items:flex-start;border-top:1px solid #ddd;padding:12px 0}
.pair figure{margin:0;text-align:center;font-size:12px;color:#555}
.pair img{width:192px;height:192px;image-rendering:pixelated;display:block}
.text{max-width:520px} .pred{font-size:16px;font-weight:600;margin:4px 0 8px}
.refs{font-size:13px;color:#444;margin:0;padding-left:18px}
.counts{font-size:13px;color:#333;margin:0 0 8px}
.tag{display:inline-block;font-size:11px;padding:1px 6px;border-radius:8px;background:#eee;margin-left:6px}
"""


def data_uri(source: str | Path | Image.Image, size: int = 192) -> str:
    """Embed a thumbnail so the report is one file that can be mailed or moved."""
    img = source.copy() if isinstance(source, Image.Image) else Image.open(source)
    with img:
        img = img.convert("RGB")
        img.thumbnail((size, size))
        buffer = io.BytesIO()
        img.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def caption_report(rows: Sequence[dict], out: str | Path, title: str, note: str = "") -> Path:
    """rows: dicts with ``id``, ``before``, ``after`` (image paths), ``caption`` and optionally
    ``references`` (list of str), ``changed`` (bool), ``overlay`` (a PIL image of the predicted change
    mask) and ``counts`` (one line of text: what the mask holds)."""
    parts = [
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style><h1>{html.escape(title)}</h1>",
    ]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for row in rows:
        tag = ""
        if "changed" in row:
            tag = f"<span class='tag'>{'changed' if row['changed'] else 'no change'} (reference)</span>"
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in row.get("references", []))
        figures = [("before", row["before"]), ("after", row["after"])]
        if row.get("overlay") is not None:
            figures.append(("predicted change", row["overlay"]))
        text = [
            f"<div>{html.escape(row['id'])}{tag}</div>",
            f"<p class='pred'>{html.escape(row['caption'])}</p>",
        ]
        if row.get("counts"):
            text.append(f"<p class='counts'>{html.escape(row['counts'])}</p>")
        for question, answer in row.get("qa", []):
            text.append(f"<p class='counts'>Q: {html.escape(question)} A: {html.escape(answer)}</p>")
        if refs:
            text.append(f"<div>references:</div><ul class='refs'>{refs}</ul>")
        parts.append(
            "<div class='pair'>"
            + "".join(f"<figure><img alt='{n}' src='{data_uri(src)}'>{n}</figure>" for n, src in figures)
            + f"<div class='text'>{''.join(text)}</div></div>"
        )
    write_text_atomic(out, "\n".join(parts) + "\n")
    return Path(out)
