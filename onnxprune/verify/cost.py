"""Parameters and multiply-accumulates, from static shapes at a concrete input size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..io.normalize import all_graphs, subgraphs
from .checks import input_shapes


@dataclass
class Cost:
    params: int
    macs: int | None


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
           onnx.TensorProto.BFLOAT16)


def count_params(model: onnx.ModelProto) -> int:
    """Elements of every floating-point constant (initializers, Constant nodes, and weights
    filled by ConstantOfShape in structure-only models) and of every integer constant a
    DequantizeLinear reads as data or zero point (a quantized model's weights), in the main
    graph and in the bodies of control-flow nodes. Read from dims, not data."""
    graphs = list(all_graphs(model.graph))
    tensors = [t for g in graphs for t in g.initializer] + [
        a.t for g in graphs for n in g.node if n.op_type == "Constant" for a in n.attribute
        if a.name == "value"]
    quantized = {name for g in graphs for n in g.node if n.op_type == "DequantizeLinear"
                 for k, name in enumerate(n.input) if k in (0, 2) and name}
    total = sum(int(np.prod(t.dims, dtype=np.int64)) for t in tensors
                if t.data_type in _FLOATS or t.name in quantized)
    filled = [n for n in model.graph.node if n.op_type == "ConstantOfShape"]
    if filled:
        from ..graph import ModelGraph

        graph = ModelGraph(model, infer_shapes=False)
        for n in filled:
            value = graph.const(n.output[0])
            if value is not None and np.issubdtype(value.dtype, np.floating):
                total += int(value.size)
    return total


def count_macs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None) -> int | None:
    """MACs of Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU and RNN at the given (or default)
    input shapes."""
    per_node = node_macs(model, shapes)
    if per_node is None or any(m is None for m in per_node):
        return None
    return int(sum(per_node))


def node_macs(model: onnx.ModelProto, shapes=None) -> list[int | None] | None:
    """MACs of every node (0 for ops that are not Conv/Gemm/MatMul/recurrent), in graph
    order. An If, Loop or Scan whose bodies hold such ops is unknown (None): how often a body
    runs is decided at run time, and a count without it would flatter the pruning."""
    shape = value_shapes(model, shapes)
    if shape is None:
        return None
    nodes = model.graph.node
    inside = [_computes_inside(node) for node in nodes]
    macs = [None if inner else _node_macs(node, shape) for node, inner in zip(nodes, inside)]
    missing = [i for i, m in enumerate(macs) if m is None and not inside[i]]
    if missing:
        # Shape inference gave up somewhere (symbolic reshapes): measure the shapes instead.
        measure_node_shapes(model, shape, missing, shapes)
        macs = [m if m is not None or inner else _node_macs(node, shape)
                for node, m, inner in zip(nodes, macs, inside)]
    return macs


def _computes_inside(node: onnx.NodeProto) -> bool:
    """Does a branch or body of ``node`` hold an op whose MACs are counted?"""
    counted = {"Conv", "ConvTranspose", "Gemm", "MatMul", *RECURRENT}
    return any(n.op_type in counted for sub in subgraphs(node) for g in all_graphs(sub)
               for n in g.node)


def value_shapes(model: onnx.ModelProto, shapes=None) -> dict[str, list[int | None]] | None:
    """Shapes of the graph's values (inputs, intermediates, outputs, initializers) at concrete
    input sizes, from shape inference on a weightless skeleton; None marks an unknown dim. None
    when inference fails. Shared by the MAC count and the per-layer latency table."""
    from ..graph.model_graph import skeleton

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
    """Fill ``shape`` in place with the shapes of the given nodes' first two inputs (both
    operands of an attention MatMul are activations) and first output, measured by one ONNX
    Runtime run (for what inference could not resolve)."""
    nodes = model.graph.node
    names = [name for i in node_indices
             for name in list(nodes[i].input[:2]) + list(nodes[i].output[:1]) if name]
    shape.update(_shapes_by_running(model, input_shapes(model, shapes), names))


def _shapes_by_running(model: onnx.ModelProto, concrete, names) -> dict[str, list[int]]:
    """Run the model once on ONNX Runtime with ``names`` exposed as extra outputs."""
    from .checks import make_inputs, run_model

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in declared:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    try:
        outputs = run_model(probe, make_inputs(model, concrete))
    except Exception:  # noqa: BLE001 - MACs stay unknown
        return {}
    return {k: list(v.shape) for k, v in outputs.items()}


def _node_macs(node, shape) -> int | None:
    try:
        return _node_macs_or_raise(node, shape)
    except (IndexError, TypeError):  # shapes of an unexpected rank: unknown, not a crash
        return None


def _node_macs_or_raise(node, shape) -> int | None:
    op = node.op_type
    if op in RECURRENT:
        return _recurrent_macs(node, shape)
    if op not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
        return 0
    ins = [shape.get(n) for n in node.input[:2]]
    out = shape.get(node.output[0])
    if out is None or any(s is None for s in ins) or None in out or any(None in s for s in ins):
        return None
    if op == "Conv":
        w = ins[1]
        return int(np.prod(out, dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "ConvTranspose":
        w = ins[1]
        return int(np.prod(ins[0], dtype=np.int64) * np.prod(w[1:], dtype=np.int64))
    if op == "Gemm":
        trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
        k = ins[0][0] if trans_a else ins[0][1]
        return int(np.prod(out, dtype=np.int64) * k)
    k = ins[0][-1] if len(ins[0]) > 1 else ins[0][0]
    return int(np.prod(out, dtype=np.int64) * k)


RECURRENT = ("LSTM", "GRU", "RNN")


def _recurrent_macs(node, shape) -> int | None:
    """Every step, for every sequence in the batch, each direction multiplies its input by W
    and its previous hidden state by R: steps × batch × (|W| + |R|) in either layout."""
    x, w, r = (shape.get(n) for n in node.input[:3])
    if any(s is None or None in s for s in (x, w, r)):
        return None
    return int(np.prod(x[:2], dtype=np.int64) * (np.prod(w, dtype=np.int64) +
                                                  np.prod(r, dtype=np.int64)))


def count_cost(model: onnx.ModelProto, shapes=None) -> Cost:
    return Cost(count_params(model), count_macs(model, shapes))
