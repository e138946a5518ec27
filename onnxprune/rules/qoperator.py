"""The QOperator format (``quantize_static(quant_format=QOperator)``): ops that take uint8/int8
tensors with their scales and zero points as inputs and requantize their outputs.

Activations are quantized per tensor (one scale and zero point each, kept as they are); the
weights of QLinearConv, QLinearMatMul and QGemm may be per output channel, and their scales,
zero points and int32 biases are sliced with the channels. Criteria and compensation see these
layers as the floats they stand for (``LinearView``): the weights dequantized, the input as
(x_q − zero)·scale, and a corrected weight quantized back with the layer's own scales. In the masked original a consumer's
removed input columns take the weight's zero point, which stands for 0, so the pruned op's
integer sums are those of the masked one, exactly.
"""

from __future__ import annotations

import numpy as np

from .base import InputRule, LinearView, Rule, elements, known, normalize_axis, register
from .concat_split import ConcatRule
from .conv import ConvRule
from .elementwise import BroadcastRule
from .integer import (IntegerMatMul, dequantized, integer_conv_view, per_channel, per_tensor,
                      requantize)


@register("QLinearConv")
class QLinearConvRule(ConvRule):
    """QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B)."""

    weight_input, bias_input = 3, 8

    def weight_zero(self, node):
        return 5, 0

    def scales(self, node, ctx, y):
        return (per_tensor(ctx, node, (1, 2, 6, 7)) or per_channel(ctx, node, 4, y.labels)
                or per_channel(ctx, node, 5, y.labels))

    def param_value(self, node, input_index, graph):
        if input_index != 3:
            return graph.const(node.input(input_index))
        zero = graph.const(node.input(5)) if node.input(5) else None
        return dequantized(graph.const(node.input(3)), graph.const(node.input(4)), zero, 0)

    def linear_view(self, node, graph):
        weight, scale = graph.const(node.input(3)), graph.const(node.input(4))
        x_scale = graph.const(node.input(1))
        x_zero = graph.const(node.input(2)) if node.input(2) else None
        if weight is None or weight.ndim < 3 or scale is None or x_scale is None:
            return None
        zero = graph.const(node.input(5)) if node.input(5) else None
        out = weight.shape[0]
        bias = (node.index, 8, 1.0) if node.input(8) and graph.const(node.input(8)) is not None \
            else None
        return integer_conv_view(
            node, weight, scale, zero, bias, weight_input=3,
            input_dequantize=_scalar_pair(x_scale, x_zero),
            bias_unit=np.broadcast_to(float(x_scale.ravel()[0]) * scale.astype(np.float64),
                                      (out,)).copy())

    def timed_widths(self, node, x, w):
        return None


def _scalar_pair(scale: np.ndarray, zero: np.ndarray | None) -> tuple[float, float]:
    """(scale, zero point) of a per-tensor quantized input as floats."""
    return float(scale.ravel()[0]), float(zero.ravel()[0]) if zero is not None else 0.0


@register("QLinearMatMul")
class QLinearMatMulRule(IntegerMatMul):
    """QLinearMatMul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp) with b constant; it
    has no bias, so compensation leaves it alone (scores still read it)."""

    b_input, b_zero, b_scale, single = 3, 5, 4, (1, 2, 6, 7)

    def reading(self, node, graph):
        scale = graph.const(node.input(1))
        zero = graph.const(node.input(2)) if node.input(2) else None
        return None if scale is None else dict(input_dequantize=_scalar_pair(scale, zero))


