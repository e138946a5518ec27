"""Data-free statistics on models with and without BatchNorm nodes (issue 15): the digits CNN
trained once and exported twice, BN folded into the convs (as most exports are) and BN kept,
pruned to equal MAC budgets with no data (l2; obspa on N(0, 1) noise, BN-matched where BN
exists; obspa and l2+OBS on dead-leaves images; sequential reconstruction on them) and, for
reference, with 32 real unlabeled training images (obs, and sequential reconstruction).
Metric: test accuracy, no fine-tuning, ``round_to=1``. Run from the
repository root::

    python -m benchmarks.data_free
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxprune
from benchmarks.common import machine
from models.digits_cnn import accuracy, export, load_split, train

S = onnxprune.Strategy
CONFIGS = [("l2", {}, "none"),
           ("obspa", {"strategy": S("obspa")}, "synthetic"),
           ("obspa", {"strategy": S("obspa"), "calib": "natural"}, "natural"),
           ("l2 + obs", {"strategy": S("l2", compensate="obs"), "calib": "natural"}, "natural"),
           ("l2 + sequential", {"strategy": S("l2", compensate="sequential"),
                                "calib": "natural"}, "natural"),
           ("obspa + sequential", {"strategy": S("obspa", compensate="sequential"),
                                   "calib": "natural"}, "natural"),
           ("obs", {"strategy": S("obs")}, "32 real"),
           ("obs + sequential", {"strategy": S("obs", compensate="sequential")}, "32 real"),
           ("l2 + sequential", {"strategy": S("l2", compensate="sequential")}, "32 real")]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--macs", type=float, nargs="+", default=[0.5, 0.25])
    args = parser.parse_args(argv)
    x_train, _, x_test, y_test = load_split()
    real = [{"input": x_train[i:i + 1]} for i in range(32)]
    model = train()
    print(machine())
    print("| BatchNorm | criterion | data | " + " | ".join(f"MACs ≤ {m:.0%}" for m in args.macs)
          + " |")
    print("|---|---|---|" + "---|" * len(args.macs))
    with tempfile.TemporaryDirectory() as folder:
        for keep_bn in (False, True):
            path = Path(folder) / f"digits{'_bn' if keep_bn else ''}.onnx"
            export(model, path, keep_bn=keep_bn)
            bn = "kept" if keep_bn else "folded"
            print(f"| {bn} | dense | - | {accuracy(str(path), x_test, y_test):.3f} |")
            for name, options, data in CONFIGS:
                calib = {"calib": real} if data == "32 real" else {}
                cells = [accuracy(onnxprune.prune(str(path), target_macs=m, round_to=1,
                                                  **options, **calib)[0], x_test, y_test)
                         for m in args.macs]
                print(f"| {bn} | {name} | {data} | " + " | ".join(f"{c:.3f}" for c in cells)
                      + " |", flush=True)


if __name__ == "__main__":
    main()
