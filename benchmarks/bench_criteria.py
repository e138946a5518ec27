"""Accuracy of the bundled digits CNN (trained, BN kept) pruned without fine-tuning: criteria ×
compensation × allocation × ratio, against the random baseline.

The metric is top-1 accuracy on the test split of scikit-learn's digits (540 images); the
model is the one ``onnxprune demo`` prunes. "calibration" is the first 128 images of the
training split; "random" is 32 seeded random inputs; "synthetic" is the same inputs with every
BatchNorm's input matched to its running statistics (no data: OBSPA's default). Every
pruned model is verified against its masked original. Random is averaged over 5 seeds
(min–max shown). Run from the repository root::

    python -m benchmarks.bench_criteria [--ratios 0.3 0.5 0.7] [--round-to 1]
"""

from __future__ import annotations

import argparse
from importlib import resources

import numpy as np

import onnxprune
from benchmarks.common import machine
from models.digits_cnn import accuracy, load_split

RANDOM_SEEDS = 5
CALIB_SAMPLES = 128
# (criterion, compensation, allocation, data): data is None, "calibration", "random" or
# "synthetic".
CONFIGS = [
    ("random", "none", "uniform", None), ("random", "none", "global", None),
    ("l1", "none", "uniform", None), ("l1", "none", "global", None),
    ("l2", "none", "uniform", None), ("l2", "none", "global", None),
    ("bn_scale", "none", "uniform", None), ("bn_scale", "none", "global", None),
    ("fpgm", "none", "uniform", None),
    ("activation", "none", "uniform", "calibration"), ("apoz", "none", "uniform", "calibration"),
    ("wanda", "none", "uniform", "calibration"), ("wanda", "none", "global", "calibration"),
    ("l2", "bias", "uniform", "calibration"), ("l2", "obs", "uniform", "calibration"),
    ("wanda", "obs", "uniform", "calibration"),
    ("obs", "obs", "uniform", "calibration"), ("obs", "obs", "global", "calibration"),
    ("obspa", "obs", "uniform", "random"),
    ("l2", "obs", "uniform", "synthetic"),
    ("obspa", "obs", "uniform", "synthetic"), ("obspa", "obs", "global", "synthetic"),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--round-to", type=int, default=1)
    args = parser.parse_args(argv)
    model = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
    x_train, _, x_test, y_test = load_split()
    calib = [{"input": x_train[i:i + 32]} for i in range(0, CALIB_SAMPLES, 32)]
    print(machine())
    print(f"dense accuracy {accuracy(model, x_test, y_test):.4f}; round_to {args.round_to}")
    print("| criterion | compensation | allocation | data | "
          + " | ".join(f"ratio {r}" for r in args.ratios) + " |")
    print("|---|---|---|---|" + "---|" * len(args.ratios))
    for name, compensation, allocation, data in CONFIGS:
        cells = []
        for ratio in args.ratios:
            accs, macs = [], []
            for seed in range(RANDOM_SEEDS) if name == "random" else [0]:
                strategy = onnxprune.Strategy(name, allocation=allocation, seed=seed,
                                              compensate=compensation)
                source = calib if data == "calibration" else data
                pruned, report = onnxprune.prune(model, ratio=ratio, round_to=args.round_to,
                                                 strategy=strategy, calib=source)
                assert report["check"]["ok"]
                accs.append(accuracy(pruned, x_test, y_test))
                macs.append(report["macs"]["after"] / report["macs"]["before"])
            cell = f"{np.mean(accs):.3f}"
            if len(accs) > 1:
                cell += f" ({min(accs):.3f}–{max(accs):.3f})"
            cells.append(f"{cell} (MACs {np.mean(macs):.0%})")
        print(f"| {name} | {compensation} | {allocation} | {data or 'none'} | "
              + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
