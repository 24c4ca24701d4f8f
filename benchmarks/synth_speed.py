"""SynthChange generation speed on one core, against the cost of only encoding the PNGs.

    python benchmarks/synth_speed.py --pairs 200 --size 256 [--dir build/bench]

Prints pairs/s of ``generate`` (scene synthesis, captions, questions, all files written) and, as the
baseline measured in the same process, the time to PNG-encode and write the same number of pre-made
pairs (A, B and label images read back from the generated dataset) with the generator's encoder and
with Pillow at ``compress_level=1``. The ratio generation / encode-only says how much the synthesis
adds on top of the unavoidable file writing. File creation cost depends a lot on the file system
(``--dir`` picks where the scratch datasets go), so compare numbers taken on the same one.
"""

from __future__ import annotations

import os

# one core: set before numpy / torch start their thread pools
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from changescope.data.synth import generate  # noqa: E402
from changescope.data.synth.png import PHOTO, write_png  # noqa: E402


def _encode_only(arrays: list[np.ndarray], folder: Path, pillow: bool) -> tuple[float, float]:
    """(wall, cpu) seconds to write ``arrays`` as PNGs, photographs and label masks as the writer does."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i, array in enumerate(arrays):
        path = folder / f"{i}.png"
        if pillow:
            Image.fromarray(array).save(path, compress_level=1)
        else:
            write_png(path, array, strategy=PHOTO if i < 2 * len(arrays) // 3 else zlib.Z_RLE)
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", default=None, help="scratch directory (default: system temp)")
    args = parser.parse_args()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        generate(tmp / "warmup", 2, size=args.size, seed=args.seed)  # imports, noise bank, sprite caches
        wall, cpu = time.perf_counter(), time.process_time()
        generate(tmp / "data", args.pairs, size=args.size, seed=args.seed)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        images = sorted((tmp / "data" / "images").glob("*/[AB]/*.png"))
        labels = sorted((tmp / "data" / "images").glob("*/label/*.png"))
        arrays = [np.asarray(Image.open(p)) for p in images + labels]
        (tmp / "enc").mkdir()
        encode, encode_cpu = _encode_only(arrays, tmp / "enc", pillow=False)
        (tmp / "pil").mkdir()
        pillow, pillow_cpu = _encode_only(arrays, tmp / "pil", pillow=True)
    n = args.pairs
    print(f"SynthChange generate: {n} pairs of {args.size} x {args.size}, seed {args.seed}, one thread")
    print(f"  {'':42s} wall s  pairs/s |  cpu s  pairs/s")
    for name, w, c in (
        ("generation (all files)", seconds, cpu_seconds),
        ("encode-only A + B + label, same encoder", encode, encode_cpu),
        ("encode-only A + B + label, Pillow level 1", pillow, pillow_cpu),
    ):
        print(f"  {name:42s} {w:6.2f} {n / w:8.1f} | {c:6.2f} {n / c:8.1f}")
    ratio_wall, ratio_cpu = seconds / encode, cpu_seconds / encode_cpu
    print(f"  ratio generation / encode-only: wall {ratio_wall:.2f}, cpu {ratio_cpu:.2f}")


if __name__ == "__main__":
    main()
