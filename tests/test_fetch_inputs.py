"""tests/data/fetch_inputs.py fails loudly (one line, exit 1) when it cannot fetch, and checks what it has."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "data" / "fetch_inputs.py"


def run(dest: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path} if path is not None else None
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--dest", str(dest)], capture_output=True, text=True, env=env
    )


def test_no_apt_is_one_line_and_exit_1(tmp_path):
    proc = run(tmp_path, path=str(tmp_path / "no-tools-here"))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "apt-get" in proc.stderr and "L7_ETMs.tif" in proc.stderr


def test_a_file_that_is_not_the_known_one_is_removed(tmp_path):
    (tmp_path / "L7_ETMs.tif").write_bytes(b"not the Landsat scene")
    proc = run(tmp_path)
    assert proc.returncode == 1 and "SHA-256 differs" in proc.stderr
    assert not (tmp_path / "L7_ETMs.tif").exists()
