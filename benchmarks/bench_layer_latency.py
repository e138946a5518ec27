"""Per-layer latency of ResNet-50 on ORT CPU at 100/75/50/25% channel widths.

Shows what ``LayerLatencyTable`` predicts for a handful of layers (each timed alone, one node,
random weights) next to the whole model's measured latency. Single-op timings are relative
costs: the whole model fuses Conv+Relu/Add and keeps the NCHWc layout between convs, so the
table's sum is not the model's latency. Run from the repository root::

    python -m benchmarks.bench_layer_latency --threads 1
"""

from __future__ import annotations

import argparse
import time

import onnx

from benchmarks.common import machine, torchvision_at
from onnxprune.runtime import LayerLatencyTable, measure_latency

WIDTHS = (1.0, 0.75, 0.5, 0.25)
ROUND = 16


def narrowed(channels: int, fraction: float) -> int:
    """``fraction`` of ``channels`` rounded to a multiple of 16 (at least 16); a width under
    16 (the RGB input) is left alone."""
    if channels < ROUND:
        return channels
    return max(ROUND, round(channels * fraction / ROUND) * ROUND)


def widths_at(model: onnx.ModelProto, index: int, dense: tuple[int, int], fraction: float):
    """(c_in, c_out) at ``fraction``; a graph input or output keeps its width (the image's
    channels and the class count are not prunable)."""
    node = model.graph.node[index]
    outputs = {o.name for o in model.graph.output}
    c_in, c_out = dense
    return narrowed(c_in, fraction), (c_out if node.output[0] in outputs else
                                      narrowed(c_out, fraction))


def describe(model: onnx.ModelProto, index: int) -> str:
    node = model.graph.node[index]
    kernel = next((list(a.ints) for a in node.attribute if a.name == "kernel_shape"), None)
    k = f" k{kernel[0]}" if kernel else ""
    stride = next((a.ints[0] for a in node.attribute if a.name == "strides"), 1)
    s = f"/s{stride}" if stride != 1 else ""
    return f"{index:>3} {node.op_type}{k}{s} {node.name[-28:]}"


def pick(table: LayerLatencyTable, count: int) -> list[int]:
    """``count`` layers spread over the depth, the first and last included."""
    indices = sorted(table.layers())
    step = max(1, (len(indices) - 1) / max(1, count - 1))
    return sorted({indices[min(len(indices) - 1, round(k * step))] for k in range(count)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--budget", type=float, default=0.05, help="seconds per layer timing")
    parser.add_argument("--layers", type=int, default=8, help="how many layers to print")
    args = parser.parse_args()

    model = onnx.load(torchvision_at("resnet50", args.size))
    shapes = {model.graph.input[0].name: (1, 3, args.size, args.size)}
    print(machine())
    print(f"ResNet-50 (torchvision, random weights, TorchScript export, BN folded), input "
          f"{shapes[model.graph.input[0].name]}, {args.threads} thread(s), ORT_ENABLE_ALL")
    start = time.perf_counter()
    table = LayerLatencyTable(model, input_shapes=shapes, threads=args.threads,
                              budget_s=args.budget)
    print(f"{len(table.layers())} layers; per-layer median ms alone, (c_in, c_out) rounded to "
          f"{ROUND}")
    print(f"{'layer':<42}" + "".join(f"{f'{w:.0%}':>22}" for w in WIDTHS))
    for i in pick(table, args.layers):
        cells = []
        for w in WIDTHS:
            c_in, c_out = widths_at(model, i, table.layers()[i], w)
            cells.append(f"{table.latency(i, c_in, c_out) * 1e3:8.3f} ({c_in:>4},{c_out:>4})")
        print(f"{describe(model, i):<42}" + "".join(f"{c:>22}" for c in cells))
    totals = []
    for w in WIDTHS:
        totals.append(sum(table.latency(i, *widths_at(model, i, dense, w))
                          for i, dense in table.layers().items()))
    print(f"{'sum of all layers (each width uniform)':<42}"
          + "".join(f"{t * 1e3:>13.2f} ({t / totals[0]:.2f})" for t in totals))
    print(f"table: {table.measurements} distinct measurements in "
          f"{time.perf_counter() - start:.1f} s")
    whole = measure_latency(model, threads=args.threads, input_shapes=shapes, budget_s=2.0)
    print(f"whole model: median {whole.median * 1e3:.2f} ms, p90 {whole.p90 * 1e3:.2f} ms, "
          f"min {whole.min * 1e3:.2f} ms over {whole.runs} runs; dense layer sum "
          f"{table.dense_total() * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
