"""``--target-latency`` on real architectures: how close the per-layer table's prediction and
the timed result land to the target, and how long the search takes.

For each model and target, ``onnxprune.prune(target_latency=F)`` searches the ratio on a table
of Conv/Gemm/MatMul layers timed alone on ORT CPU (1 thread, graph optimizations on), builds
the model, times it (fastest of ~1 s of runs), and re-aims when the timing misses. Random
weights (torchvision at 224×224); latency does not depend on the values. Run from the
repository root::

    python -m benchmarks.bench_latency_target [--models resnet50 mobilenet_v2]
        [--targets 0.7 0.5] [--allocation uniform|latency]
"""

from __future__ import annotations

import argparse
import time

import onnxprune
from benchmarks.common import machine, torchvision_at


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "mobilenet_v2"])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--allocation", choices=["uniform", "latency"], default="uniform")
    args = parser.parse_args(argv)
    print(machine())
    print(f"ORT CPU, {args.threads} thread(s), batch 1, 224×224, round_to 16, l2, "
          f"allocation {args.allocation}")
    print("| model | target | ratio | table predicted | measured | dense ms | pruned ms | "
          "MACs kept | corrections | seconds |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        path = torchvision_at(name, 224)
        analyzed = onnxprune.pipeline.analyze_model(path)
        for fraction in args.targets:
            start = time.perf_counter()
            _, report = onnxprune.prune(
                analyzed, target_latency=fraction, latency_threads=args.threads,
                strategy=onnxprune.Strategy("l2", allocation=args.allocation))
            took = time.perf_counter() - start
            t, m = report["target"], report["macs"]
            print(f"| {name} | {fraction:.0%} | {t['ratio']:.3f} | {t['planned']:.1%} | "
                  f"{t['measured']:.1%}{'' if t['met'] else ' (missed)'} | "
                  f"{t['dense_seconds'] * 1e3:.2f} | {t['pruned_seconds'] * 1e3:.2f} | "
                  f"{m['after'] / m['before']:.1%} | {t['corrections']} | {took:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
