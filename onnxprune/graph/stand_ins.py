"""Standard ops that stand in for ONNX Runtime's quantized contrib ops during shape inference.

ONNX's shape inference knows no ``com.microsoft`` op, and ONNX Runtime's symbolic inference
stops at the QOperator ones (QLinearConcat, QLinearGlobalAveragePool, ...), so every value
after the first of them would have no shape. Each entry here writes the standard op whose
output has the same shape (QLinearConcat: a Concat of its X inputs), used on the inference
copy only; the model itself is never changed.

One standard op is restated too: ONNX Runtime's symbolic inference computes a ReduceProd of a
shape vector only in the form ``axes=[0], keepdims=0``, and tf2onnx writes the other form
(``keepdims=1``, no axes: the batch × heads of Keras's einsum attention); without the product
every later dim is an unknown symbol.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _inputs(*indices):
    return lambda node: [node.input[i] for i in indices if i < len(node.input)]


_STAND_INS = {
    "QLinearAdd": ("Add", _inputs(0, 3)),
    "QLinearMul": ("Mul", _inputs(0, 3)),
    "QLinearSigmoid": ("Identity", _inputs(0)),
    "QLinearLeakyRelu": ("Identity", _inputs(0)),
    "QLinearConcat": ("Concat", lambda node: list(node.input)[2::3]),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", _inputs(0)),
    "QLinearAveragePool": ("AveragePool", _inputs(0)),
    "QGemm": ("Gemm", _inputs(0, 3)),
}
_KEPT_ATTRIBUTES = {"axis", "transA", "transB", "kernel_shape", "strides", "pads",
                    "auto_pad", "ceil_mode", "count_include_pad", "dilations"}


def with_stand_ins(model: onnx.ModelProto) -> bool:
    """Replace, in place, every contrib op of ``_STAND_INS`` by its standard stand-in (for an
    inference copy). True when any was replaced."""
    replaced = False
    for index, node in enumerate(model.graph.node):
        entry = _STAND_INS.get(node.op_type) if node.domain == "com.microsoft" else None
        if entry is None or (node.op_type == "QLinearGlobalAveragePool" and any(
                a.name == "channels_last" and a.i for a in node.attribute)):
            continue
        op, inputs = entry
        stand_in = onnx.helper.make_node(op, inputs(node), list(node.output)[:1], name=node.name)
        stand_in.attribute.extend(a for a in node.attribute if a.name in _KEPT_ATTRIBUTES)
        model.graph.node[index].CopyFrom(stand_in)
        replaced = True
    return replaced


def with_computable_products(model: onnx.ModelProto) -> None:
    """Restate, in place, ``ReduceProd(v, keepdims=1)`` over a whole shape vector ``v`` (read
    from a Shape) as ``Unsqueeze(ReduceProd(v, axes=[0], keepdims=0), [0])``: the same [1]
    value in the form ONNX Runtime's symbolic inference evaluates."""
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    vectors = {t.name for t in graph.initializer if len(t.dims) == 1}
    nodes, axes = [], None
    for node in graph.node:
        if not (node.op_type == "ReduceProd" and len(node.input) == 1
                and not any(a.name == "axes" for a in node.attribute)
                and _reads_a_shape(node.input[0], producer, vectors)
                and all(a.i == 1 for a in node.attribute if a.name == "keepdims")):
            nodes.append(node)
            continue
        if axes is None:
            axes = f"{node.output[0]}__axis0"
            graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), axes))
        scalar = f"{node.output[0]}__scalar"
        kw = {} if opset >= 18 else {"axes": [0]}
        nodes.append(onnx.helper.make_node(
            "ReduceProd", [node.input[0]] + ([axes] if opset >= 18 else []), [scalar],
            keepdims=0, **kw))
        nodes.append(onnx.helper.make_node(
            "Unsqueeze", [scalar] + ([axes] if opset >= 13 else []), [node.output[0]],
            **({} if opset >= 13 else {"axes": [0]})))
    del graph.node[:]
    graph.node.extend(nodes)


def _reads_a_shape(name: str, producer: dict, vectors: set) -> bool:
    """Is ``name`` a 1-D shape vector: a Shape, or a Slice, Cast or Gather (of a constant
    index vector) of one?"""
    node = producer.get(name)
    while node is not None and node.op_type in ("Gather", "Slice", "Cast"):
        if node.op_type == "Gather" and node.input[1] not in vectors:
            return False
        node = producer.get(node.input[0])
    return node is not None and node.op_type == "Shape"
