"""Join two models' change heads into one model: one head for aerial inputs, one for coarse (satellite) ones.

Both models must come from one model by training its change head alone (``train --init MODEL --tasks
mask``), so that every other tensor is equal (checked). Inputs of known GSD at or above ``--coarse-gsd``
read the coarse model's head with its threshold; finer or unknown ones the fine model's
(``changescope.models.change_bands``). This is how the shipped default was made:

    python benchmarks/band_change_heads.py --fine RUN/model --coarse OLD_DEFAULT --coarse-gsd 5 \\
        --out changescope/pretrained/default
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from changescope.fileio import write_json_atomic
from changescope.models.change_bands import with_coarse_head
from changescope.models.hub import from_pretrained, save_pretrained
from changescope.tasks.inference import resolve_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fine", required=True, help="the model whose change head reads aerial inputs")
    parser.add_argument("--coarse", required=True, help="the model whose change head reads coarse inputs")
    parser.add_argument("--coarse-gsd", type=float, default=5.0, help="metres per pixel from which")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fp32", action="store_true", help="keep fp32 weights (default: fp16, half size)")
    args = parser.parse_args()
    fine_dir, coarse_dir = resolve_model(args.fine), resolve_model(args.coarse)
    fine, processor = from_pretrained(fine_dir)
    coarse, _ = from_pretrained(coarse_dir)
    try:
        model = with_coarse_head(fine, coarse, args.coarse_gsd)
    except ValueError as err:  # models that differ beyond their change heads, or a bad --coarse-gsd
        raise SystemExit(f"{fine_dir} + {coarse_dir}: {err}") from None
    training = {}
    if (fine_dir / "training.json").is_file():
        training = json.loads((fine_dir / "training.json").read_text())
    if (coarse_dir / "training.json").is_file():
        training["coarse_change_head"] = {
            "coarse_gsd": args.coarse_gsd,
            "threshold": coarse.config.change_threshold,
            "training": json.loads((coarse_dir / "training.json").read_text()),
        }
    dtype = None if args.fp32 else torch.float16
    try:  # a frozen backbone equal to its package's weights stays out of the file
        out = save_pretrained(model, processor, args.out, dtype, backbone="package")
        packaged = "package"
    except ValueError:
        packaged = "file"
        out = save_pretrained(model, processor, args.out, dtype)
    write_json_atomic(Path(out) / "training.json", training)
    print(
        json.dumps(
            {
                "out": str(out),
                "coarse_gsd": args.coarse_gsd,
                "change_threshold": model.config.change_threshold,
                "coarse_change_threshold": model.config.coarse_change_threshold,
                "backbone": packaged,
            }
        )
    )


if __name__ == "__main__":
    main()
