"""Scale-out on one machine (issue 18): the ``distortion`` criterion on ResNet-18 and a 200-row
sweep of it (64×64), in this process (one worker) against two local worker processes and a
local Ray instance with two workers. Every configuration must give the same scores (the
sweep: the same rows but latency); the wall times are compared.

The in-process run is timed twice: with ONNX Runtime on every core (what one worker does by
default) and on one thread (a worker's share when two run): the second is the baseline the
"near 2×" of two workers is about. The two executors then sweep again with
``overlap_timing`` (``--overlap-timing``: each group of copies timed as soon as it is made,
beside the other worker's prunes); how far each run's speedups are from the baseline's says
what timing beside pruning costs in accuracy. Run from the repository root (needs the
distributed extra; about 25 minutes on 2 cores; ``--sweep-only`` skips the distortion).
``--pairs N`` instead sweeps N times in turn in this process on one thread and with two
local workers (``--ray``: a local Ray instance's two workers) timing beside the prunes, for
the ratio of each pair and their median (this machine's single-thread times move by up to
50 % from run to run)::

    python -m benchmarks.bench_parallel [--samples 8] [--ratios 100] [--sweep-only]
    python -m benchmarks.bench_parallel --pairs 3 [--ray]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import executor_runs, machine
from models import zoo
from onnxprune import pipeline
from onnxprune.evaluate import BenchOptions, sweep
from onnxprune.heap import keep_freed_memory
from onnxprune.parallel import make_executor

NOT_COMPARED = {"latency_median_ms", "latency_p90_ms", "latency_min_ms", "speedup",
                "efficiency", "runs", "path"}


OVERLAP = ", timing beside the prunes"


def configs(workers: int):
    """(name, ONNXPRUNE_THREADS for this process, executor factory); names ending in
    ``OVERLAP`` sweep with ``overlap_timing`` (and do not score distortion again)."""
    local = lambda: make_executor("local", workers)  # noqa: E731
    ray = lambda: make_executor("ray", workers)  # noqa: E731
    return [("in process, ORT on every core", "", lambda: None),
            ("in process, ORT on 1 thread", "1", lambda: None),
            (f"local, {workers} worker processes", "", local),
            (f"Ray (local instance), {workers} workers", "", ray),
            (f"local, {workers} worker processes{OVERLAP}", "", local),
            (f"Ray (local instance), {workers} workers{OVERLAP}", "", ray)]


def distortion_run(path: str, samples: int, executor):
    rng = np.random.default_rng(0)
    a = pipeline.analyze_model(path)
    name = a.model.graph.input[0].name
    calib = [{name: rng.standard_normal((samples, 3, 64, 64)).astype(np.float32)}]
    start = time.perf_counter()
    scores = pipeline.score_model(a, pipeline.Strategy("distortion"), calib,
                                  executor=executor).scored.scores
    return time.perf_counter() - start, scores


def sweep_run(path: str, count: int, executor, overlap: bool = False):
    """One sweep of ``count`` ratios with two criteria (l2 and fpgm), as ``onnxprune sweep
    --criterion l2,fpgm`` runs it: 2·count rows, each a prune, its check and its comparison
    with the dense model; the timing (3 runs a model) after them, or with ``overlap`` in turn
    with them. Returns (seconds, the rows but latency, each row's speedup)."""
    ratios = tuple(np.round(np.linspace(0.05, 0.9, count), 4))
    start = time.perf_counter()
    options = pipeline.PruneOptions(executor=executor)
    result = sweep(path, ratios, options, bench=BenchOptions(runs=3), criteria=["l2", "fpgm"],
                   overlap_timing=overlap)
    rows = [{k: v for k, v in r.items() if k not in NOT_COMPARED} for r in result["rows"][1:]]
    return time.perf_counter() - start, rows, [r["speedup"] for r in result["rows"][1:]]


def speedup_gap(speedups, base) -> float:
    """Median relative difference of each row's measured speedup from the baseline run's."""
    a, b = np.array(speedups, dtype=float), np.array(base, dtype=float)
    return float(np.median(np.abs(a - b) / b))


def main(argv=None) -> None:
    keep_freed_memory()     # as the onnxprune command does, whose work the in-process runs are
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8,
                        help="calibration samples of the distortion runs (one batch)")
    parser.add_argument("--ratios", type=int, default=100, help="ratios per sweep (two sweeps)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--sweep-only", action="store_true", help="skip the distortion runs")
    parser.add_argument("--pairs", type=int, default=0,
                        help="only sweeps: one thread against two workers timing beside the "
                             "prunes, in turn, this many times")
    parser.add_argument("--ray", action="store_true",
                        help="with --pairs: the two workers are a local Ray instance's")
    args = parser.parse_args(argv)
    if args.pairs:
        return pairs(args)
    print(machine())
    print(f"Command: `python -m benchmarks.bench_parallel --samples {args.samples} --ratios "
          f"{args.ratios} --workers {args.workers}{' --sweep-only' * args.sweep_only}`")
    path = str(zoo.ensure("resnet18", "torchscript"))
    results = {}

    def runs(name):
        def both(executor):
            scored = None
            if not (args.sweep_only or name.endswith(OVERLAP)):
                scored = distortion_run(path, args.samples, executor)
                print(f"  distortion {scored[0]:.1f} s", flush=True)
            return scored, sweep_run(path, args.ratios, executor, name.endswith(OVERLAP))
        return both
    for config in configs(args.workers):
        for name, result in executor_runs([config], args.workers, runs(config[0])):
            results[name] = result
            print(f"  {name}: sweep of {len(result[1][1])} rows {result[1][0]:.1f} s",
                  flush=True)
    names = list(results)
    base = results[names[1]]
    print(f"\n| run | distortion, ResNet-18 64×64 ({args.samples} samples) | speedup | "
          f"{len(base[1][1])}-row sweep (ResNet-18) | speedup | same results | "
          f"speedups' median gap from the baseline's |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        scored, (s, rows, speedups) = results[name]
        same = rows == base[1][1] and (scored is None or np.array_equal(scored[1], base[0][1]))
        distortion = "—" if scored is None else f"{scored[0]:.1f} s"
        gain = "—" if scored is None else f"{base[0][0] / scored[0]:.2f}×"
        gap = "—" if name == names[1] else f"{100 * speedup_gap(speedups, base[1][2]):.1f} %"
        print(f"| {name} | {distortion} | {gain} | {s:.1f} s | {base[1][0] / s:.2f}× | "
              f"{'yes' if same else 'NO'} | {gap} |")


def pairs(args) -> None:
    """The sweep on one thread and on two local workers timing beside the prunes, in turn,
    ``args.pairs`` times: each pair's times and ratio, and the median ratio."""
    print(machine())
    print(f"Command: `python -m benchmarks.bench_parallel --pairs {args.pairs} --ratios "
          f"{args.ratios} --workers {args.workers}{' --ray' * args.ray}`")
    path = str(zoo.ensure("resnet18", "torchscript"))
    chosen = [configs(args.workers)[k] for k in (1, 5 if args.ray else 4)]
    print(f"\n| pair | {chosen[0][0]} | {chosen[1][0]} | speedup |")
    print("|---|---|---|---|")
    ratios = []
    for k in range(args.pairs):
        seconds = [result[0] for config in chosen for _, result in executor_runs(
            [config], args.workers,
            lambda executor, c=config: sweep_run(path, args.ratios, executor,
                                                 c[0].endswith(OVERLAP)))]
        ratios.append(seconds[0] / seconds[1])
        print(f"| {k + 1} | {seconds[0]:.1f} s | {seconds[1]:.1f} s | {ratios[-1]:.2f}× |",
              flush=True)
    print(f"\nmedian speedup {float(np.median(ratios)):.2f}×")


if __name__ == "__main__":
    main()
