"""Caption decoding speed: the research-code pattern against batched decoding with the key/value cache.

The reference repositories decode one pair at a time and re-run the decoder over the whole prefix at
every step. ``CaptionDecoder.generate`` decodes a batch at once and, with ``use_cache``, computes the
memory's keys/values once and feeds one new token per step.

The decoder has the papers' size (d_model 512, 1 layer, 8 heads, FFN 2048), a 500-word vocabulary and
64 memory tokens of width 512 per pair. Its weights are random: speed does not depend on them, but
caption lengths would, so ``<end>`` is disabled here (benchmark only) and every caption is exactly
``--length`` tokens long; every configuration then does the same work per pair.

    python benchmarks/decode_speed.py [--pairs 32] [--length 20] [--threads 2] [--out speed.json]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from changescope.fileio import write_json_atomic
from changescope.models.heads import CaptionDecoder

# (name, batch size, beam size, use_cache)
CONFIGS = [
    ("batch 1, uncached, greedy (research pattern)", 1, 1, False),
    ("batch 32, cached, greedy", 32, 1, True),
    ("batch 32, cached, beam 3", 32, 3, True),
    ("batch 32, uncached, greedy", 32, 1, False),
]


def build_decoder(vocab_size: int, device: str) -> CaptionDecoder:
    torch.manual_seed(0)
    decoder = CaptionDecoder(vocab_size, d_model=512, num_layers=1, num_heads=8, ffn_dim=2048, dropout=0.1)
    decoder.eval().to(device)

    def no_end(module, inputs, logits):  # fixed-length captions; not something a real model does
        logits[..., decoder.end_id] = float("-inf")
        return logits

    decoder.head.register_forward_hook(no_end)
    return decoder


def decode_all(
    decoder: CaptionDecoder, memory: torch.Tensor, batch: int, beams: int, cache: bool, length: int
) -> None:
    for start in range(0, memory.size(0), batch):
        chunk = memory[start : start + batch]
        out = decoder.generate(chunk, beam_size=beams, max_len=length + 1, use_cache=cache)
        if any(len(ids) != length for ids in out):
            raise RuntimeError("a caption did not get the forced length")
    if memory.is_cuda:
        torch.cuda.synchronize()


def measure(decoder: CaptionDecoder, memory: torch.Tensor, length: int, repeats: int) -> dict[str, float]:
    """Pairs per second of each configuration: the best of ``repeats`` passes over all pairs.

    The configurations take turns within each repeat, so a busy spell on a shared machine does not
    land on one of them only.
    """
    for _, batch, beams, cache in CONFIGS:  # warm-up
        decode_all(decoder, memory[:batch], batch, beams, cache, length)
    best = {name: float("inf") for name, *_ in CONFIGS}
    for _ in range(repeats):
        for name, batch, beams, cache in CONFIGS:
            start = time.perf_counter()
            decode_all(decoder, memory, batch, beams, cache, length)
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: memory.size(0) / seconds for name, seconds in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs", type=int, default=32, help="pairs decoded per timed pass (a multiple of 32)"
    )
    parser.add_argument("--length", type=int, default=20, help="caption length in tokens")
    parser.add_argument("--vocab", type=int, default=500)
    parser.add_argument("--memory-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the numbers to this JSON file")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    decoder = build_decoder(args.vocab, args.device)
    memory = torch.randn(args.pairs, args.memory_tokens, 512, generator=torch.Generator().manual_seed(1))
    memory = memory.to(args.device)
    results = measure(decoder, memory, args.length, args.repeats)
    for name, value in results.items():
        print(f"{name:<46} {value:9.1f} pairs/s")
    ratio = results[CONFIGS[1][0]] / results[CONFIGS[0][0]]
    print(f"{'batched cached greedy / batch-1 uncached greedy':<46} {ratio:9.1f} x")
    if args.out:
        setup = {k: v for k, v in vars(args).items() if k != "out"}
        environment = {
            "torch": torch.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
        }
        write_json_atomic(
            args.out,
            {"pairs_per_second": results, "speedup": ratio, "setup": setup, "environment": environment},
        )


if __name__ == "__main__":
    main()
