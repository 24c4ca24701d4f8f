"""Fetch the real inputs the tests read that are neither generated nor in ../shared (run by `make test`).

Today that is one file: L7_ETMs.tif (Landsat 7 ETM+, 349 x 352 px, 6 bands, EPSG:31985, Olinda, Brazil)
from Debian's ``r-cran-stars`` package (the R stars package, Apache-2.0), fetched with ``apt-get download``
(a package registry, reachable here) into ``.data/test-inputs/``. The file's SHA-256 is checked, so a
changed upstream file fails here, not as a puzzling test result.

Exit code 1 with one line when an input cannot be fetched: CI must fail, not silently skip the tests
that need it (tests/conftest.py turns such a skip into a failure under ``CHANGESCOPE_CI=1``).

    python tests/data/fetch_inputs.py [--dest .data/test-inputs]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEST = ROOT / ".data" / "test-inputs"

#: name -> (Debian package, path inside it, sha256 of the file as fetched on 2026-12-02, stars 0.6-0)
INPUTS = {
    "L7_ETMs.tif": (
        "r-cran-stars",
        "usr/lib/R/site-library/stars/tif/L7_ETMs.tif",
        "3b722bf4470144b6691bf720bac08f47c99464acff4dd258252891c06312678e",
    ),
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _refresh_package_index() -> bool:
    """``apt-get update`` as root, or through ``sudo -n``; False when neither is possible or it fails."""
    import os

    command = ["apt-get", "update", "-q"]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None:
            return False
        command = ["sudo", "-n", *command]
    return subprocess.run(command, capture_output=True).returncode == 0


def fetch_deb_member(package: str, member: str, target: Path) -> None:
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"'{tool}' is not installed: fetch {target.name} by hand (see this script)")
    with tempfile.TemporaryDirectory(prefix="changescope-inputs-") as tmp:
        folder = Path(tmp)
        run = subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True)
        if run.returncode != 0 and _refresh_package_index():  # a fresh machine may hold no index yet
            run = subprocess.run(["apt-get", "download", package], cwd=folder, capture_output=True, text=True)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"apt-get download {package} failed: {last}")
        (deb,) = folder.glob(f"{package}_*.deb")
        subprocess.run(["dpkg", "-x", str(deb), str(folder / "x")], check=True, capture_output=True)
        source = folder / "x" / member
        if not source.is_file():
            raise RuntimeError(f"{deb.name} holds no {member}")
        partial = target.with_suffix(target.suffix + ".part")
        shutil.copyfile(source, partial)
        partial.replace(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEST)
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for name, (package, member, expected) in INPUTS.items():
        target = args.dest / name
        if not target.is_file():
            try:
                fetch_deb_member(package, member, target)
            except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as err:
                print(f"error: {target}: cannot fetch the test input ({err})", file=sys.stderr)
                return 1
        if sha256(target) != expected:
            target.unlink()
            print(f"error: {target}: SHA-256 differs from the known file; removed", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
