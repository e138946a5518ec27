"""Dynamic quantization (``quantize_dynamic``): DynamicQuantizeLinear, ConvInteger and
MatMulInteger.

The quantizer writes, per layer, ``DynamicQuantizeLinear(x) → (x_q, x_scale, x_zp)``, then
``ConvInteger(x_q, W_q, x_zp, w_zp)`` or ``MatMulInteger``, a Cast to float and a Mul by
``x_scale · w_scale`` (a per-channel product when the weights are quantized per channel: see
``elementwise``, which slices ``w_scale`` where that product is made). The integer weights
are sliced as stored, so the model stays quantized.

DynamicQuantizeLinear takes one scale for the whole tensor from its minimum and maximum,
both widened to include 0. A removed channel that is zero changes neither, so the pruned op
quantizes the kept channels exactly as the original does once the removed ones are zeroed:
in the masked original its input is multiplied by the kept-channel mask (``mask_rewrite``).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from .base import InputRule, LinearView, register
from .conv import ConvRule, conv_window
from .hidden import mask_reduction
from .linear import MatMulRule


def one_value(ctx, name: str) -> bool:
    """Does ``name`` hold a single value (a per-tensor scale or zero point)?"""
    shape = ctx.shape(name)
    return shape is not None and all(isinstance(d, int) for d in shape) and \
        int(np.prod(shape, dtype=np.int64)) == 1


def per_tensor(ctx, node, indices) -> str | None:
    """A reason to stop unless every present input at ``indices`` is a single value."""
    for i in indices:
        if node.input(i) and not one_value(ctx, node.input(i)):
            return f"input {i} is not per-tensor"
    return None


def per_channel(ctx, node, index: int, labels: np.ndarray) -> str | None:
    """Declare a scale or zero point of the output channels ``labels``: one value stays, one
    value per channel is sliced with them. A reason to stop for anything else."""
    name = node.input(index)
    if not name:
        return None
    value = ctx.const(name)
    if value is None:
        return f"input {index} is not a constant"
    if value.size == 1:
        return None
    if value.ndim != 1 or value.size != labels.size:
        return f"input {index} is neither per-tensor nor per output channel"
    ctx.param(node, index, {0: 0}, labels, score=False)
    return None


def _along(value, default: float, ndim: int, axis: int) -> np.ndarray:
    """A scale or zero point shaped to broadcast against a rank-``ndim`` weight: one value,
    or a vector along ``axis``."""
    if value is None:
        return np.asarray(default, dtype=np.float64)
    value = np.asarray(value, dtype=np.float64)
    if value.size == 1:
        return value.reshape(())
    shape = [1] * ndim
    shape[axis] = value.size
    return value.reshape(shape)


def dequantized(weight, scale, zero, axis: int) -> np.ndarray | None:
    """(weight − zero) · scale in float64, a vector scale or zero point lying along ``axis``."""
    if weight is None or not np.issubdtype(weight.dtype, np.integer):
        return None
    return ((weight.astype(np.float64) - _along(zero, 0.0, weight.ndim, axis))
            * _along(scale, 1.0, weight.ndim, axis))


def requantize(floats: np.ndarray, scale, zero, axis: int, stored: np.ndarray) -> np.ndarray:
    """Floats stored as the integers ``stored`` are: round(w / scale) + zero, within the
    stored weight's own range (7-bit weights stay 7-bit, symmetric ones symmetric)."""
    q = (np.round(floats / _along(scale, 1.0, floats.ndim, axis))
         + _along(zero, 0.0, floats.ndim, axis))
    return np.clip(q, stored.min(), stored.max()).astype(stored.dtype)


def scaled_output_add(graph, node, out: int):
    """The bias of an integer op as the quantizer writes it (Cast, Mul by the scales, then an
    Add of a constant per output channel): (Add node, input, +1) for ``LinearView.bias``."""
    chain = _quantizer_chain(graph, node, ("Cast", "Mul", "Add"))
    if chain is None:
        return None
    mul, add = chain[1], chain[2]
    other = 1 if add.input(0) == mul.proto.output[0] else 0
    value = graph.const(add.input(other))
    return (add.index, other, 1.0) if value is not None and value.size == out else None


def _quantizer_chain(graph, node, ops: tuple[str, ...]):
    """The nodes of ``ops`` that follow ``node`` one after the other, each the only reader of
    the one before (the Cast → Mul → Add the quantizer writes after an integer op), or None."""
    chain, last = [], node
    for op in ops:
        readers = graph.consumers.get(last.proto.output[0], [])
        if len(readers) != 1 or readers[0].op != op:
            return None
        last = readers[0]
        chain.append(last)
    return chain


def run_time_input(graph, node) -> str | None:
    """The float tensor the DynamicQuantizeLinear before ``node`` quantizes, or None."""
    source = graph.producer.get(node.input(0))
    return source.input(0) if source is not None and source.op == "DynamicQuantizeLinear" \
        else None


def output_scale(graph, node) -> np.ndarray | None:
    """The constant factor the quantizer multiplies an integer op's output by (Cast, then Mul
    by ``x_scale · w_scale``): ``w_scale``, or None where the pattern is not there."""
    chain = _quantizer_chain(graph, node, ("Cast", "Mul"))
    if chain is None:
        return None
    cast, mul = chain
    factor = next(n for n in mul.proto.input if n != cast.proto.output[0])
    value = graph.const(factor)
    if value is not None:
        return value
    product = graph.producer.get(factor)
    if product is None or product.op != "Mul":
        return None
    return next((v for v in map(graph.const, product.proto.input) if v is not None), None)


