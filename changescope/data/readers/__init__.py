"""Dataset readers, by format name.

``open_dataset(root, split, format=None)`` is the one entry point: it detects the format from the files
present when ``format`` is not given, and returns a ``torch.utils.data.Dataset`` of sample dicts.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from changescope.errors import DataError

#: format name -> "module:Class" (imported on use, so one broken optional reader never blocks the rest)
FORMATS: dict[str, str] = {
    "levir-cc": "changescope.data.readers.levir:LevirCC",
    "levir-mci": "changescope.data.readers.levir:LevirMCI",
    "dubai-cc": "changescope.data.readers.dubai:DubaiCC",
    "second-cc": "changescope.data.readers.second:SecondCC",
    "cdvqa": "changescope.data.readers.cdvqa:CDVQA",
    "synthchange": "changescope.data.readers.synthchange:SynthChange",
    # change detection: binary change masks, no captions (changescope/data/readers/changedetection.py)
    "folder": "changescope.data.readers.changedetection:ChangeFolder",
    "sztaki": "changescope.data.readers.changedetection:SztakiAirChange",
    "oscd": "changescope.data.readers.changedetection:OSCD",
    "xbd": "changescope.data.readers.changedetection:XBD",
    "landsat": "changescope.data.readers.changedetection:LandsatSparse",
    "triplets": "changescope.data.readers.changedetection:SceneTriplets",
    # time series: T >= 2 dates, a change mask per interval (changescope/data/readers/timeseries.py)
    "synthchange-sequences": "changescope.data.readers.timeseries:SynthChangeSequences",
    "spacenet7": "changescope.data.readers.timeseries:SpaceNet7",
    # instruction data: images + a human / gpt conversation (changescope/data/readers/instructions.py)
    "changescope-instructions": "changescope.data.readers.instructions:ChangescopeInstructions",
    "changechat": "changescope.data.readers.instructions:ChangeChat",
    "changechat-105k": "changescope.data.readers.instructions:ChangeChat105k",
    "teochatlas": "changescope.data.readers.instructions:TEOChatlas",
    "qag-360k": "changescope.data.readers.instructions:QAG360K",
    "changeimti": "changescope.data.readers.instructions:ChangeIMTI",
}


def reader_class(format: str):
    if format not in FORMATS:
        raise DataError(None, f"unknown format '{format}' (known: {', '.join(FORMATS)})")
    module, name = FORMATS[format].split(":")
    return getattr(importlib.import_module(module), name)


def detect_format(root: str | Path) -> str:
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, "dataset directory not found")
    if (root / "synthchange.json").is_file():
        return "synthchange"
    if (root / "LevirCCcaptions.json").is_file():
        images = root / "images"
        has_labels = images.is_dir() and any((d / "label").is_dir() for d in images.iterdir() if d.is_dir())
        return "levir-mci" if has_labels else "levir-cc"
    if (root / "SECOND-CC-AUG.json").is_file():
        return "second-cc"
    if any((root / f"{s}_questions.json").is_file() for s in ("Train", "Val", "Test", "Test2")):
        return "cdvqa"
    if any(
        p.is_dir() for p in (root / "description_jsontr_te_val", *root.glob("*/description_jsontr_te_val"))
    ):
        return "dubai-cc"
    from changescope.data.readers.instructions import detect as detect_instructions

    found = detect_instructions(root)
    if found is not None:
        return found
    from changescope.data.readers.timeseries import detect as detect_series

    found = detect_series(root)
    if found is not None:
        return found
    # change-detection layouts, after every caption format: SZTAKI, OSCD, xBD, Landsat, then the generic
    # A/B/label folder, then a search for <name>_gt single-scene triplets
    from changescope.data.readers.changedetection import detect

    found = detect(root)
    if found is not None:
        return found
    raise DataError(
        root, f"cannot tell the dataset format from its files; pass --format (one of {', '.join(FORMATS)})"
    )


def open_dataset(root: str | Path, split: str = "train", format: str | None = None, **kwargs):
    fmt = format or detect_format(root)
    return reader_class(fmt)(root, split=split, **kwargs)
