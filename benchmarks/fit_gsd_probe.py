"""Fit a two-head model's GSD probe: which inputs of unknown GSD the coarse change head should read.

The probe (``models/heads/gsd_probe.py``) is a logistic regression on the backbone's pooled features of
each 256 px training tile of a mix file, labelled coarse where the tile's GSD is known and at least the
model's ``coarse_gsd`` (tiles of unknown GSD, e.g. SynthChange, count as fine). Prints the share of tiles
taken for coarse per source on the mix's val split and on the held-out real pairs (``real_change.py``'s
sets, cut into 256 px tiles at their own resolution), then writes the model with the probe; every other
tensor is the input model's. This is how the shipped default got its probe:

    python benchmarks/fit_gsd_probe.py --model default --data benchmarks/mixes/realdata.yaml \\
        --out changescope/pretrained/default
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from changescope.data.mix import MixedPairs
from changescope.data.readers import open_dataset
from changescope.errors import ChangescopeError
from changescope.fileio import write_json_atomic
from changescope.models.change_bands import with_gsd_probe
from changescope.models.heads.gsd_probe import fit_probe, pooled_features
from changescope.models.hub import from_pretrained, save_pretrained
from changescope.tasks.inference import resolve_model


@torch.inference_mode()
def features_of(model, processor, tiles: list[torch.Tensor], batch_size: int = 32) -> torch.Tensor:
    parts = []
    for start in range(0, len(tiles), batch_size):
        images = torch.stack([processor.resize(t) for t in tiles[start : start + batch_size]])
        parts.append(pooled_features(model.levels(images)))
    return torch.cat(parts)


@torch.inference_mode()
def probe_logits(model, processor, tiles: list[torch.Tensor]) -> torch.Tensor:
    return model.gsd_probe.linear(features_of(model, processor, tiles))[:, 0]


def mix_tiles(path: str, split: str, coarse_gsd: float):
    """(tiles [2, 3, t, t], coarse labels, source names) of a mix file's split."""
    dataset = MixedPairs(path, split)
    tiles, labels, names = [], [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        gsd = sample.get("gsd")
        tiles.append(sample["image"][[0, -1]])
        labels.append(gsd is not None and gsd >= coarse_gsd)
        names.append(Path(dataset.entry_sources[i]).name)
    return tiles, torch.tensor(labels), names


def held_out_tiles(realdata: Path, size: int):
    """Tiles of ``real_change.REAL_SETS`` at their own resolution, named by set."""
    from real_change import REAL_SETS

    tiles, names = [], []
    for name, folder, fmt, split, _ in REAL_SETS:
        dataset = open_dataset(realdata / folder, split, fmt)
        for i in range(len(dataset)):
            cut = tiles_of(dataset[i]["image"][[0, -1]], size)
            tiles += cut
            names += [name] * len(cut)
    return tiles, names


def tiles_of(pair: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Non-overlapping tiles of ``size`` at the pair's own resolution (a side shorter than ``size``: one
    tile of that side's length)."""
    h, w = pair.shape[-2:]
    return [
        pair[..., y : y + size, x : x + size]
        for y in range(0, max(h - size, 0) + 1, size)
        for x in range(0, max(w - size, 0) + 1, size)
    ]


def shares(logits: torch.Tensor, names: list[str]) -> dict[str, str]:
    by = defaultdict(list)
    for logit, name in zip(logits.tolist(), names, strict=True):
        by[name].append(logit > 0)
    return {name: f"{sum(v)} / {len(v)} tiles coarse" for name, v in by.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", required=True, help="a mix file (its train split fits, val reports)")
    parser.add_argument("--realdata", default=str(Path(__file__).parents[2] / "shared" / "realdata"))
    parser.add_argument("--l2", type=float, default=0.02)
    parser.add_argument("--out", default=None, help="write the model with its probe here")
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16, half size)")
    args = parser.parse_args()
    if not Path(args.data).is_file():
        raise SystemExit(f"error: {args.data}: mix file not found")
    directory = resolve_model(args.model)
    model, processor = from_pretrained(directory)
    if model.coarse_change_head is None:
        raise SystemExit(f"{directory}: the model has one change head; a GSD probe picks between two")
    coarse_gsd = model.config.coarse_gsd
    tiles, labels, _ = mix_tiles(args.data, "train", coarse_gsd)
    weight, bias = fit_probe(features_of(model, processor, tiles), labels, args.l2)
    probed = with_gsd_probe(model, weight, bias)
    report = {"train_tiles": len(tiles), "train_coarse": int(labels.sum()), "l2": args.l2}
    tiles, labels, names = mix_tiles(args.data, "val", coarse_gsd)
    report["val"] = shares(probe_logits(probed, processor, tiles), names)
    tiles, names = held_out_tiles(Path(args.realdata), processor.image_size)
    report["held_out"] = shares(probe_logits(probed, processor, tiles), names)
    print(json.dumps(report, indent=1))
    if args.out:
        dtype = None if args.fp32 else torch.float16
        try:  # a frozen backbone equal to its package's weights stays out of the file
            out = save_pretrained(probed, processor, args.out, dtype, backbone="package")
        except ValueError:
            out = save_pretrained(probed, processor, args.out, dtype)
        if (directory / "training.json").is_file():
            training = json.loads((directory / "training.json").read_text())
            training["gsd_probe"] = {k: v for k, v in report.items() if k != "held_out"}
            write_json_atomic(Path(out) / "training.json", training)
        print(f"wrote {out}")


if __name__ == "__main__":
    try:
        main()
    except ChangescopeError as err:  # a missing model or dataset: one line, as the CLI says it
        raise SystemExit(f"error: {err}") from None
