"""Compensation on the zoo's BN-folded TorchScript exports (random weights, so the measure is
fidelity to the dense model, not a task): at ratio 0.3, the cosine of each sample's output to
the dense model's and the top-1 agreement, on 32 fresh dead-leaves images that calibration did
not see (calibration: 32 others). Rows: l2 with no re-fit; obspa with OBS compensation; obspa
and l2 with sequential reconstruction. Run from the repository root::

    python -m benchmarks.zoo_refit [resnet18 mobilenet_v2 resnet50]
"""

from __future__ import annotations

import argparse
import time

import onnxprune
from benchmarks.common import machine
from models import zoo
from onnxprune.calibration import load_calibration
from onnxprune.io import load_model
from onnxprune.pipeline.fidelity import fidelity_to_dense

S = onnxprune.Strategy
CONFIGS = [("l2", "none"), ("obspa", "obs"), ("obspa", "sequential"), ("l2", "sequential")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["resnet18", "mobilenet_v2", "resnet50"])
    parser.add_argument("--ratio", type=float, default=0.3)
    args = parser.parse_args(argv)
    print(machine())
    print("| model | criterion | compensation | cosine (mean / min) | top-1 agreement | "
          "prune time |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        path = str(zoo.ensure(name, "torchscript"))
        dense = load_model(path)
        fresh = load_calibration("natural", dense, seed=7)
        for criterion, compensation in CONFIGS:
            start = time.perf_counter()
            pruned, report = onnxprune.prune(
                path, ratio=args.ratio, calib="natural" if compensation != "none" else None,
                strategy=S(criterion, compensate=compensation))
            seconds = time.perf_counter() - start
            assert report["check"]["ok"]
            out = fidelity_to_dense(dense, pruned, fresh, "fresh natural").outputs[0]
            print(f"| {name} | {criterion} | {compensation} | {out['cosine_mean']:.3f} / "
                  f"{out['cosine_min']:.3f} | {out['top1_agreement']:.2f} | {seconds:.0f} s |",
                  flush=True)


if __name__ == "__main__":
    main()
