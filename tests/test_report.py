import numpy as np
from PIL import Image

from changescope.report import caption_report


def test_caption_report_is_one_self_contained_file(tmp_path):
    for name in ("a.png", "b.png"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), np.uint8)).save(
            tmp_path / name
        )
    rows = [
        {
            "id": "p<1>",
            "before": tmp_path / "a.png",
            "after": tmp_path / "b.png",
            "caption": "two houses & a road",
            "references": ["a road is built"],
            "changed": True,
        }
    ]
    out = caption_report(rows, tmp_path / "r" / "report.html", "title", note="trained on SynthChange only")
    text = out.read_text()
    assert text.count("data:image/png;base64,") == 2  # images embedded, nothing to copy along
    assert "two houses &amp; a road" in text and "p&lt;1&gt;" in text  # escaped
    assert "a road is built" in text and "SynthChange only" in text
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]
