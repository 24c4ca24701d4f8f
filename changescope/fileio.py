"""Atomic writes: a reader never sees a half-written file under its final name."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the permissions a plain open() would
        plain_permissions(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def plain_permissions(path: str | Path) -> None:
    """The permissions a plain ``open()`` would have given (libraries that write through private temp
    files, such as safetensors, leave 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | Path, obj, indent: int | None = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def write_outputs(out: str | Path, images: dict, record_name: str, record: Any) -> Path:
    """Save ``images`` (file name -> PIL image) and then the JSON ``record`` into ``out``.

    The images are written into a temporary sibling directory and moved in; the record is removed first and
    written last, so an interrupted run never leaves a record beside missing or stale images.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".{Path(record_name).stem}-{os.getpid()}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        (out / record_name).unlink(missing_ok=True)
        for name, image in images.items():
            image.save(tmp / name)
        for name in images:
            os.replace(tmp / name, out / name)
        write_json_atomic(out / record_name, record)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
