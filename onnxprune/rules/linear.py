"""Gemm and MatMul with a constant weight: they consume input features and create outputs."""

from __future__ import annotations

from .attention import activation_matmul
from .base import Rule, register


@register("Gemm")
class GemmRule(Rule):
    """Y = alpha·op(A)·op(B) + beta·C with B constant; A's feature axis is consumed."""

    def propagate(self, node, ctx):
        weight = ctx.const(node.input(1))
        if weight is None or weight.ndim != 2:
            return ctx.barrier(node, "weight is not a constant matrix")
        trans_a, trans_b = int(node.attr("transA", 0)), int(node.attr("transB", 0))
        x = ctx.map(node.input(0))
        feature_axis = 0 if trans_a else 1
        if x is not None and x.axes != (feature_axis,):
            return ctx.barrier(node, "input is tracked on a non-feature axis")
        in_axis, out_axis = (1, 0) if trans_b else (0, 1)
        y = ctx.new_map(node, 2, (1,), (weight.shape[out_axis],))
        ctx.param(node, 1, {out_axis: 0}, y.labels)
        if x is not None:
            ctx.param(node, 1, {in_axis: 0}, x.labels, consume=True)
        if node.input(2):
            bias = ctx.const(node.input(2))
            if bias is None:
                return ctx.barrier(node, "bias C is not a constant")
            if bias.ndim >= 1 and bias.shape[-1] == y.labels.size and y.labels.size > 1:
                ctx.param(node, 2, {bias.ndim - 1: 0}, y.labels)
        ctx.set_map(node.proto.output[0], y)
        ctx.note(node)


@register("MatMul")
class MatMulRule(Rule):
    """X @ W with W a constant 2-D matrix: X's last axis is consumed, a new last axis made.
    Between two activations (attention) see ``attention``."""

    def propagate(self, node, ctx):
        weight = ctx.const(node.input(1))
        if weight is None and ctx.const(node.input(0)) is None:
            return activation_matmul(node, ctx)
        if weight is None or weight.ndim != 2:
            return ctx.barrier(node, "only X @ constant 2-D weight is understood")
        x = ctx.map(node.input(0))
        rank = ctx.rank(node.input(0))
        if rank is None or rank < 2:
            return ctx.barrier(node, "input rank unknown")
        if x is not None and x.axes != (rank - 1,):
            return ctx.barrier(node, "input is tracked on a non-contracted axis")
        y = ctx.new_map(node, rank, (rank - 1,), (weight.shape[1],))
        ctx.param(node, 1, {1: 0}, y.labels)
        if x is not None:
            ctx.param(node, 1, {0: 0}, x.labels, consume=True)
        ctx.set_map(node.proto.output[0], y)
        ctx.note(node)
