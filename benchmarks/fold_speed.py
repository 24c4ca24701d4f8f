"""What folding batch norms into their convolutions buys at inference (``ChangeModel.fold_batchnorm``).

One process, one model at a time, the same pairs: the model as ``from_pretrained`` builds it, then the same
model folded (as ``tasks.inference.load`` returns it), taking turns ``--rounds`` times; the best time of
each. Two workloads per model: change masks with the change tokens (``detect``'s forward pass, one view)
and 42-token greedy captions (``describe``). Models: the shipped default and the ``chg2cap`` preset at the
paper's sizes (ResNet-101, random weights: speed does not depend on them).

    python benchmarks/fold_speed.py [--pairs 32] [--batch 32] [--rounds 3] [--precision fp32]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from changescope.models.change_model import ChangeModel
from changescope.models.hub import from_pretrained
from changescope.models.presets import build_config
from changescope.tasks.inference import resolve_model


@torch.inference_mode()
def timed(fn, images, batch) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        fn(images[i : i + batch])
    return time.perf_counter() - start


def workloads(model: ChangeModel) -> dict:
    jobs = {"captions (42 tokens)": lambda x: model.generate(x, max_len=43)}
    if model.mask_head is not None:
        jobs = {"masks + change tokens": lambda x: model(x), **jobs}
    return jobs


def compare(title: str, model: ChangeModel, images, batch: int, rounds: int, precision: str) -> None:
    model.eval().set_precision(precision)
    plain = {name: [] for name in workloads(model)}
    folded = {name: [] for name in workloads(model)}
    for fn in workloads(model).values():
        timed(fn, images[:2], 2)  # warm-up
    folded_model = copy.deepcopy(model)
    start = time.perf_counter()
    count = folded_model.fold_batchnorm()
    fold_time = time.perf_counter() - start
    for _ in range(rounds):
        for name, fn in workloads(model).items():
            plain[name].append(timed(fn, images, batch))
        for name, fn in workloads(folded_model).items():
            folded[name].append(timed(fn, images, batch))
    print(f"\n{title}: {count} batch norms folded in {fold_time:.2f} s, {precision}, {len(images)} pairs")
    for name in plain:
        a, b = min(plain[name]), min(folded[name])
        print(
            f"  {name:<24} plain {len(images) / a:7.2f} pairs/s   folded {len(images) / b:7.2f} pairs/s"
            f"   ratio {a / b:.2f} x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU, 256 x 256 pairs")
    images = torch.rand(args.pairs, 2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    default, _ = from_pretrained(resolve_model("default"))
    compare("the shipped default (lite)", default, images, args.batch, args.rounds, args.precision)
    torch.manual_seed(0)
    paper = {"decoder_kwargs": {"d_model": 2048, "num_layers": 1, "num_heads": 8, "ffn_dim": 2048}}
    chg2cap = ChangeModel(build_config("chg2cap", 504, backbone_pretrained=False, **paper))
    compare("chg2cap, paper sizes (ResNet-101)", chg2cap, images, args.batch, args.rounds, args.precision)


if __name__ == "__main__":
    main()
