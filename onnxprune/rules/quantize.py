"""QuantizeLinear and DequantizeLinear on activations (the QDQ format): each element is scaled
on its own, so channels pass through. A per-tensor scale and zero point stay as they are; a
per-axis pair along the tracked channel axis is sliced with the channels. Blocked quantization
and a per-axis pair along any other axis are barriers.

Quantized *weights* (DequantizeLinear of stored integers into a Conv or Gemm) need no rule
here: the consumer's rule slices the weight, and ``ModelGraph.slice_const`` cuts it where it
is stored, integers, scales and zero points, so the model stays quantized. Ops that read
integers directly have rules of their own: ``integer`` (dynamic quantization) and
``qoperator`` (QLinearConv, QGemm, ...).
"""

from __future__ import annotations

from .base import InputRule, normalize_axis, register


@register("QuantizeLinear", "DequantizeLinear")
class QuantizeRule(InputRule):
    def follow(self, node, ctx, x):
        if node.attr("block_size", 0):
            return ctx.barrier(node, "blocked quantization")
        pair = [(i, ctx.const(node.input(i))) for i in (1, 2) if node.input(i)]
        if any(value is None for _, value in pair):
            return ctx.barrier(node, "scale or zero point is not a constant")
        per_axis = [(i, value) for i, value in pair if value.size > 1]
        if per_axis:
            axis = normalize_axis(int(node.attr("axis", 1)), x.rank)
            if x.axes != (axis,):
                return ctx.barrier(node, "per-axis scale along an axis the channels are not on")
            for index, _ in per_axis:
                ctx.param(node, index, {0: 0}, x.labels, score=False)
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node)
