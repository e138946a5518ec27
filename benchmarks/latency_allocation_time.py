"""What a ``--target-latency`` prune costs with latency-aware allocation against the uniform
ratio (issue 17): wall seconds, corrections, layer timings, and where the time went.

- ``--zoo``: torchvision exports at 224×224 (random weights), l2, a cold in-memory table, as
  ``bench_latency_target`` prunes them, with the report's stages.
- ``--real``: real-weight tasks as ``benchmarks.frontier`` prunes them (``obs`` with their
  calibration data, energy normalization, ``round_to`` 8, its latency table on disk), with
  the task metric.

Run it on two commits to compare them (the numbers in RESULTS.md were taken that way)::

    python -m benchmarks.latency_allocation_time --zoo mobilenet_v2 --real yolov8n
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxprune
from benchmarks import frontier
from benchmarks.common import machine, torchvision_at
from benchmarks.quality import tasks


def zoo_row(name: str, target: float, allocation: str) -> str:
    a = onnxprune.pipeline.analyze_model(torchvision_at(name, 224))
    start = time.perf_counter()
    _, report = onnxprune.prune(a, target_latency=target,
                                strategy=onnxprune.Strategy("l2", allocation=allocation))
    took, t = time.perf_counter() - start, report["target"]
    stages = ", ".join(f"{s['step'].split(' ')[0]} {s['seconds']:.1f} s"
                       for s in report["stages"] if s["seconds"] >= 0.5)
    return (f"| {name} | {target:.0%} | {allocation} | {took:.1f} s | {t['measured']:.1%} | "
            f"{t['corrections']} | {t['table_timed']} | {stages} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--zoo", nargs="*", default=["mobilenet_v2"])
    parser.add_argument("--real", nargs="*", default=["yolov8n"])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7])
    args = parser.parse_args(argv)
    print(machine())
    print("| model | target | allocation | seconds | measured | corrections | layer timings "
          "| stages |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.zoo:
        for target in args.targets:
            for allocation in ("uniform", "latency"):
                print(zoo_row(name, target, allocation), flush=True)
    print("\n| task | target | allocation | seconds | metric |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for task in tasks(args.real, Path(folder)):
            calib = task.unlabeled()
            for target in args.targets:
                for allocation in ("uniform", "latency"):
                    start = time.perf_counter()
                    pruned = frontier.ours(task.path(), task.shapes, calib, allocation, target,
                                           8)
                    took = time.perf_counter() - start
                    print(f"| {task.name} | {target} | {allocation} | {took:.1f} s | "
                          f"{task.metric(pruned):.3f} |", flush=True)


if __name__ == "__main__":
    main()
