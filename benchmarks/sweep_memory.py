"""What a big sweep holds in memory (issue 18): the 200-row sweep of ``bench_parallel``
(ResNet-18 at 64×64, ``l2`` and ``fpgm`` at 100 ratios, 3 timed runs a model, ORT on one
thread), run by the CLI in a child process as a user runs it; its wall time and peak resident
size (``wait4``: this child alone) are printed. The copies wait for their timing in a
temporary folder and are timed 16 at a time beside the dense model. Run from the
repository root (about 3 minutes on 2 cores)::

    python -m benchmarks.sweep_memory [--ratios 100]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine
from models import zoo


def run(path: str, ratios: str, folder: Path) -> tuple[float, int, list[dict]]:
    """Wall seconds, peak resident bytes and the rows of one sweep in a child process."""
    out = folder / "sweep.json"
    env = {**os.environ, "ONNXPRUNE_THREADS": "1"}
    start = time.perf_counter()
    with open(out, "w") as stdout:
        child = subprocess.Popen([sys.executable, "-m", "onnxprune.cli", "sweep", path,
                                  "--ratios", ratios, "--criterion", "l2,fpgm", "--runs", "3",
                                  "--json"], stdout=stdout, stderr=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("the sweep failed")
    return wall, usage.ru_maxrss * 1024, json.loads(out.read_text())["rows"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", type=int, default=100, help="ratios per criterion")
    args = parser.parse_args(argv)
    print(machine())
    print(f"Command: `python -m benchmarks.sweep_memory --ratios {args.ratios}`")
    path = str(zoo.ensure("resnet18", "torchscript"))
    ratios = ",".join(f"{r:g}" for r in np.round(np.linspace(0.05, 0.9, args.ratios), 4))
    with tempfile.TemporaryDirectory() as folder:
        wall, peak, rows = run(path, ratios, Path(folder))
    failed = sum(1 for r in rows if r.get("error"))
    print(f"{len(rows)} rows ({failed} failed): {wall:.1f} s, peak resident "
          f"{peak / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
