"""Many pairs per process: ``describe`` over a folder against one ``describe`` process per pair.

What a user scripting the CLI over a folder of pairs gets, measured as whole commands (``/usr/bin/time``
gives wall time and peak RSS of each):

* cold start: ``changescope describe default A.png B.png`` on one 256 px pair (the OS cache is warmed by a
  first run that is not counted), repeated;
* the baseline: that command once per pair, over the first ``--baseline-pairs`` pairs (pairs/s);
* the folder: ``changescope describe default FOLDER --out X.jsonl`` over ``--pairs`` pairs (pairs/s, peak
  RSS), and over a tenth of them: peak RSS should not grow with the number of pairs.

The pairs are SynthChange 256 x 256 pairs (generated once into ``--work``). The ratio folder / baseline is
printed; both sides run on this machine in this script.

    python benchmarks/describe_folder.py [--pairs 1000] [--baseline-pairs 10] [--precision bf16]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from changescope.data.synth import generate

CLI = [sys.executable, "-m", "changescope"]


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB) of one command, which must succeed."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as log:
        cmd = ["/usr/bin/time", "-f", "%e %M", "-o", log.name, *args]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"failed: {' '.join(args)}\n{done.stderr[-2000:]}")
        wall, kb = Path(log.name).read_text().split()[-2:]
    return float(wall), float(kb) / 1024


def pairs_folder(work: Path, pairs: int) -> Path:
    root = work / f"synth-{pairs}"
    if not (root / "synthchange.json").is_file():
        generate(root, pairs=pairs, size=256, seed=11, split_fractions=(1.0, 0.0, 0.0))
    return root / "images" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--baseline-pairs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="Cold starts timed.")
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path(".data/bench-describe"))
    args = parser.parse_args()

    folder = pairs_folder(args.work, args.pairs)
    small = pairs_folder(args.work, max(args.pairs // 10, args.batch_size))
    names = sorted(p.name for p in (folder / "A").iterdir())
    precision = ["--precision", args.precision]

    def one(name: str) -> list[str]:
        return [*CLI, "describe", "default", str(folder / "A" / name), str(folder / "B" / name), *precision]

    timed(one(names[0]))  # warms the OS cache; not counted
    starts = [timed(one(names[0])) for _ in range(args.repeats)]
    walls, rss = [w for w, _ in starts], [m for _, m in starts]
    print(f"cold start, describe one pair ({args.precision}), {args.repeats} runs:")
    print(f"  wall {statistics.median(walls):.2f} s (min {min(walls):.2f}, max {max(walls):.2f})")
    print(f"  peak RSS {statistics.median(rss):.0f} MB (max {max(rss):.0f})")

    baseline = sum(timed(one(n))[0] for n in names[: args.baseline_pairs])
    base_rate = args.baseline_pairs / baseline
    print(f"baseline: one process per pair, {args.baseline_pairs} pairs: {base_rate:.2f} pairs/s")

    rows = {}
    for label, where in (("small", small), ("full", folder)):
        n = len(list((where / "A").iterdir()))
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "captions.jsonl"
            cmd = [
                *CLI,
                "describe",
                "default",
                str(where),
                "--out",
                str(out),
                "--batch-size",
                str(args.batch_size),
            ]
            wall, peak = timed([*cmd, *precision])
            assert sum(1 for _ in out.open()) == n, "a caption per pair"
        rows[label] = (n, wall, peak)
        print(f"folder of {n} pairs: {wall:.1f} s, {n / wall:.2f} pairs/s, peak RSS {peak:.0f} MB")
    n, wall, _ = rows["full"]
    print(f"ratio (folder / one process per pair): {(n / wall) / base_rate:.1f} x")
    (n_small, _, rss_small), (n_full, _, rss_full) = rows["small"], rows["full"]
    print(f"peak RSS, {n_small} -> {n_full} pairs: {rss_small:.0f} -> {rss_full:.0f} MB")


if __name__ == "__main__":
    main()