@register("DynamicQuantizeLinear")
class DynamicQuantizeRule(InputRule):
    """Output 0 carries the channels as uint8; the scale and zero point are single values."""

    def follow(self, node, ctx, x):
        dtype = ctx.graph.dtypes.get(node.input(0))
        if len(x.axes) != 1 or dtype is None:
            return ctx.barrier(node, "channels on several axes, or an unknown input type")
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node, axis=x.axes[0], rank=x.rank, dtype=helper.tensor_dtype_to_np_dtype(dtype))

    def mask_rewrite(self, node, ctx):
        info = ctx.note_of(node)
        mask_reduction(node, ctx, info["axis"], info["rank"], info["dtype"])


@register("ConvInteger")
class ConvIntegerRule(ConvRule):
    """A Conv on uint8/int8 (x, W, x_zero_point, w_zero_point) with no bias: the weight's zero
    point may be per output channel."""

    weight_input, bias_input = 1, None

    def weight_zero(self, node):
        return 3, 0

    def scales(self, node, ctx, y):
        return per_tensor(ctx, node, (2,)) or per_channel(ctx, node, 3, y.labels)

    def param_value(self, node, input_index, graph):
        if input_index != 1:
            return graph.const(node.input(input_index))
        zero = graph.const(node.input(3)) if node.input(3) else None
        return dequantized(graph.const(node.input(1)), output_scale(graph, node), zero, 0)

    def linear_view(self, node, graph):
        weight, scale = graph.const(node.input(1)), output_scale(graph, node)
        reads = run_time_input(graph, node)
        if weight is None or weight.ndim < 3 or scale is None or reads is None:
            return None
        zero = graph.const(node.input(3)) if node.input(3) else None
        return integer_conv_view(node, weight, scale, zero, scaled_output_add(
            graph, node, weight.shape[0]), weight_input=1, reads=reads)

    def timed_widths(self, node, x, w):
        return None


def integer_conv_view(node, weight, scale, zero, bias, **where) -> LinearView | None:
    """A conv on integers seen as its float weights (out, in/group, k), quantized back with
    its own scales when written; None for a depthwise one (nothing read linearly)."""
    group = int(node.attr("group", 1))
    if group > 1 and weight.shape[1] == 1:
        return None
    floats = dequantized(weight, scale, zero, 0)
    out, shape = weight.shape[0], weight.shape
    return LinearView(
        floats.reshape(out, shape[1], -1),
        lambda w: requantize(w.reshape(shape), scale, zero, 0, weight), group, bias,
        conv_window(node, weight) if floats[0, 0].size > 1 else None, **where)


class IntegerMatMul(MatMulRule):
    """X @ B on integers with B a constant [K, N] read from input ``b_input``, whose zero point
    (``b_zero``) and scale (``b_scale``, None where the op has none) are one value or one per
    column; the other inputs at ``single`` must be one value each."""

    b_input, b_zero, b_scale, single = 1, 3, None, (2,)

    def propagate(self, node, ctx):
        B = self.b_input
        weight = ctx.const(node.input(B))
        if weight is None or weight.ndim != 2:
            return ctx.barrier(node, "B is not a constant matrix")
        reason = per_tensor(ctx, node, self.single)
        if reason:
            return ctx.barrier(node, reason)
        y = self.weight_channels(node, ctx, B, weight, zero=(self.b_zero, 1))
        if y is None:
            return None
        for index in (self.b_zero, self.b_scale):
            reason = per_channel(ctx, node, index, y.labels) if index is not None else None
            if reason:
                return ctx.barrier(node, reason)
        ctx.set_map(node.proto.output[0], y)
        ctx.note(node)

    def param_value(self, node, input_index, graph):
        if input_index != self.b_input:
            return graph.const(node.input(input_index))
        zero = graph.const(node.input(self.b_zero)) if node.input(self.b_zero) else None
        scale = (graph.const(node.input(self.b_scale)) if self.b_scale is not None
                 else output_scale(graph, node))
        return dequantized(graph.const(node.input(self.b_input)), scale, zero, 1)

    def reading(self, node, graph) -> dict | None:
        """How the view reads its input (``LinearView.reads`` or ``input_dequantize``) and
        its bias, or None where that is not known."""
        reads = run_time_input(graph, node)
        if reads is None:
            return None
        weight = graph.const(node.input(self.b_input))
        return dict(reads=reads, bias=scaled_output_add(graph, node, weight.shape[1]))

    def linear_view(self, node, graph):
        weight = graph.const(node.input(self.b_input))
        scale = (graph.const(node.input(self.b_scale)) if self.b_scale is not None
                 else output_scale(graph, node))
        where = self.reading(node, graph) if weight is not None else None
        if where is None or weight.ndim != 2 or scale is None:
            return None
        zero = graph.const(node.input(self.b_zero)) if node.input(self.b_zero) else None
        floats = dequantized(weight, scale, zero, 1)
        return LinearView(floats.T[:, :, None],
                          lambda w: requantize(w[:, :, 0].T, scale, zero, 1, weight),
                          weight_input=self.b_input, **where)

    def timed_widths(self, node, x, w):
        return None


@register("MatMulInteger")
class MatMulIntegerRule(IntegerMatMul):
    """MatMulInteger(A, B, a_zero_point, b_zero_point): its scale is applied after it."""
