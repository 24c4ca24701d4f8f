"""How a model's GSD probe decides held-out real tiles, as they are and with their photometry changed.

For each optical set of ``real_change.REAL_SETS`` (cut into tiles of the model's size at their own
resolution, as ``fit_gsd_probe.py`` reports them), prints how many tiles the probe takes for coarse
imagery and the extreme probabilities, for the tiles as they are, with contrast scaled by 0.6 or 1.5, with
a gamma of 0.6 or 1.6, and halved in resolution (small pairs are resized back up to the model's size).

    python benchmarks/gsd_probe_robustness.py [--model default]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from changescope.data.mix import rescale
from changescope.data.readers import open_dataset
from changescope.errors import ChangescopeError
from changescope.tasks.inference import load


def _contrast(factor: float):
    return lambda p: ((p - p.mean()) * factor + p.mean()).clamp(0, 1)


VARIANTS = {
    "as is": lambda p: p,
    "contrast x0.6": _contrast(0.6),
    "contrast x1.5": _contrast(1.5),
    "gamma 0.6": lambda p: p.clamp(0, 1) ** 0.6,
    "gamma 1.6": lambda p: p.clamp(0, 1) ** 1.6,
    "half resolution": lambda p: rescale({"image": p}, 0.5)["image"],
}


@torch.inference_mode()
def probabilities(model, processor, tiles: list[torch.Tensor]) -> torch.Tensor:
    parts = []
    for start in range(0, len(tiles), 16):
        images = torch.stack([processor.resize(t) for t in tiles[start : start + 16]])
        parts.append(model.gsd_probe(model.levels(images)).sigmoid())
    return torch.cat(parts)


def main() -> None:
    from fit_gsd_probe import tiles_of
    from real_change import REAL_SETS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--realdata", default=str(Path(__file__).parents[2] / "shared" / "realdata"))
    args = parser.parse_args()
    model, processor, path = load(args.model, "fp32", 1)
    if model.gsd_probe is None:
        raise SystemExit(f"{path}: this model has no GSD probe")
    for name, folder, fmt, split, group in REAL_SETS:
        if group == "sar":
            continue
        dataset = open_dataset(Path(args.realdata) / folder, split, fmt)
        cells = []
        for variant, change in VARIANTS.items():
            tiles = [
                t
                for i in range(len(dataset))
                for t in tiles_of(change(dataset[i]["image"][[0, -1]]), processor.image_size)
            ]
            p = probabilities(model, processor, tiles)
            cells.append(f"{variant}: {int((p > 0.5).sum())}/{len(p)} (P {p.min():.2f}-{p.max():.2f})")
        print(f"{name}: " + "; ".join(cells), flush=True)


if __name__ == "__main__":
    try:
        main()
    except ChangescopeError as err:  # a missing model or dataset: one line, as the CLI says it
        raise SystemExit(f"error: {err}") from None
