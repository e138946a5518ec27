"""Gemm and MatMul with a constant weight: they consume input features and create outputs."""

from __future__ import annotations

from .attention import activation_matmul
from .base import LinearView, Rule, elements, known, register


@register("Gemm")
class GemmRule(Rule):
    """Y = alpha·op(A)·op(B) + beta·C with B constant; A's feature axis is consumed."""

    fully_connected = True

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

    def macs(self, node, shape):
        a, b, y = shape(node.input(0)), shape(node.input(1)), shape(node.proto.output[0])
        if not (known(a) and known(b) and known(y)) or len(a) != 2:
            return None
        return elements(y) * (a[0] if node.attr("transA", 0) else a[1])

    def linear_view(self, node, graph):
        weight = graph.const(node.input(1))
        if weight is None or weight.ndim != 2 or int(node.attr("transA", 0)):
            return None
        transposed = bool(int(node.attr("transB", 0)))    # B stored [out, in]
        std = (weight if transposed else weight.T)[:, :, None]
        bias = None
        if node.input(2):
            value = graph.const(node.input(2))
            if value is not None and value.ndim == 1 and value.size == std.shape[0]:
                bias = (node.index, 2, 1.0)
        return LinearView(std, (lambda w: w[:, :, 0]) if transposed else
                          (lambda w: w[:, :, 0].T), bias=bias)

    def timed_widths(self, node, x, w):
        if len(w) != 2 or len(x) != 2:
            return None
        k_in = x[0] if node.attr("transA", 0) else x[1]
        k_w, n = (w[1], w[0]) if node.attr("transB", 0) else w
        return (k_in, n) if k_in == k_w else None

    def widths_after(self, layer, w):
        return (w[1], w[0]) if layer.attr("transB") else (w[0], w[1])

    def narrowed(self, layer, c_in, c_out):
        x = list(layer.x_shape)
        x[0 if layer.attr("transA") else 1] = c_in
        w = [c_out, c_in] if layer.attr("transB") else [c_in, c_out]
        return x, w, layer.bias_at(c_out), list(layer.attrs)


@register("MatMul")
class MatMulRule(Rule):
    """X @ W with W a constant 2-D matrix: X's last axis is consumed, a new last axis made.
    Between two activations (attention) see ``attention``: there heads may be merged with
    the batch (tiled axes)."""

    fully_connected = True
    follows_tiled = True
    streams = True          # between two activations (a constant weight: a timed layer)

    def propagate(self, node, ctx):
        weight = ctx.const(node.input(1))
        if weight is None and ctx.const(node.input(0)) is None:
            return activation_matmul(node, ctx)
        if any(m is not None and m.tiled for m in map(ctx.map, node.proto.input[:2])):
            return ctx.barrier(node, "channels merged with a dynamic (batch) axis reach an op "
                                     "that cannot follow them")
        if weight is None or weight.ndim != 2:
            return ctx.barrier(node, "only X @ constant 2-D weight is understood")
        y = self.weight_channels(node, ctx, 1, weight)
        if y is not None:
            ctx.set_map(node.proto.output[0], y)
            ctx.note(node)

    def weight_channels(self, node, ctx, index: int, weight, zero=None):
        """Declare the constant [K, N] weight at ``index``: N new output channels, the K input
        features it consumes (``zero``: see ``ParamUse.zero``). The output's map, or None
        after a barrier."""
        x = ctx.map(node.input(0))
        rank = ctx.rank(node.input(0))
        if rank is None or rank < 2:
            return ctx.barrier(node, "input rank unknown")
        if x is not None and x.axes != (rank - 1,):
            return ctx.barrier(node, "input is tracked on a non-contracted axis")
        y = ctx.new_map(node, rank, (rank - 1,), (weight.shape[1],))
        ctx.param(node, index, {1: 0}, y.labels)
        if x is not None:
            ctx.param(node, index, {0: 0}, x.labels, consume=True, zero=zero)
        return y

    def macs(self, node, shape):
        """Every output element is a dot product over the contracted axis (both operands may
        be activations: attention scores)."""
        a, y = shape(node.input(0)), shape(node.proto.output[0])
        if not (known(a) and known(y) and known(shape(node.input(1)))):
            return None
        return elements(y) * a[-1]

    def linear_view(self, node, graph):
        weight = graph.const(node.input(1))
        if weight is None or weight.ndim != 2 or graph.const(node.input(0)) is not None:
            return None
        return LinearView(weight.T[:, :, None], lambda w: w[:, :, 0].T,
                          bias=_following_add(node, graph, weight.shape[1]))

    def timed_widths(self, node, x, w):
        if len(w) != 2:
            return None
        return (x[-1], w[1]) if x[-1] == w[0] else None

    def widths_after(self, layer, w):
        return w[0], w[1]

    def narrowed(self, layer, c_in, c_out):
        x = list(layer.x_shape)
        x[-1] = c_in
        return x, [c_in, c_out], layer.bias_at(c_out), list(layer.attrs)


def _following_add(node, graph, out: int):
    """A MatMul's bias is the constant vector of the Add that alone reads its output."""
    readers = graph.consumers.get(node.proto.output[0], [])
    if len(readers) != 1 or readers[0].op != "Add":
        return None
    add = readers[0]
    other = 1 if add.input(0) == node.proto.output[0] else 0
    value = graph.const(add.input(other))
    if value is not None and value.size == out and (value.ndim == 1 or value.shape[-1] == out):
        return add.index, other, 1.0
    return None

