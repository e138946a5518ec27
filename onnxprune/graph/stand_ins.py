"""Standard ops that stand in for ONNX Runtime's quantized contrib ops during shape inference.

ONNX's shape inference knows no ``com.microsoft`` op, and ONNX Runtime's symbolic inference
stops at the QOperator ones (QLinearConcat, QLinearGlobalAveragePool, ...), so every value
after the first of them would have no shape. Each entry here writes the standard op whose
output has the same shape (QLinearConcat: a Concat of its X inputs), used on the inference
copy only; the model itself is never changed.
"""

from __future__ import annotations

import onnx


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
