"""A deployment team's zoo in one sweep (issue 18): four exported torchvision models (64×64,
random weights) × three criteria (``l2``, ``fpgm``, and ``wanda`` on random calibration inputs)
× nine ratios in ONE ``sweep`` call, in this process against two local worker processes and a
local Ray instance with two workers. Every configuration must give the same rows (all but the
latency columns); the wall times are compared, and the rows at 0.5 are printed.

Run from the repository root (needs the distributed extra; about 15 minutes on 2 cores)::

    python -m benchmarks.bench_zoo_sweep [--models resnet18 mobilenet_v2 ...] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks.common import executor_runs, machine
from models import zoo
from onnxprune import pipeline
from onnxprune.evaluate import BenchOptions, sweep
from onnxprune.parallel import make_executor

MODELS = ("resnet18", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf")
CRITERIA = ("l2", "fpgm", "wanda")
RATIOS = tuple(np.round(np.arange(1, 10) / 10, 1))
NOT_COMPARED = {"latency_median_ms", "latency_p90_ms", "latency_min_ms", "speedup",
                "efficiency", "runs", "path"}


def configs(workers: int):
    """(name, ONNXPRUNE_THREADS for this process, executor factory)."""
    return [("in process, ORT on 1 thread", "1", lambda: None),
            ("in process, ORT on every core (the default)", "", lambda: None),
            (f"`--workers {workers}` (local worker processes)", "",
             lambda: make_executor("local", workers)),
            (f"`--executor ray --workers {workers}` (local Ray instance)", "",
             lambda: make_executor("ray", workers))]


def zoo_run(paths: list[str], executor):
    """One sweep of every model, criterion and ratio: (seconds, result, rows to compare)."""
    options = pipeline.PruneOptions(calib="random", executor=executor)
    start = time.perf_counter()
    result = sweep(paths, RATIOS, options, bench=BenchOptions(runs=5), criteria=CRITERIA)
    seconds = time.perf_counter() - start
    rows = [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in result["rows"]]
    return seconds, result, rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(machine())
    print(f"Command: `python -m benchmarks.bench_zoo_sweep --models {' '.join(args.models)} "
          f"--workers {args.workers}`")
    paths = [str(zoo.ensure(name, "torchscript")) for name in args.models]
    runs = {}
    for name, run in executor_runs(configs(args.workers), args.workers,
                                   lambda executor: zoo_run(paths, executor)):
        runs[name] = run
        print(f"  {name}: {len(run[2])} rows in {run[0]:.1f} s", flush=True)
    base_s, base, base_rows = runs[next(iter(runs))]
    print(f"\n| run | {len(base_rows)}-row zoo sweep | speedup | same rows |")
    print("|---|---|---|---|")
    for name, (seconds, _, rows) in runs.items():
        print(f"| {name} | {seconds:.1f} s | {base_s / seconds:.2f}× | "
              f"{'yes' if rows == base_rows else 'NO'} |")
    failed = [r for r in base["rows"] if r["error"]]
    print(f"\nfailed rows: {len(failed)}" + "".join(f"\n  {r['model']} {r['criterion']} "
                                                  f"{r['ratio']}: {r['error']}" for r in failed))
    print("\nAt ratio 0.5 (the first run's timing; fidelity on 32 random inputs):\n")
    print("| model | criterion | MACs kept | measured speedup | MAC ratio | cosine mean |")
    print("|---|---|---|---|---|---|")
    for r in base["rows"]:
        if r["ratio"] == 0.5 and not r["error"]:
            print(f"| {os.path.basename(r['model'])} | {r['criterion']} | "
                  f"{r['macs_kept']:.1%} | {r['speedup']:.2f}× | {r['mac_ratio']:.2f}× | "
                  f"{r['cosine_mean']:.3f} |")


if __name__ == "__main__":
    main()
