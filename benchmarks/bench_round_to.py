"""Which ``--round-to`` default? ORT CPU latency of models pruned at 50% with several roundings.

ORT's NCHWc convolutions block channels by 8 (AVX2) or 16 (AVX-512); odd counts fall back to
slower kernels. Each model is timed with all its pruned copies in one interleaved benchmark
(``onnxprune.evaluate.benchmark``: turns through every copy, so drift falls on all alike),
``--repeats`` times over. Run from the repository root (about 10 minutes with the exports)::

    python -m benchmarks.bench_round_to [--models resnet50 mobilenet_v2] [--repeats 2]
"""

from __future__ import annotations

import argparse

import onnxprune
from benchmarks.common import machine, torchvision_at
from onnxprune.evaluate import BenchOptions, benchmark
from onnxprune.io import load_model
from onnxprune.runtime.hardware import cpu_flags, round_to_for

MODELS = ["resnet50", "mobilenet_v2", "efficientnet_b0", "regnet_y_400mf", "densenet121"]
ROUNDINGS = [1, 4, 8, 16]
SIZE = (1, 3, 224, 224)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=float, default=2.0, help="seconds a copy, a repeat")
    args = parser.parse_args(argv)
    isa = "AVX-512" if "avx512f" in cpu_flags() else "AVX2" if "avx2" in cpu_flags() else "other"
    print(machine(), f"({isa}: --round-to auto picks {round_to_for('cpu')})")
    print(f"Command: `python -m benchmarks.bench_round_to --models {' '.join(args.models)} "
          f"--repeats {args.repeats} --budget {args.budget:g}`")
    print(f"input {SIZE}, ORT CPU 1 thread, ORT_ENABLE_ALL, ratio 0.5; median ms "
          f"(speedup / MAC reduction), one row per repeat")
    print("| model | dense | " + " | ".join(f"round-to {r}" for r in ROUNDINGS) + " | fastest |")
    print("|---|---|" + "---|" * (len(ROUNDINGS) + 1))
    for name in args.models:
        model = load_model(torchvision_at(name, SIZE[-1]))
        shapes = {model.graph.input[0].name: SIZE}
        copies, mac_ratios = [model], []
        for r in ROUNDINGS:
            pruned, report = onnxprune.prune(model, ratio=0.5, round_to=r, input_shapes=shapes,
                                             verify=False)
            copies.append(pruned)
            mac_ratios.append(report["macs"]["before"] / report["macs"]["after"])
        for _ in range(args.repeats):
            rows = benchmark(copies, (1,), BenchOptions(budget_s=args.budget), shapes)["rows"]
            ms = [row["median_s"] * 1e3 for row in rows]
            cells = [f"{m:.2f} ({ms[0] / m:.2f}× / {macs:.2f}×)"
                     for m, macs in zip(ms[1:], mac_ratios)]
            fastest = ROUNDINGS[min(range(len(ROUNDINGS)), key=lambda i: ms[i + 1])]
            print(f"| {name} | {ms[0]:.2f} | " + " | ".join(cells) + f" | {fastest} |",
                  flush=True)


if __name__ == "__main__":
    main()
