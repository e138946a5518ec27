"""Conv and ConvTranspose of any rank and any ``group``.

The weight is viewed in Conv layout (out, in/group, k...). Three cases:

* dense (group 1): output channels are new atoms; the input channels are consumed.
* depthwise (one input channel per group, ``m`` outputs each): every output channel is its input
  channel carried through, so output labels repeat the input ones and ``group`` shrinks with
  them.
* grouped (k > 1 inputs per group): the group count stays and every group keeps the same
  positions, so the input grid (group, k) and output grid (group, m) are unified along the group
  axis; the weight loses the same columns in every group.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..graph import ChannelMap
from .base import LinearView, Rule, elements, known, register


def to_conv_layout(weight: np.ndarray, group: int, transposed: bool) -> np.ndarray:
    """ConvTranspose stores (in, out/group, k...); return the Conv layout (out, in/group, k...)."""
    if not transposed:
        return weight
    cin, mpg = weight.shape[0], weight.shape[1]
    k = cin // group
    w = weight.reshape(group, k, mpg, *weight.shape[2:]).swapaxes(1, 2)
    return w.reshape(group * mpg, k, *weight.shape[2:])


def from_conv_layout(weight: np.ndarray, group: int, shape) -> np.ndarray:
    """The inverse of ``to_conv_layout`` for a transposed conv of weight ``shape``."""
    mpg = shape[1]
    w = weight.reshape(group, mpg, shape[0] // group, *shape[2:]).swapaxes(1, 2)
    return w.reshape(shape)


@register("Conv", "ConvTranspose")
class ConvRule(Rule):
    """Which inputs hold the weight and the bias is all the integer convs (``integer``,
    ``qoperator``) change, with the per-channel scales and zero points of ``scales``."""

    weight_input, bias_input = 1, 2

    def weight_zero(self, node) -> tuple[int, int] | None:
        """(input, weight axis) of the weight's zero point (see ``ParamUse.zero``)."""
        return None

    def scales(self, node, ctx, y) -> str | None:
        """Declare per-output-channel scales and zero points; a reason to stop, or None."""
        return None

    def propagate(self, node, ctx):
        W = self.weight_input
        weight = ctx.const(node.input(W))
        if weight is None:
            return ctx.barrier(node, "weight is not a constant")
        x = ctx.map(node.input(0))
        rank = weight.ndim
        group = int(node.attr("group", 1))
        transposed = node.op == "ConvTranspose"
        w = to_conv_layout(weight, group, transposed)
        cout, k = w.shape[0], w.shape[1]
        m = cout // group
        if x is not None and x.axes != (1,):
            return ctx.barrier(node, "input channels are not tracked on axis 1")
        out_axis, in_axis = (1, 0) if transposed else (0, 1)
        zero = self.weight_zero(node)

        if group > 1 and k == 1 and x is not None:
            kind = "depthwise"
            y = ChannelMap(rank, (1,), np.repeat(x.labels, m))
            out_labels = y.labels
            if transposed:  # weight (cin, m, ...): out channel c*m+j sits at [c, j]
                ctx.param(node, W, {0: 0, 1: 1}, out_labels.reshape(group, m))
            else:
                ctx.param(node, W, {0: 0}, out_labels)
        elif group > 1:
            kind = "grouped"
            y = ctx.new_map(node, rank, (1,), (cout,))
            grid_out = y.labels.reshape(group, m)
            ctx.space.unify_along(grid_out, 0)
            if x is not None:
                grid_in = x.labels.reshape(group, k)
                ctx.space.unify_along(grid_in, 0)
                if transposed:
                    ctx.param(node, W, {0: 0}, x.labels, consume=True)
                else:
                    ctx.param(node, W, {0: 0, 1: 1}, np.repeat(grid_in, m, axis=0),
                              consume=True, zero=zero)
            if transposed:  # weight (g*k, m, ...): row c belongs to group c // k
                ctx.param(node, W, {0: 0, 1: 1}, np.repeat(grid_out, k, axis=0))
            else:
                ctx.param(node, W, {0: 0}, y.labels)
        else:
            kind = "dense"
            y = ctx.new_map(node, rank, (1,), (cout,))
            ctx.param(node, W, {out_axis: 0}, y.labels)
            if x is not None:
                ctx.param(node, W, {in_axis: 0}, x.labels, consume=True, zero=zero)
        bias = self.bias_input
        if bias is not None and node.input(bias):
            if ctx.const(node.input(bias)) is None:
                return ctx.barrier(node, "bias is not a constant")
            ctx.param(node, bias, {0: 0}, y.labels)
        reason = self.scales(node, ctx, y)
        if reason:
            return ctx.barrier(node, reason)
        ctx.set_map(node.proto.output[0], y)
        ctx.note(node, kind=kind, m=m)

    def rewrite(self, node, ctx):
        info = ctx.note_of(node)
        if info["kind"] == "depthwise":
            kept = int(ctx.keep(node.proto.output[0]).sum())
            node.set_attr("group", kept // info["m"])

    # -- what other layers ask of a conv ---------------------------------------------------
    def macs(self, node, shape):
        x, w = shape(node.input(0)), shape(node.input(self.weight_input))
        y = shape(node.proto.output[0])
        if not (known(x) and known(w) and known(y)):
            return None
        if node.op == "ConvTranspose":   # every input position meets every weight of its group
            return elements(x) * elements(w[1:])
        return elements(y) * elements(w[1:])

    def linear_view(self, node, graph):
        weight = graph.const(node.input(1))
        if weight is None or weight.ndim < 3:
            return None
        group = int(node.attr("group", 1))
        out = weight.shape[1] * group if node.op == "ConvTranspose" else weight.shape[0]
        bias = _bias_of(node, graph, out)
        if node.op == "ConvTranspose":
            # Each input position reaches overlapping outputs through every kernel position:
            # for OBS a per-channel summary of the weights it meets; sequential reconstruction
            # regresses on the zero-upsampled input instead (``transposed``).
            std = to_conv_layout(weight, group, True)
            shape = weight.shape
            return LinearView(std.reshape(out, std.shape[1], -1),
                              lambda w: from_conv_layout(w.reshape(std.shape), group, shape),
                              group, bias, None, exact=False,
                              transposed=_transposed_window(node, weight))
        if group > 1 and weight.shape[1] == 1:
            return None     # depthwise: channels pass through, nothing reads them linearly
        std = weight.reshape(out, weight.shape[1], -1)
        shape = weight.shape
        window = conv_window(node, weight) if std.shape[2] > 1 else None
        return LinearView(std, lambda w: w.reshape(shape), group, bias, window)

    def timed_widths(self, node, x, w):
        if node.op != "Conv" or len(x) != 4 or len(w) != 4:
            return None
        group = int(node.attr("group", 1))
        return (x[1], w[0]) if x[1] == w[1] * group else None

    def widths_after(self, layer, w):
        group = layer.attr("group", 1)
        if group > 1 and group == layer.c_in:       # depthwise: c_in follows c_out
            return w[0] * layer.c_in // layer.c_out, w[0]
        return w[1] * group, w[0]

    def narrowed(self, layer, c_in, c_out):
        group = conv_group(layer.attr("group", 1), layer.c_in, c_in, c_out)
        x = list(layer.x_shape)
        x[1] = c_in
        w = [c_out, c_in // group, *layer.w_shape[2:]]
        attrs = [a for a in layer.attrs if a.name != "group"] + [
            helper.make_attribute("group", group)]
        return x, w, layer.bias_at(c_out), attrs


def conv_group(dense_group: int, dense_c_in: int, c_in: int, c_out: int) -> int:
    """The group count of a conv narrowed to (c_in, c_out).

    A depthwise conv (one input channel per group) stays depthwise: group = c_in. Any other
    grouped conv keeps its group count, which must divide both widths. ValueError otherwise.
    """
    if dense_group == 1:
        return 1
    group = c_in if dense_group == dense_c_in else dense_group
    if c_in % group or c_out % group:
        raise ValueError(f"a conv with group={group} cannot take c_in={c_in}, c_out={c_out}: "
                         "both must be multiples of the group count")
    return group



def conv_window(node, weight):
    """A 2-D conv's unfolding parameters, or None (auto_pad other than NOTSET/VALID, or not
    2-D): such a layer gets no patch Gram."""
    if weight.ndim != 4 or node.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET",
                                                                     b"VALID", "VALID"):
        return None
    kernel = tuple(weight.shape[2:])
    strides = tuple(node.attr("strides", [1, 1]))
    dilations = tuple(node.attr("dilations", [1, 1]))
    pads = tuple(node.attr("pads", [0, 0, 0, 0]))
    return kernel, strides, pads, dilations


def _transposed_window(node, weight):
    """The plain conv a 2-D transposed conv equals on its zero-upsampled input (see
    ``LinearView.transposed``), or None (auto_pad, not 2-D, or padding larger than the kernel
    reach, which would crop)."""
    if weight.ndim != 4 or node.attr("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    kernel = tuple(weight.shape[2:])
    strides = tuple(node.attr("strides", [1, 1]))
    dilations = tuple(node.attr("dilations", [1, 1]))
    pads = tuple(node.attr("pads", [0, 0, 0, 0]))
    extra = tuple(node.attr("output_padding", [0, 0]))
    if node.has_attr("output_shape"):
        return None
    reach = [(k - 1) * d for k, d in zip(kernel, dilations)]
    begin = [r - p for r, p in zip(reach, pads[:2])]
    end = [r - p + e for r, p, e in zip(reach, pads[2:], extra)]
    if min(begin + end) < 0:
        return None
    return kernel, strides, (begin[0], begin[1], end[0], end[1]), dilations


def _bias_of(node, graph, out: int):
    """The constant that absorbs a correction of the outputs: the conv's own bias, or, for a
    conv without one, the running mean of a BatchNormalization right after it (BN(y + d) is
    BN with running mean − d)."""
    if node.input(2):
        value = graph.const(node.input(2))
        return (node.index, 2, 1.0) if value is not None and value.shape == (out,) else None
    readers = graph.consumers.get(node.proto.output[0], [])
    if len(readers) == 1 and readers[0].op == "BatchNormalization":
        mean = graph.const(readers[0].input(3))
        if mean is not None and mean.shape == (out,):
            return readers[0].index, 3, -1.0
    return None
