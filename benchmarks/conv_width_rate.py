"""How fast ORT CPU runs a conv per MAC as its output channels shrink: why a pruned model's
latency can fall slower than its MACs even where every layer is on the blocked (NCHWc) kernels.

Each conv (3×3 or 1×1, with its Relu, as in the models) is timed alone at several output widths
for a fixed input (one thread, fastest run of ``--budget`` seconds), and reported as GMAC/s.
DenseNet-121's 3×3 convs (128 → 32 channels, 56×56 and 28×28) are the default shapes: a
uniform ratio of 0.5 with ``--round-to 16`` leaves them 64 → 16. Run from the repository root::

    python -m benchmarks.conv_width_rate [--budget 1.0]
"""

from __future__ import annotations

import argparse

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import machine
from onnxprune.runtime import measure_latency
from onnxprune.runtime.hardware import cpu_flags

# (kernel, spatial size, input channels): DenseNet-121's growth convs, dense and pruned
SHAPES = ((3, 56, 128), (3, 56, 64), (3, 28, 64), (1, 56, 64))
OUTPUTS = (8, 16, 24, 32, 48, 64)


def conv_model(kernel: int, size: int, c_in: int, c_out: int) -> onnx.ModelProto:
    """One Conv (same padding, bias) followed by Relu, random weights."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((c_out, c_in, kernel, kernel)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[kernel // 2] * 4),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                      [1, c_in, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c_out, size, size])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def conv_macs(kernel: int, size: int, c_in: int, c_out: int) -> int:
    """Multiply-accumulates of ``conv_model``'s conv."""
    return c_in * c_out * kernel * kernel * size * size


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per conv")
    args = parser.parse_args(argv)
    block = 16 if "avx512f" in cpu_flags() else 8
    print(machine(), f"(NCHWc block: {block} channels)")
    print(f"Command: `python -m benchmarks.conv_width_rate --budget {args.budget:g}`")
    print("ORT CPU, 1 thread, fastest run; GMAC/s by output channels")
    print("| conv | " + " | ".join(f"{c} out" for c in OUTPUTS) + " |")
    print("|---|" + "---|" * len(OUTPUTS))
    for kernel, size, c_in in SHAPES:
        rates = []
        for c_out in OUTPUTS:
            seconds = measure_latency(conv_model(kernel, size, c_in, c_out), threads=1,
                                      budget_s=args.budget).min
            rates.append(conv_macs(kernel, size, c_in, c_out) / seconds / 1e9)
        print(f"| {kernel}×{kernel}, {c_in} in, {size}×{size} | "
              + " | ".join(f"{r:.1f}" for r in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
