"""Synthetic calibration without data: random inputs whose activations are pulled onto the
statistics the model learned.

Random inputs give activations with the wrong scale and offset at every layer. A model with
BatchNormalization remembers, per channel, the mean and variance its training data produced at
each BN's input. The *matched* probe inserts, before every BatchNormalization, a step that
standardizes the synthetic batch per channel and gives it the running mean and variance:
x' = (x − mean_batch) / std_batch · √running_var + running_mean. Downstream layers then see
activations whose per-channel statistics are the training ones, while the correlations between
channels (what OBS needs) come from the model's own weights. Only the probe changes; the model
that is pruned is the original.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import ModelGraph


def match_batchnorm_statistics(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` whose BatchNormalization inputs are re-standardized to their
    running statistics (NCHW-style, channels on axis 1); returns it and how many BNs it
    matched (0: the copy computes what the model computes)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = ModelGraph(out)
    nodes, matched = [], 0
    for ref in graph.nodes:
        proto = ref.proto
        if proto.op_type == "BatchNormalization" and proto.domain in ("", "ai.onnx"):
            mean, var = graph.const(ref.input(3)), graph.const(ref.input(4))
            rank = graph.rank(ref.input(0))
            if mean is not None and var is not None and mean.ndim == 1 and rank and rank >= 2:
                nodes.extend(_restandardize(out, ref, mean, var,
                                            float(ref.attr("epsilon", 1e-5)), rank))
                matched += 1
        nodes.append(proto)
    if matched:
        copies = [onnx.NodeProto() for _ in nodes]
        for c, n in zip(copies, nodes):
            c.CopyFrom(n)
        del out.graph.node[:]
        out.graph.node.extend(copies)
    return out, matched


def _restandardize(model, ref, mean, var, eps, rank):
    """Nodes computing the re-standardized BN input; rewires the BN to read it."""
    x = ref.input(0)
    tag = f"{ref.label}_synthetic"
    dtype = mean.dtype
    shape = (1, mean.size) + (1,) * (rank - 2)
    axes = [0] + list(range(2, rank))

    def const(name, value):
        value = np.asarray(value, dtype=dtype)
        value = value.reshape(shape) if value.size == mean.size else value
        model.graph.initializer.append(numpy_helper.from_array(value, f"{tag}_{name}"))
        return f"{tag}_{name}"

    def node(op, inputs, name, **attrs):
        return helper.make_node(op, inputs, [f"{tag}_{name}"], name=f"{tag}_{name}", **attrs)

    # Per-channel batch statistics over every axis but 1, via Reduce* with axes as an
    # attribute (opset < 18) or an input (opset >= 18).
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    axes_name = f"{tag}_axes"
    nodes = []

    def reduce_mean(inp, name):
        if opset >= 18:
            return node("ReduceMean", [inp, axes_name], name, keepdims=1)
        return node("ReduceMean", [inp], name, keepdims=1, axes=axes)

    if opset >= 18:
        model.graph.initializer.append(numpy_helper.from_array(
            np.array(axes, np.int64), axes_name))
    nodes.append(reduce_mean(x, "mean"))
    nodes.append(node("Sub", [x, f"{tag}_mean"], "centred"))
    nodes.append(node("Mul", [f"{tag}_centred", f"{tag}_centred"], "square"))
    nodes.append(reduce_mean(f"{tag}_square", "var"))
    nodes.append(node("Add", [f"{tag}_var", const("eps", eps)], "var_eps"))
    nodes.append(node("Sqrt", [f"{tag}_var_eps"], "std"))
    nodes.append(node("Div", [f"{tag}_centred", f"{tag}_std"], "standard"))
    nodes.append(node("Mul", [f"{tag}_standard", const("scale", np.sqrt(var + eps))], "scaled"))
    nodes.append(node("Add", [f"{tag}_scaled", const("shift", mean)], "matched"))
    ref.proto.input[0] = f"{tag}_matched"
    return nodes
