"""Fusing a little task data with data-free synthetic inputs (weighted calibration sets).

The digits CNN pruned with OBS scoring and compensation to 25% of its MACs, calibrated on: a
few real images alone, BN-matched synthetic inputs alone (OBSPA's data), and the two fused with
several weights (``--calib task.npz@W --calib synthetic@(1-W)``). Accuracy on the test split,
no fine-tuning. Run from the repository root::

    python -m benchmarks.bench_calib_mix [--task 8 16 32] [--macs 0.25]
"""

from __future__ import annotations

import argparse
from importlib import resources

import onnxprune
from benchmarks.common import machine
from models.digits_cnn import accuracy, load_split
from onnxprune.calibration import CalibSource

WEIGHTS = (1.0, 0.7, 0.5, 0.3, 0.0)     # the task set's share; synthetic gets the rest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", type=int, nargs="+", default=[8, 16, 32],
                        help="numbers of real training images in the task set")
    parser.add_argument("--macs", type=float, default=0.25)
    args = parser.parse_args(argv)
    model = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))
    x_train, _, x_test, y_test = load_split()
    print(machine())
    print(f"digits CNN, --criterion obs (OBS compensation), MACs ≤ {args.macs:.0%}, round_to 1")
    print("| task images | " + " | ".join(f"task weight {w:g}" for w in WEIGHTS) + " |")
    print("|---|" + "---|" * len(WEIGHTS))
    for count in args.task:
        task = [{"input": x_train[:count]}]
        cells = []
        for weight in WEIGHTS:
            sources = [CalibSource(data, w) for data, w in
                       ((task, weight), ("synthetic", 1.0 - weight)) if w > 0]
            pruned, report = onnxprune.prune(model, target_macs=args.macs, round_to=1,
                                             strategy=onnxprune.Strategy("obs"), calib=sources)
            assert report["check"]["ok"]
            cells.append(f"{accuracy(pruned, x_test, y_test):.3f}")
        print(f"| {count} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
