"""How well the per-layer table predicts a pruned model's latency (issue 17): with and without
the weightless nodes (activations, pools, concats and norms timed at the plan's shapes besides
the Conv/Gemm/MatMul layers), and with the dense model's unexplained time held fixed.

The table's timed nodes, each net of an empty run, sum to less than the whole model's time
where a model is made of microsecond layers: the session's own run, the untimed shape ops and
each node's dispatch do not shrink with the channels. "Proportional" scales the whole dense
time by the timed nodes' share (what the pruner has done so far); "fixed remainder" keeps the
dense time the nodes do not explain (``max(0, dense - sum)``) and scales only the rest.

``--entries fastest`` times each table entry as the fastest run of its window instead of the
window's median (the whole model is always given its fastest run); ``--entries median
fastest`` builds both tables for each model, back to back, and repeats that ``--turns`` times:
on a VM with bursts of load the difference between two runs can be larger than between the
two measures.

For each zoo model (TorchScript export, the zoo's 64×64 inputs; random weights, L2, uniform
ratio, ``round_to`` 16) and each real-weight model of ``benchmarks.quality`` (``--real``; its
own shapes, ``round_to`` 8), the plan's predicted latency share is compared with the pruned
model's measured share (fastest of 1 s of runs, ORT CPU, 1 thread). Run from the repository
root::

    python -m benchmarks.latency_prediction [--models mobilenet_v2 densenet121]
        [--real digits_folded yolov8n] [--ratios 0.3 0.5] [--entries median fastest]
        [--turns 2]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

import onnxprune
from benchmarks.common import machine
import onnxprune.runtime.layer_table as layer_table
from onnxprune.allocation.latency import LatencyPredictor
from onnxprune.pipeline.analyze import analyze_model
from onnxprune.pipeline.latency_cost import PlanLatency
from onnxprune.pipeline.plan import plan_for

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "vit_b_16")


@contextlib.contextmanager
def entries_by(how: str):
    """Table entries timed as their window's median (the table's own way) or fastest run."""
    real = layer_table.measure_latency

    def fastest(*args, **kwargs):
        timing = real(*args, **kwargs)
        return dataclasses.replace(timing, median=timing.min)
    if how == "fastest":
        layer_table.measure_latency = fastest
    try:
        yield
    finally:
        layer_table.measure_latency = real


def rows_for(name: str, path: str, shapes, round_to: int, ratios, errors: dict,
             entries=("median",), turns: int = 1) -> None:
    a = analyze_model(path)
    plans = {ratio: (plan_for(a, ratio, round_to).removed,
                     onnxprune.prune(a.model, ratio=ratio, round_to=round_to, verify=False,
                                     input_shapes=shapes)[0]) for ratio in ratios}
    for _ in range(turns):
        for how in entries:
            with entries_by(how):    # the plans' entries are timed as they are priced
                priced = {streams: PlanLatency(a, LatencyPredictor(a.model, shapes,
                                                                   streams=streams))
                          for streams in (False, True)}
                predictor = priced[True].predictor
                explained = predictor.dense_layers / predictor.dense
                remainder = max(0.0, predictor.dense - predictor.dense_layers)
                for ratio, (removed, pruned) in plans.items():
                    measured = predictor.measure(pruned) / predictor.dense
                    cells = []
                    for streams in (False, True):
                        predicted = priced[streams].fraction_of(removed)
                        cells += [f"{predicted:.3f}", f"{predicted - measured:+.3f}"]
                        errors.setdefault((how, "proportional", streams), []).append(
                            predicted - measured)
                    share = priced[True].fraction_of(removed)
                    fixed = ((remainder + share * predictor.dense_layers) /
                             (remainder + predictor.dense_layers))
                    errors.setdefault((how, "fixed remainder", True), []).append(fixed - measured)
                    cells += [f"{fixed:.3f}", f"{fixed - measured:+.3f}"]
                    print(f"| {name} | {how} | {predictor.dense * 1e3:.3f} | {explained:.2f} | "
                          f"{ratio} | {measured:.3f} | {' | '.join(cells)} |", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    parser.add_argument("--real", nargs="*", default=[],
                        help="real-weight models of benchmarks.quality (digits_folded, ...)")
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    parser.add_argument("--entries", nargs="+", choices=("median", "fastest"),
                        default=["median"], help="how each table entry's window is read")
    parser.add_argument("--turns", type=int, default=1)
    args = parser.parse_args(argv)
    from benchmarks.quality import tasks
    from models import zoo

    print(machine())
    print(f"Command: `python -m benchmarks.latency_prediction --models {' '.join(args.models)}"
          f" --real {' '.join(args.real)} --ratios {' '.join(map(str, args.ratios))}"
          f" --entries {' '.join(args.entries)} --turns {args.turns}`")
    print("| model | entries | dense ms | timed nodes' sum ÷ dense | ratio | measured | "
          "proportional, "
          "layers with weights only | error | proportional, weightless nodes too | error | "
          "fixed remainder, weightless nodes too | error |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    errors: dict = {}
    for name in args.models:
        rows_for(name, str(zoo.ensure(name, "torchscript")), None, 16, args.ratios, errors,
                 args.entries, args.turns)
    with tempfile.TemporaryDirectory() as folder:
        for task in tasks(args.real, Path(folder)):
            rows_for(task.name, task.path(), task.shapes, 8, args.ratios, errors,
                     args.entries, args.turns)
    for (entries, how, streams), found in errors.items():
        print(f"\nMean absolute error, entries by {entries}, {how}"
              f"{', weightless nodes too' if streams else ', layers with weights only'}: "
              f"{np.mean(np.abs(found)):.3f} (largest {max(found, key=abs):+.3f}, "
              f"{len(found)} predictions)")

if __name__ == "__main__":
    main()
