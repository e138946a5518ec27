"""Why a pruned QDQ model is compared with its masked original at basic optimizations.

The bundled digits CNN is quantized by ONNX Runtime (static, QDQ, int8 weights per channel,
uint8 activations, 8 random calibration batches), pruned at ``--ratio``, and its masked
original built (``onnxprune.pipeline.masked_original``). Both run on the same random inputs at
each ONNX Runtime graph optimization level; the table gives their largest relative output
difference, and how far each model's own output moves from what it gives at basic
optimizations (where the quantize ops run as written). Run from the repository root::

    python -m benchmarks.quantized_rounding [--ratio 0.5] [--round-to 16]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import onnxruntime as ort

from benchmarks.common import machine
from onnxprune.pipeline import analyze_model, masked_original
from onnxprune.runtime import make_inputs, session
from onnxprune.verify import relative_error
from tests.quantized_digits import quantized_digits

LEVELS = ["ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=16)
    args = parser.parse_args(argv)
    print(machine())
    print(f"Command: `python -m benchmarks.quantized_rounding --ratio {args.ratio:g} "
          f"--round-to {args.round_to}`")
    with tempfile.TemporaryDirectory() as tmp:
        model = quantized_digits(Path(tmp), "QDQ", per_channel=True)
    pruned, masked = masked_original(analyze_model(model), ratio=args.ratio,
                                     round_to=args.round_to)
    feeds = make_inputs(model, {"input": (64, 1, 8, 8)}, seed=0)
    basic = {name: session(m, level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC).run(
        None, feeds)[0] for name, m in (("model", model), ("pruned", pruned))}
    print("| graph optimizations | pruned vs masked original | unpruned model vs itself at "
          "basic | pruned model vs itself at basic |")
    print("|---|---|---|---|")
    for name in LEVELS:
        level = getattr(ort.GraphOptimizationLevel, name)
        got = session(pruned, level=level).run(None, feeds)[0]
        want = session(masked, level=level).run(None, feeds)[0]
        dense = session(model, level=level).run(None, feeds)[0]
        print(f"| {name} | {relative_error(got, want):.2e} "
              f"| {relative_error(dense, basic['model']):.2e} "
              f"| {relative_error(got, basic['pruned']):.2e} |")
    print("(max relative error of the logits over 64 random inputs)")


if __name__ == "__main__":
    main()
