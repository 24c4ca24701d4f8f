"""Scene throughput (km2 per minute at 0.5 m) and peak memory of `changescope scene`, by scene size.

For each size, a mosaic of SynthChange pairs is written as a GeoTIFF pair (UTM, 0.5 m pixels; not timed),
then `changescope scene` runs on it in a child process: its wall time gives km2 / minute and ``wait4`` its
peak resident memory. Peak memory must not grow with the scene (windowed reads and writes). The baseline,
in this process, is the model's forward pass alone on as many random tiles per km2: the ratio says how much
the pipeline (reading, stretching, blending, writing, polygons, captions) costs on top of the network.

With ``--dates T`` (T >= 3), each size also gets a stack of T dates (a mosaic of SynthChange sequences,
``geo.synth_scene.write_synth_stack``) through the same command, and its peak RSS is compared with the
pair's of the same size: memory may grow with T (one class map per interval), never with the scene.

    python benchmarks/scene_speed.py [--sizes 4096 8192] [--dates 5] [--model default] [--dir DIR]
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

from changescope.geo.synth_scene import Grid, write_synth_scene, write_synth_stack
from changescope.tasks.inference import load

PIXEL = 0.5


def run_scene(paths: list[Path], out: Path, model: str, tile: int, overlap: int) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one `changescope scene` child process (a pair or a stack)."""
    cmd = [sys.executable, "-m", "changescope", "scene", *map(str, paths), "--out", str(out)]
    cmd += ["--model", model, "--tile", str(tile), "--overlap", str(overlap), "--json"]
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


def print_table(columns: list[str], rows: list[tuple]) -> None:
    """``columns``: "header" or "header:format"; each right-aligned to its header (at least 6 wide)."""
    heads = [c.split(":")[0] for c in columns]
    specs = [c.split(":")[1] if ":" in c else "" for c in columns]
    widths = [max(6, len(h)) for h in heads]
    print(" ".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
    for row in rows:
        print(" ".join(f"{v:>{w}{f}}" for v, w, f in zip(row, widths, specs, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--dates", type=int, default=0, help="also a stack of this many dates (>= 3)")
    parser.add_argument("--model", default="default")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--dir", default=None, help="scratch directory (default: a temporary one)")
    args = parser.parse_args()

    scratch = Path(args.dir or tempfile.mkdtemp(prefix="scene_speed_"))
    rows, stacks = [], []
    scene = (args.model, args.tile, args.overlap)
    for size in args.sizes:
        paths = write_synth_scene(scratch / f"in{size}", size=size, seed=7, pixel=PIXEL)
        seconds, rss = run_scene([paths["A"], paths["B"]], scratch / f"out{size}", *scene)
        km2 = (size * PIXEL) ** 2 / 1e6
        stride = args.tile - args.overlap
        tiles = (-(-(size - args.tile) // stride) + 1) ** 2
        forward = forward_only_seconds(args.model, tiles, args.tile)
        rows.append((size, km2, tiles, seconds, rss, forward))
        shutil.rmtree(scratch / f"in{size}", ignore_errors=True)
        if args.dates >= 3:
            dates = [f"{2016 + 2 * t}-05-01" for t in range(args.dates)]
            stack = write_synth_stack(scratch / f"stack{size}", dates, Grid(size, pixel=PIXEL), seed=7)
            seconds, stack_rss = run_scene(stack["dates"], scratch / f"stack_out{size}", *scene)
            stacks.append((size, km2, tiles, seconds, stack_rss, rss))
            shutil.rmtree(scratch / f"stack{size}", ignore_errors=True)
    print(
        f"changescope scene, model {args.model}, tile {args.tile}, overlap {args.overlap}, {PIXEL} m pixels,"
    )
    print(f"{torch.get_num_threads()} threads; baseline: the model's forward pass alone on the same tiles")
    columns = ["size", "km2:.2f", "tiles", "scene s:.1f", "km2/min:.2f", "peak RSS MiB:.0f", "forward s:.1f"]
    print_table(
        [*columns, "scene / forward:.2f"],
        [(*r[:4], 60 * r[1] / r[3], r[4], r[5], r[3] / r[5]) for r in rows],
    )
    if len(rows) > 1:
        print(f"peak RSS ratio, largest / smallest scene: {rows[-1][4] / rows[0][4]:.2f}")
    if stacks:
        intervals = args.dates - 1
        print(f"\na stack of {args.dates} dates ({intervals} intervals) against the pair of the same size:")
        columns = ["size", "km2:.2f", "tiles", "stack s:.1f", "stack RSS MiB:.0f", "pair RSS MiB:.0f"]
        print_table([*columns, "stack / pair RSS:.2f"], [(*r, r[4] / r[5]) for r in stacks])
        if len(stacks) > 1:
            print(f"stack peak RSS ratio, largest / smallest scene: {stacks[-1][4] / stacks[0][4]:.2f}")
    if args.dir is None:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
