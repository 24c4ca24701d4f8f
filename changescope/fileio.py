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


#: the record each command writes last into its output folder; a folder holding one of them was written
#: by changescope, so ``--overwrite`` may replace it whole
RECORDS = ("summary.json", "result.json", "answer.json")


def check_output_dir(out: str | Path, overwrite: bool = False) -> Path:
    """Refuse ``out`` when it is a file, or a non-empty folder without ``overwrite``, or (even with it) a
    folder that changescope did not write: ``--overwrite`` replaces the folder whole, so it must be ours."""
    from changescope.errors import DataError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(out, "is a file; --out takes a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise DataError(out, "the output folder is not empty; give --overwrite to replace it")
        if not any((out / name).is_file() for name in RECORDS):
            raise DataError(
                out,
                "holds files changescope did not write (no " + " / ".join(RECORDS) + "); "
                "--overwrite only replaces an earlier output folder: choose another --out",
            )
    return out


@contextlib.contextmanager
def output_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out``; when the block succeeds it becomes ``out`` whole
    (an earlier output folder there is replaced, so no stale file of another run stays beside the new
    ones). When the block fails, ``out`` is left as it was and the temporary folder is removed."""
    out = check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        yield tmp
        plain_permissions_dir(tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def plain_permissions_dir(path: str | Path) -> None:
    """The permissions ``mkdir`` would have given (``mkdtemp`` makes the folder private, 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o777 & ~umask)


def write_outputs(
    out: str | Path, images: dict, record_name: str, record: Any, overwrite: bool = False
) -> Path:
    """Save ``images`` (file name -> PIL image) and then the JSON ``record`` as the folder ``out``.

    Everything is written into a temporary sibling folder that then replaces ``out`` whole
    (``output_dir``): an interrupted run leaves ``out`` as it was, never half-written or mixed.
    """
    with output_dir(out, overwrite) as tmp:
        for name, image in images.items():
            image.save(tmp / name)
        write_json_atomic(tmp / record_name, record)
    return Path(out)
