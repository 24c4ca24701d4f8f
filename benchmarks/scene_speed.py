"""Scene throughput (km2 per minute at 0.5 m) and peak memory of `changescope scene`, by scene size.

For each size, a mosaic of SynthChange pairs is written as a GeoTIFF pair (UTM, 0.5 m pixels; not timed),
then `changescope scene` runs on it in a child process: its wall time gives km2 / minute and ``wait4`` its
peak resident memory. Peak memory must not grow with the scene (windowed reads and writes). The baseline,
in this process, is the model's forward pass alone on as many random tiles per km2: the ratio says how much
the pipeline (reading, stretching, blending, writing, polygons, captions) costs on top of the network.

    python benchmarks/scene_speed.py [--sizes 4096 8192] [--model default] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from changescope.geo.synth_scene import write_synth_scene
from changescope.tasks.inference import load

PIXEL = 0.5


def run_scene(a: Path, b: Path, out: Path, model: str, tile: int, overlap: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `changescope scene` child process."""
    cmd = [sys.executable, "-m", "changescope", "scene", str(a), str(b), "--out", str(out), "--model", model]
    cmd += ["--tile", str(tile), "--overlap", str(overlap), "--json"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"scene failed: {proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports KiB


def forward_only_seconds(model: str, tiles: int, tile: int, batch: int = 8) -> float:
    net, processor, _ = load(model)
    images = torch.rand(batch, 2, 3, tile, tile)
    with torch.inference_mode():
        net(processor.resize(images[:1]))  # warm-up
        start = time.perf_counter()
        for _ in range(0, tiles, batch):
            net(processor.resize(images)).mask_logits.softmax(1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--model", default="default")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="scene_speed_"))
    rows = []
    for size in args.sizes:
        paths = write_synth_scene(scratch / f"in{size}", size=size, seed=7, pixel=PIXEL)
        seconds, rss = run_scene(
            paths["A"], paths["B"], scratch / f"out{size}", args.model, args.tile, args.overlap
        )
        km2 = (size * PIXEL) ** 2 / 1e6
        stride = args.tile - args.overlap
        tiles = (-(-(size - args.tile) // stride) + 1) ** 2
        forward = forward_only_seconds(args.model, tiles, args.tile)
        rows.append((size, km2, tiles, seconds, rss, forward))
        shutil.rmtree(scratch / f"in{size}", ignore_errors=True)
    print(
        f"changescope scene, model {args.model}, tile {args.tile}, overlap {args.overlap}, {PIXEL} m pixels,"
    )
    print(f"{torch.get_num_threads()} threads; baseline: the model's forward pass alone on the same tiles")
    print(
        f"{'size':>6} {'km2':>7} {'tiles':>6} {'scene s':>8} {'km2/min':>8} {'peak RSS MiB':>13} "
        f"{'forward s':>10} {'scene / forward':>16}"
    )
    for size, km2, tiles, seconds, rss, forward in rows:
        print(
            f"{size:>6} {km2:>7.2f} {tiles:>6} {seconds:>8.1f} {60 * km2 / seconds:>8.2f} {rss:>13.0f} "
            f"{forward:>10.1f} {seconds / forward:>16.2f}"
        )
    if len(rows) > 1:
        print(f"peak RSS ratio, largest / smallest scene: {rows[-1][4] / rows[0][4]:.2f}")
    if args.dir is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
