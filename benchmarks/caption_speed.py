"""End-to-end captioning speed on this machine's CPU, every preset, and the research-code pattern.

For each preset (random weights: speed does not depend on them) at 256 x 256 and batch 32 it reports
pairs/s for greedy and beam-3 decoding with and without the key/value cache, and training steps/s.
Captions are forced to ``--length`` words (``<end>`` disabled, benchmark only) so every configuration
does the same work.

Then the comparison the papers' code invites, end to end (pairs in memory -> caption token ids): a model run
as the research repositories run it (one pair at a time, fp32, no cache, greedy: the whole prefix re-decoded
at every step, to the 42 tokens Chg2Cap's test loop decodes) against changescope's path for the same pairs
in the same process (batch 32, key/value cache, greedy, batch norms folded into the convolutions as
``tasks.inference.load`` does, ``--precision``: the backbone and change encoder under ``torch.autocast``,
decoding in fp32 as ``ChangeModel.set_precision`` does). Two models: the ``chg2cap``
preset at the paper's sizes (ResNet-101, 2048-wide decoder) and the shipped default (``lite``, its trained
weights).

    python benchmarks/caption_speed.py [--presets lite,chg2cap,...] [--pairs 32] [--length 42] \
        [--precision bf16] [--threads 2] [--skip-table]
"""

from __future__ import annotations

import argparse
import time

import torch

from changescope.models.change_model import ChangeModel
from changescope.models.presets import PRESETS, build_config

VOCAB = 504


def fixed_length(model: ChangeModel) -> ChangeModel:
    def no_end(module, inputs, logits):  # fixed-length captions; not something a real model does
        logits[..., model.decoder.end_id] = float("-inf")
        return logits

    model.decoder.head.register_forward_hook(no_end)
    return model.eval()


def build(preset: str, **overrides) -> ChangeModel:
    torch.manual_seed(0)
    return fixed_length(ChangeModel(build_config(preset, VOCAB, backbone_pretrained=False, **overrides)))


@torch.inference_mode()
def timed_generate(model, images, batch, length, **decoding) -> float:
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        out = model.generate(images[i : i + batch], max_len=length + 1, **decoding)
        assert all(len(ids) == length for ids in out)
    return time.perf_counter() - start


def train_steps_per_s(preset: str, batch: int, steps: int = 2) -> float:
    torch.manual_seed(0)
    model = ChangeModel(build_config(preset, VOCAB, backbone_pretrained=False)).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], 1e-4)
    images = torch.rand(batch, 2, 3, 256, 256)
    tokens = torch.randint(4, VOCAB, (batch, 16))
    tokens[:, 0] = 2
    times = []
    for _ in range(steps + 1):  # the first step pays one-time allocation costs
        start = time.perf_counter()
        model.decoder.loss(model(images, masks=False).memory, tokens).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return 1 / min(times[1:])


def preset_table(presets, pairs, length, train_batch):
    images = torch.rand(pairs, 2, 3, 256, 256)
    print(f"{'preset':<12}{'greedy':>9}{'greedy':>9}{'beam 3':>9}{'beam 3':>9}{'train':>11}")
    print(f"{'':<12}{'cached':>9}{'uncached':>9}{'cached':>9}{'uncached':>9}{'steps/s':>11}   (pairs/s)")
    for name in presets:
        model = build(name)
        timed_generate(model, images[:2], 2, 2)  # warm-up
        rates = [
            pairs / timed_generate(model, images, 32, length, beam_size=beam, use_cache=cache)
            for beam, cache in ((1, True), (1, False), (3, True), (3, False))
        ]
        steps = train_steps_per_s(name, train_batch)
        print(
            f"{name:<12}"
            + "".join(f"{r:>9.2f}" for r in rates)
            + f"{steps:>11.3f}   (train batch {train_batch})"
        )


def research_comparison(model: ChangeModel, title: str, pairs: int, length: int, precision: str) -> float:
    """Print and return the end-to-end ratio: research pattern time / changescope time."""
    images = torch.rand(pairs, 2, 3, 256, 256)
    model.set_precision("fp32")
    timed_generate(model, images[:1], 1, 2, use_cache=False)  # warm-up
    research = timed_generate(model, images, 1, length, beam_size=1, use_cache=False)
    with torch.inference_mode():
        start = time.perf_counter()
        for i in range(pairs):
            model(images[i : i + 1], masks=False)
        encode_one = time.perf_counter() - start
    model.fold_batchnorm()  # as tasks.inference.load does; the research pattern ran the model unfolded
    model.set_precision(precision)
    timed_generate(model, images[:2], 2, 2)  # warm-up (autocast kernels)
    ours = timed_generate(model, images, 32, length, beam_size=1, use_cache=True)
    model.set_precision("fp32")
    print(f"\n{title}, {pairs} pairs, {length}-token captions")
    print(
        f"  research pattern (batch 1, fp32, uncached, greedy): {pairs / research:8.2f} pairs/s "
        f"({100 * (research - encode_one) / research:.0f} % of its time in decoding)"
    )
    print(f"  changescope (batch 32, {precision}, cached, greedy):   {pairs / ours:8.2f} pairs/s")
    print(f"  ratio: {research / ours:.1f} x")
    return research / ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--length", type=int, default=42, help="Tokens per caption (Chg2Cap decodes 42).")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"), help="changescope's side.")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-table", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, CPU, 256 x 256 pairs")
    if not args.skip_table:
        preset_table(args.presets.split(","), args.pairs, args.length, args.train_batch)
    paper = {"decoder_kwargs": {"d_model": 2048, "num_layers": 1, "num_heads": 8, "ffn_dim": 2048}}
    research_comparison(
        build("chg2cap", **paper),
        "chg2cap, paper sizes (ResNet-101, 2048-wide decoder)",
        args.pairs,
        args.length,
        args.precision,
    )
    from changescope.tasks.inference import load

    default, _, _ = load("default", fold=False)
    research_comparison(
        fixed_length(default), "the shipped default (lite)", args.pairs, args.length, args.precision
    )


if __name__ == "__main__":
    main()
