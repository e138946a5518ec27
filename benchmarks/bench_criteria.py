"""Accuracy of the bundled digits CNN (trained, BN kept) pruned without fine-tuning: criteria ×
compensation × allocation at equal MACs, against the random baseline.

Every configuration is pruned to the same MAC budgets (``--target-macs``: 50%, 25% and 10% of
the dense MACs kept), so uniform and global allocation are compared at equal cost. ``--sweep``
adds a table of group reduction × normalization for global allocation.

The metric is top-1 accuracy on the test split of scikit-learn's digits (540 images); the
model is the one ``onnxprune demo`` prunes. "calibration" is the first 128 images of the
training split; "random" is 32 seeded random inputs; "synthetic" is the same inputs with every
BatchNorm's input matched to its running statistics (no data: OBSPA's default). Adaptive
allocation measures each group's sensitivity on that data. Every
pruned model is verified against its masked original. Random is averaged over 5 seeds
(min–max shown). Run from the repository root::

    python -m benchmarks.bench_criteria [--macs 0.5 0.25 0.1] [--round-to 1] [--sweep]
        [--only taylor snip]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from importlib import resources

import numpy as np

import onnxprune
from benchmarks.common import machine
from models.digits_cnn import accuracy, load_split
from onnxprune.calibration import DAMPING
from onnxprune.importance import NORMALIZATIONS, REDUCTIONS

RANDOM_SEEDS = 5
CALIB_SAMPLES = 128
# (criterion, compensation, allocation, data): data is None, "calibration", "random" or
# "synthetic"; allocation "global/mac" is global with --rank-by score-per-mac, "…/3 steps" is
# iterative pruning in 3 steps.
CONFIGS = [
    ("random", "none", "uniform", None), ("random", "none", "global", None),
    ("l1", "none", "uniform", None), ("l1", "none", "global", None),
    ("l2", "none", "uniform", None), ("l2", "none", "global", None),
    ("l2", "none", "adaptive", "synthetic"),
    ("bn_scale", "none", "uniform", None), ("bn_scale", "none", "global", None),
    ("fpgm", "none", "uniform", None),
    ("activation", "none", "uniform", "calibration"), ("apoz", "none", "uniform", "calibration"),
    ("wanda", "none", "uniform", "calibration"), ("wanda", "none", "global", "calibration"),
    ("l2", "bias", "uniform", "calibration"), ("l2", "obs", "uniform", "calibration"),
    ("wanda", "obs", "uniform", "calibration"),
    ("obs", "obs", "uniform", "calibration"), ("obs", "obs", "global", "calibration"),
    ("obs", "obs", "adaptive", "calibration"),
    ("obspa", "obs", "uniform", "random"),
    ("l2", "obs", "uniform", "synthetic"),
    ("obspa", "obs", "uniform", "synthetic"), ("obspa", "obs", "global", "synthetic"),
    ("obspa", "obs", "adaptive", "synthetic"),
    ("synflow", "none", "uniform", None), ("synflow", "none", "global", None),
    ("taylor", "none", "uniform", "calibration"), ("taylor", "none", "global", "calibration"),
    ("snip", "none", "uniform", "calibration"), ("snip", "none", "global", "calibration"),
    ("taylor", "obs", "uniform", "calibration"),
    ("distortion", "none", "uniform", "calibration"),
    ("distortion", "none", "global", "calibration"),
    ("distortion", "obs", "uniform", "calibration"),
    ("l2", "none", "global/mac", None), ("wanda", "none", "global/mac", "calibration"),
    ("obs", "obs", "global/mac", "calibration"), ("obspa", "obs", "global/mac", "synthetic"),
    ("l2", "none", "uniform/3 steps", None), ("l2", "obs", "uniform/3 steps", "calibration"),
    ("obs", "obs", "uniform/3 steps", "calibration"),
    ("obspa", "obs", "uniform/3 steps", "synthetic"),
]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--macs", type=float, nargs="+", default=[0.5, 0.25, 0.1],
                        help="fractions of the dense MACs to keep")
    parser.add_argument("--round-to", type=int, default=1)
    parser.add_argument("--sweep", action="store_true",
                        help="also sweep group reduction × normalization (global allocation)")
    parser.add_argument("--damping", type=float, default=DAMPING, metavar="LAMBDA",
                        help="OBS damping of every configuration that compensates with obs")
    parser.add_argument("--only", nargs="+", metavar="CRITERION",
                        help="run only the configurations of these criteria")
    args = parser.parse_args(argv)
    model = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
    x_train, _, x_test, y_test = load_split()
    calib = [{"input": x_train[i:i + 32]} for i in range(0, CALIB_SAMPLES, 32)]
    print(machine())
    print(f"dense accuracy {accuracy(model, x_test, y_test):.4f}; round_to {args.round_to}; "
          f"obs damping {args.damping}")
    print("| criterion | compensation | allocation | data | "
          + " | ".join(f"MACs ≤ {m:.0%}" for m in args.macs) + " |")
    print("|---|---|---|---|" + "---|" * len(args.macs))
    for name, compensation, allocation, data in CONFIGS:
        if args.only and name not in args.only:
            continue
        seeds = range(RANDOM_SEEDS) if name == "random" else [0]
        how, *mods = allocation.split("/")
        steps = int(mods[0].removesuffix(" steps")) if mods and mods[0].endswith("steps") else 1
        strategy = _strategy(name, how, compensation, args.damping, "mac" in mods)
        cells = [_cell(model, x_test, y_test, target, args.round_to, calib if data ==
                       "calibration" else data, [(strategy, seed) for seed in seeds], steps)
                 for target in args.macs]
        print(f"| {name} | {compensation} | {allocation} | {data or 'none'} | "
              + " | ".join(cells) + " |", flush=True)
    if args.sweep:
        print()
        print("| criterion | reduction | normalization | "
              + " | ".join(f"MACs ≤ {m:.0%}" for m in args.macs) + " |")
        print("|---|---|---|" + "---|" * len(args.macs))
        for (name, data), reduction, normalization in itertools.product(
                [("l1", None), ("l2", None), ("wanda", "calibration")], REDUCTIONS,
                NORMALIZATIONS):
            cells = [_cell(model, x_test, y_test, target, args.round_to,
                           calib if data else None,
                           [(onnxprune.Strategy(name, reduction=reduction,
                                                normalization=normalization,
                                                allocation="global"), 0)])
                     for target in args.macs]
            print(f"| {name} | {reduction} | {normalization} | " + " | ".join(cells) + " |",
                  flush=True)


def _strategy(name, allocation, compensation, damping, per_mac: bool):
    """The strategy of one row; the damping only where OBS compensation reads it."""
    strategy = onnxprune.Strategy(name, allocation=allocation, compensate=compensation,
                                  rank_by="score-per-mac" if per_mac else "score")
    if strategy.compensation == "obs":
        strategy = dataclasses.replace(strategy, damping=damping)
    return strategy


def _cell(model, x_test, y_test, target, round_to, calib, strategies, steps=1) -> str:
    """Mean accuracy (min–max over several (strategy, seed) pairs) at one MAC budget."""
    accs, ratios = [], []
    for strategy, seed in strategies:
        pruned, report = onnxprune.prune(model, target_macs=target, round_to=round_to,
                                         strategy=strategy, calib=calib, steps=steps,
                                         seed=seed)
        assert report["check"]["ok"]
        accs.append(accuracy(pruned, x_test, y_test))
        ratios.append(report["target"]["ratio"])
    cell = f"{np.mean(accs):.3f}"
    if len(accs) > 1:
        cell += f" ({min(accs):.3f}–{max(accs):.3f})"
    if steps > 1:
        return f"{cell} (kept {report['target']['planned']:.0%})"
    return f"{cell} (ratio {np.mean(ratios):.2f})"


if __name__ == "__main__":
    main()
