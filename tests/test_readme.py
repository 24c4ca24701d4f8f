"""The README's Python section runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_section_runs(tmp_path, monkeypatch, capsys):
    section = README.read_text(encoding="utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one python block"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], str(README) + ":python-api", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.splitlines()
    assert "caption" in printed[0] and "mask" in printed[0]  # pipe.tasks
    assert printed[1] and not printed[1].startswith("[")  # one caption: a sentence
    assert printed[2].startswith("[")  # a batch: a list
    assert printed[3].startswith("(256, 256) ")