@register("com.microsoft:QGemm")
class QGemmRule(Rule):
    """QGemm(A, a_scale, a_zp, B, b_scale, b_zp, C, y_scale, y_zp): a Gemm on integers with B
    constant, C an int32 bias, and a float output where y_scale is absent."""

    fully_connected = True

    def propagate(self, node, ctx):
        weight = ctx.const(node.input(3))
        if weight is None or weight.ndim != 2:
            return ctx.barrier(node, "B is not a constant matrix")
        x = ctx.map(node.input(0))
        feature_axis = 0 if int(node.attr("transA", 0)) else 1
        if x is not None and x.axes != (feature_axis,):
            return ctx.barrier(node, "input is tracked on a non-feature axis")
        in_axis, out_axis = (1, 0) if int(node.attr("transB", 0)) else (0, 1)
        y = ctx.new_map(node, 2, (1,), (weight.shape[out_axis],))
        ctx.param(node, 3, {out_axis: 0}, y.labels)
        if x is not None:
            ctx.param(node, 3, {in_axis: 0}, x.labels, consume=True, zero=(5, out_axis))
        reason = per_tensor(ctx, node, (1, 2, 7, 8))
        for index in (4, 5, 6):
            reason = reason or per_channel(ctx, node, index, y.labels)
        if reason:
            return ctx.barrier(node, reason)
        ctx.set_map(node.proto.output[0], y)
        ctx.note(node)

    def param_value(self, node, input_index, graph):
        if input_index != 3:
            return graph.const(node.input(input_index))
        axis = 0 if int(node.attr("transB", 0)) else 1
        zero = graph.const(node.input(5)) if node.input(5) else None
        return dequantized(graph.const(node.input(3)), graph.const(node.input(4)), zero, axis)

    def macs(self, node, shape):
        a, y = shape(node.input(0)), shape(node.proto.output[0])
        if not (known(a) and known(y)) or len(a) != 2:
            return None
        return elements(y) * (a[0] if node.attr("transA", 0) else a[1])

    def linear_view(self, node, graph):
        weight, scale = graph.const(node.input(3)), graph.const(node.input(4))
        a_scale = graph.const(node.input(1))
        if (weight is None or weight.ndim != 2 or scale is None or a_scale is None
                or int(node.attr("transA", 0))):
            return None
        a_zero = graph.const(node.input(2)) if node.input(2) else None
        zero = graph.const(node.input(5)) if node.input(5) else None
        transposed = bool(int(node.attr("transB", 0)))      # B stored [out, in]
        axis = 0 if transposed else 1
        floats = dequantized(weight, scale, zero, axis)
        out = floats.shape[axis]
        bias = (node.index, 6, 1.0) if node.input(6) and graph.const(node.input(6)) is not None \
            else None

        def write(w):
            w = w[:, :, 0] if transposed else w[:, :, 0].T
            return requantize(w, scale, zero, axis, weight)

        return LinearView(
            (floats if transposed else floats.T)[:, :, None], write, bias=bias, weight_input=3,
            input_dequantize=_scalar_pair(a_scale, a_zero),
            bias_unit=np.broadcast_to(float(a_scale.ravel()[0]) * scale.astype(np.float64),
                                      (out,)).copy())


@register("com.microsoft:QLinearAdd", "com.microsoft:QLinearMul")
class QLinearBinaryRule(BroadcastRule):
    """(A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp): the residual Add and the gating
    Mul on quantized tensors couple their inputs' channels like Add and Mul; the single-value
    scales and zero points broadcast and stay."""

    def propagate(self, node, ctx):
        reason = per_tensor(ctx, node, (1, 2, 4, 5, 6, 7))
        if reason and any(ctx.map(n) is not None for n in node.proto.input):
            return ctx.barrier(node, reason)
        super().propagate(node, ctx)


@register("com.microsoft:QLinearSigmoid", "com.microsoft:QLinearLeakyRelu")
class QLinearUnaryRule(InputRule):
    """(X, X_scale, X_zp, Y_scale, Y_zp): element by element, so channels pass through."""

    def follow(self, node, ctx, x):
        reason = per_tensor(ctx, node, (1, 2, 3, 4))
        if reason:
            return ctx.barrier(node, reason)
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node)


@register("com.microsoft:QLinearGlobalAveragePool", "com.microsoft:QLinearAveragePool")
class QLinearPoolRule(InputRule):
    """Pools each channel over space; ``channels_last`` says where the channels are."""

    def follow(self, node, ctx, x):
        reason = per_tensor(ctx, node, (1, 2, 3, 4))
        channels = normalize_axis(-1 if int(node.attr("channels_last", 0)) else 1, x.rank)
        if reason or x.axes != (channels,):
            return ctx.barrier(node, reason or "channels are tracked on a pooled axis")
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node)


@register("com.microsoft:QLinearConcat")
class QLinearConcatRule(ConcatRule):
    """(Y_scale, Y_zp, X0, X0_scale, X0_zp, X1, ...): a Concat of the X inputs, each
    requantized to the output's single scale."""

    def parts(self, node):
        return list(node.proto.input)[2::3]

    def propagate(self, node, ctx):
        scales = [i for i in range(len(node.proto.input)) if i % 3 != 2]
        reason = per_tensor(ctx, node, scales)
        if reason and any(ctx.map(n) is not None for n in self.parts(node)):
            return ctx.barrier(node, reason)
        super().propagate(node, ctx)
