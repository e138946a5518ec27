"""The linear layers that read pruned channels, seen as y = W·x + b over their input channels.

Compensation re-fits such a layer after some of its inputs are removed. Every layer is brought
to one layout, W [out, in, k] (k: kernel positions, 1 for Gemm/MatMul), and written back in its
own. The bias that absorbs a correction is the layer's own, the constant of an Add right after
a MatMul, or the running mean of a BatchNormalization right after a bias-free Conv.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..groups import Analysis, ParamUse


@dataclass
class Consumer:
    use: ParamUse                   # the weight, read along its input channels
    node: int
    input_name: str                 # the tensor it reads
    weight: np.ndarray              # [out, in, k]
    layout: str                     # "conv", "gemm", "gemm_t", "matmul"
    shape: tuple                    # the weight's own shape
    bias: tuple | None              # (node index, input index, sign) or None
    window: tuple | None = None     # a 2-D conv's (kernel, strides, pads, dilations)

    @property
    def pointwise(self) -> bool:
        return self.weight.shape[2] == 1

    def write(self, std: np.ndarray) -> np.ndarray:
        """A [out, in, k] weight back in the layer's own layout."""
        if self.layout == "conv":
            return std.reshape(self.shape)
        w = std[:, :, 0]
        return {"gemm": w.T, "gemm_t": w, "matmul": w.T}[self.layout]


def find_consumers(analysis: Analysis) -> list[Consumer]:
    """Dense Conv (group 1), Gemm and MatMul-with-weight layers that read tracked channels
    laid out as one axis. Others (grouped convs, transposed convs) are not compensated."""
    graph = analysis.graph
    out = []
    for use in analysis.params:
        node = graph.nodes[use.node]
        if not use.consume or use.input_index != 1 or use.labels.ndim != 1:
            continue
        cmap = analysis.map(node.input(0))
        weight = graph.const(node.input(1))
        if cmap is None or cmap.labels.shape != use.labels.shape or weight is None:
            continue
        if node.op == "Conv" and int(node.attr("group", 1)) == 1:
            std, layout = weight.reshape(weight.shape[0], weight.shape[1], -1), "conv"
        elif node.op == "Gemm" and not int(node.attr("transA", 0)):
            layout = "gemm_t" if int(node.attr("transB", 0)) else "gemm"
            std = (weight if layout == "gemm_t" else weight.T)[:, :, None]
        elif node.op == "MatMul" and weight.ndim == 2:
            std, layout = weight.T[:, :, None], "matmul"
        else:
            continue
        if std.shape[1] != use.labels.size:
            continue
        window = _window(node, weight) if layout == "conv" and std.shape[2] > 1 else None
        out.append(Consumer(use, node.index, node.input(0), std.astype(np.float64), layout,
                            weight.shape, _bias_of(analysis, node, std.shape[0]), window))
    return out


def _window(node, weight):
    """A 2-D conv's unfolding parameters, or None (auto_pad other than NOTSET/VALID, or not
    2-D): such a layer gets no patch Gram."""
    if weight.ndim != 4 or node.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET",
                                                                     b"VALID", "VALID"):
        return None
    kernel = tuple(weight.shape[2:])
    strides = tuple(node.attr("strides", [1, 1]))
    dilations = tuple(node.attr("dilations", [1, 1]))
    pads = tuple(node.attr("pads", [0, 0, 0, 0]))
    return kernel, strides, pads, dilations


def _bias_of(analysis: Analysis, node, out_features: int):
    graph = analysis.graph

    def vector(name):
        value = graph.const(name)
        return value is not None and value.size == out_features and (
            value.ndim == 1 or value.shape[-1] == out_features)

    if node.op in ("Conv", "Gemm") and node.input(2) and vector(node.input(2)):
        if node.op == "Conv" or graph.const(node.input(2)).ndim == 1:
            return node.index, 2, 1.0
    readers = graph.consumers.get(node.proto.output[0], [])
    if len(readers) != 1:
        return None
    nxt = readers[0]
    if node.op == "MatMul" and nxt.op == "Add":
        other = 1 if nxt.input(0) == node.proto.output[0] else 0
        if vector(nxt.input(other)):
            return nxt.index, other, 1.0
    if node.op == "Conv" and not node.input(2) and nxt.op == "BatchNormalization" \
            and vector(nxt.input(3)):
        return nxt.index, 3, -1.0     # BN(y + d) = BN with running mean − d
    return None
