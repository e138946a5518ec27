"""Scale-out on one machine (issue 18): the ``distortion`` criterion on ResNet-18 and a 200-row
sweep of it (64×64), in this process (one worker) against two local worker processes and a
local Ray instance with two workers. Every configuration must give the same scores (the
sweep: the same rows but latency); the wall times are compared.

The in-process run is timed twice: with ONNX Runtime on every core (what one worker does by
default) and on one thread (a worker's share when two run): the second is the baseline the
"near 2×" of two workers is about. Run from the repository root (needs the distributed extra;
about 20 minutes on 2 cores)::

    python -m benchmarks.bench_parallel [--samples 8] [--ratios 100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import executor_runs, machine
from models import zoo
from onnxprune import pipeline
from onnxprune.evaluate import BenchOptions, sweep
from onnxprune.parallel import make_executor

NOT_COMPARED = {"latency_median_ms", "latency_p90_ms", "latency_min_ms", "speedup",
                "efficiency", "runs", "path"}


def configs(workers: int):
    """(name, ONNXPRUNE_THREADS for this process, executor factory)."""
    return [("in process, ORT on every core", "", lambda: None),
            ("in process, ORT on 1 thread", "1", lambda: None),
            (f"local, {workers} worker processes", "", lambda: make_executor("local", workers)),
            (f"Ray (local instance), {workers} workers", "",
             lambda: make_executor("ray", workers))]


def distortion_run(path: str, samples: int, executor):
    rng = np.random.default_rng(0)
    a = pipeline.analyze_model(path)
    name = a.model.graph.input[0].name
    calib = [{name: rng.standard_normal((samples, 3, 64, 64)).astype(np.float32)}]
    start = time.perf_counter()
    scores = pipeline.score_model(a, pipeline.Strategy("distortion"), calib,
                                  executor=executor).scored.scores
    return time.perf_counter() - start, scores


def sweep_run(path: str, count: int, executor):
    """One sweep of ``count`` ratios with two criteria (l2 and fpgm), as ``onnxprune sweep
    --criterion l2,fpgm`` runs it: 2·count rows, each a prune, its check and its comparison
    with the dense model; the timing (3 runs a model) is one job after them."""
    ratios = tuple(np.round(np.linspace(0.05, 0.9, count), 4))
    start = time.perf_counter()
    options = pipeline.PruneOptions(executor=executor)
    result = sweep(path, ratios, options, bench=BenchOptions(runs=3), criteria=["l2", "fpgm"])
    rows = [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in result["rows"][1:]]
    return time.perf_counter() - start, rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8,
                        help="calibration samples of the distortion runs (one batch)")
    parser.add_argument("--ratios", type=int, default=100, help="ratios per sweep (two sweeps)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(machine())
    print(f"Command: `python -m benchmarks.bench_parallel --samples {args.samples} --ratios "
          f"{args.ratios} --workers {args.workers}`")
    path = str(zoo.ensure("resnet18", "torchscript"))
    results = {}

    def both(executor):
        scored = distortion_run(path, args.samples, executor)
        print(f"  distortion {scored[0]:.1f} s", flush=True)
        return scored, sweep_run(path, args.ratios, executor)
    for name, result in executor_runs(configs(args.workers), args.workers, both):
        results[name] = result
        print(f"  {name}: sweep of {len(result[1][1])} rows {result[1][0]:.1f} s", flush=True)
    names = list(results)
    base = results[names[1]]
    print(f"\n| run | distortion, ResNet-18 64×64 ({len(base[0][1])} scores, "
          f"{args.samples} samples) | speedup | {len(base[1][1])}-row sweep (ResNet-18) | "
          f"speedup | same results |")
    print("|---|---|---|---|---|---|")
    for name in names:
        (d, scores), (s, rows) = results[name]
        same = np.array_equal(scores, base[0][1]) and rows == base[1][1]
        print(f"| {name} | {d:.1f} s | {base[0][0] / d:.2f}× | {s:.1f} s | "
              f"{base[1][0] / s:.2f}× | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
