"""Parameters and multiply-accumulates, from static shapes at a concrete input size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..graph import ModelGraph
from ..graph.model_graph import NodeRef, skeleton
from ..io.normalize import all_graphs, subgraphs
from ..rules import counts_macs, rule_for
from .feeds import input_shapes, make_inputs
from .run import exposing, run_model


@dataclass
class Cost:
    params: int
    macs: int | None


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
           onnx.TensorProto.BFLOAT16)


# Integer weights that quantized ops read directly, by input index: dynamic quantization
# (ConvInteger, MatMulInteger, DynamicQuantizeLSTM), QOperator (QLinearConv, QLinearMatMul,
# QGemm) and 4-bit MatMulNBits (counted as its K × N weights, not its packed bytes).
_INTEGER_WEIGHTS = {"ConvInteger": (1,), "MatMulInteger": (1,), "DynamicQuantizeLSTM": (1, 2),
                    "QLinearConv": (3, 8), "QLinearMatMul": (3,), "QGemm": (3, 6),
                    "MatMulNBits": (1,)}


def _unpacked(node) -> int | None:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return int(attrs["K"]) * int(attrs["N"]) if "K" in attrs and "N" in attrs else None


def count_params(model: onnx.ModelProto) -> int:
    """Elements of every floating-point constant (initializers, Constant nodes, and weights
    filled by ConstantOfShape in structure-only models), of every integer constant a
    DequantizeLinear reads as data or zero point, and of the integer weights quantized ops
    read directly (``_INTEGER_WEIGHTS``): a quantized model's weights, in the main
    graph and in the bodies of control-flow nodes. Read from dims, not data. A constant only
    a Shape reads (tf2onnx keeps such copies of weights to size a Reshape) is no parameter."""
    graphs = list(all_graphs(model.graph))
    shape_only = _read_by_shape_only(graphs)
    tensors = [t for g in graphs for t in g.initializer if t.name not in shape_only] + [
        a.t for g in graphs for n in g.node if n.op_type == "Constant"
        and n.output[0] not in shape_only for a in n.attribute if a.name == "value"]
    quantized = counted_integers(graphs)
    packed = {n.input[1]: _unpacked(n) for g in graphs for n in g.node
              if n.op_type == "MatMulNBits" and len(n.input) > 1}
    total = sum(packed.get(t.name) or int(np.prod(t.dims, dtype=np.int64)) for t in tensors
                if t.data_type in _FLOATS or t.name in quantized)
    filled = [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    if filled:
        graph = ModelGraph(model, infer_shapes=False)
        for n in filled:
            value = graph.const(n.output[0])
            if value is not None and np.issubdtype(value.dtype, np.floating):
                total += int(value.size)
    return total


def _read_by_shape_only(graphs) -> set[str]:
    """Names that Shape nodes read and nothing else does (not a graph output either)."""
    readers: dict[str, set[str]] = {}
    for g in graphs:
        for n in g.node:
            for name in n.input:
                readers.setdefault(name, set()).add(n.op_type)
        for out in g.output:
            readers.setdefault(out.name, set()).add("output")
    return {name for name, ops in readers.items() if ops == {"Shape"}}


def counted_integers(graphs) -> set[str]:
    """Names of the integer constants that count as parameters in ``graphs``: what a
    DequantizeLinear reads as data or zero point, and the weights and biases quantized ops
    read directly (``_INTEGER_WEIGHTS``); not the zero points those ops read."""
    graphs = list(graphs)
    names = {name for g in graphs for n in g.node if n.op_type == "DequantizeLinear"
             for k, name in enumerate(n.input) if k in (0, 2) and name}
    names |= {n.input[k] for g in graphs for n in g.node
              for k in _INTEGER_WEIGHTS.get(n.op_type, ()) if k < len(n.input) and n.input[k]}
    return names


def count_macs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None) -> int | None:
    """MACs of every op whose rule counts them (see ``Rule.macs``) at the given (or default)
    input shapes."""
    per_node = node_macs(model, shapes)
    if per_node is None or any(m is None for m in per_node):
        return None
    return int(sum(per_node))


def node_macs(model: onnx.ModelProto, shapes=None) -> list[int | None] | None:
    """MACs of every node (0 for ops whose rule counts none), in graph order. An If, Loop or
    Scan whose bodies hold counted ops is unknown (None): how often a body runs is decided at
    run time, and a count without it would flatter the pruning."""
    return macs_and_shapes(model, shapes)[0]


def macs_and_shapes(model: onnx.ModelProto, shapes=None):
    """(``node_macs``, the value shapes they were counted at), or (None, None) when shape
    inference fails."""
    shape = value_shapes(model, shapes)
    if shape is None:
        return None, None
    nodes = model.graph.node
    inside = [_computes_inside(node) for node in nodes]
    macs = [None if inner else _node_macs(node, shape) for node, inner in zip(nodes, inside)]
    missing = [i for i, m in enumerate(macs) if m is None and not inside[i]]
    if missing:
        # Shape inference gave up somewhere (symbolic reshapes): measure the shapes instead.
        measure_node_shapes(model, shape, missing, shapes)
        macs = [m if m is not None or inner else _node_macs(node, shape)
                for node, m, inner in zip(nodes, macs, inside)]
    return macs, shape


def _computes_inside(node: onnx.NodeProto) -> bool:
    """Does a branch or body of ``node`` hold an op whose MACs are counted?"""
    return any(counts_macs(n) for sub in subgraphs(node) for g in all_graphs(sub)
               for n in g.node)


def value_shapes(model: onnx.ModelProto, shapes=None) -> dict[str, list[int | None]] | None:
    """Shapes of the graph's values (inputs, intermediates, outputs, initializers) at concrete
    input sizes, from shape inference on a weightless skeleton; None marks an unknown dim. None
    when inference fails. Shared by the MAC count and the per-layer latency table."""
    fixed = skeleton(model)
    concrete = input_shapes(model, shapes)
    initializers = {t.name for t in model.graph.initializer}
    del fixed.graph.value_info[:]
    for inp in fixed.graph.input:
        if inp.name in concrete and inp.name not in initializers:
            dims = inp.type.tensor_type.shape.dim
            for d, value in zip(dims, concrete[inp.name]):
                d.Clear()
                d.dim_value = int(value)
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001
        return None
    shape = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shape[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for t in inferred.graph.initializer:
        shape[t.name] = list(t.dims)
    return shape


def measure_node_shapes(model: onnx.ModelProto, shape: dict, node_indices, shapes=None) -> None:
    """Fill ``shape`` in place with the shapes of the given nodes' inputs and first output,
    measured by one ONNX Runtime run (for what inference could not resolve)."""
    nodes = model.graph.node
    stored = {t.name: list(t.dims) for t in model.graph.initializer}
    names = [name for i in node_indices
             for name in list(nodes[i].input) + list(nodes[i].output[:1]) if name]
    # A weight's shape is its declared dims: exposing it as an output would make ONNX Runtime
    # copy it out (every weight of a 1B decoder whose shapes inference lost: 4 GiB).
    shape.update({name: stored[name] for name in names if name in stored})
    names = [name for name in names if name not in stored]
    shape.update(_shapes_by_running(model, input_shapes(model, shapes), names))


def _shapes_by_running(model: onnx.ModelProto, concrete, names) -> dict[str, list[int]]:
    """Run the model once on ONNX Runtime with ``names`` exposed as extra outputs."""
    try:
        outputs = run_model(exposing(model, names), make_inputs(model, concrete))
    except Exception:  # noqa: BLE001 - MACs stay unknown
        return {}
    return {k: list(v.shape) for k, v in outputs.items()}


def _node_macs(node: onnx.NodeProto, shape: dict) -> int | None:
    rule = rule_for(node)
    if rule is None:
        return 0
    try:
        return rule.macs(NodeRef(-1, node), shape.get)
    except (IndexError, TypeError, ValueError):  # shapes of an unexpected rank: unknown
        return None


def count_cost(model: onnx.ModelProto, shapes=None) -> Cost:
    return Cost(count_params(model), count_macs(model, shapes))
