"""How well the per-layer table predicts a pruned model's latency, with and without the
weightless nodes (issue 17): activations, pools, concats and norms timed at the plan's shapes
besides the Conv/Gemm/MatMul layers.

For each zoo model (TorchScript export, the zoo's 64×64 inputs; random weights, L2, uniform
ratio, ``round_to`` 16) the plan's predicted latency share is compared with the pruned model's
measured share (fastest of 1 s of runs, ORT CPU, 1 thread). Run from the repository root::

    python -m benchmarks.latency_prediction [--models mobilenet_v2 densenet121] [--ratios 0.3 0.5]
"""

from __future__ import annotations

import argparse

import onnxprune
from benchmarks.common import machine
from onnxprune.allocation.latency import LatencyPredictor
from onnxprune.pipeline.analyze import analyze_model
from onnxprune.pipeline.latency_cost import PlanLatency
from onnxprune.pipeline.plan import plan_for

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "vit_b_16")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5])
    args = parser.parse_args(argv)
    from models import zoo

    print(machine())
    print(f"Command: `python -m benchmarks.latency_prediction --models {' '.join(args.models)}"
          f" --ratios {' '.join(map(str, args.ratios))}`")
    print("| model | ratio | measured | predicted, layers with weights only | error | "
          "predicted, weightless nodes too | error |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        a = analyze_model(str(zoo.ensure(name, "torchscript")))
        priced = {streams: PlanLatency(a, LatencyPredictor(a.model, streams=streams))
                  for streams in (False, True)}
        for ratio in args.ratios:
            removed = plan_for(a, ratio, 16).removed
            pruned, _ = onnxprune.prune(a.model, ratio=ratio, round_to=16, verify=False)
            predictor = priced[True].predictor
            measured = predictor.measure(pruned) / predictor.dense
            cells = []
            for streams in (False, True):
                predicted = priced[streams].fraction_of(removed)
                cells += [f"{predicted:.3f}", f"{predicted - measured:+.3f}"]
            print(f"| {name} | {ratio} | {measured:.3f} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
