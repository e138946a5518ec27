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

from ..graph import ChannelMap
from .base import Rule, register


def to_conv_layout(weight: np.ndarray, group: int, transposed: bool) -> np.ndarray:
    """ConvTranspose stores (in, out/group, k...); return the Conv layout (out, in/group, k...)."""
    if not transposed:
        return weight
    cin, mpg = weight.shape[0], weight.shape[1]
    k = cin // group
    w = weight.reshape(group, k, mpg, *weight.shape[2:]).swapaxes(1, 2)
    return w.reshape(group * mpg, k, *weight.shape[2:])


@register("Conv", "ConvTranspose")
class ConvRule(Rule):
    def propagate(self, node, ctx):
        weight = ctx.const(node.input(1))
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

        if group > 1 and k == 1 and x is not None:
            kind = "depthwise"
            y = ChannelMap(rank, (1,), np.repeat(x.labels, m))
            out_labels = y.labels
            if transposed:  # weight (cin, m, ...): out channel c*m+j sits at [c, j]
                ctx.param(node, 1, {0: 0, 1: 1}, out_labels.reshape(group, m))
            else:
                ctx.param(node, 1, {0: 0}, out_labels)
        elif group > 1:
            kind = "grouped"
            y = ctx.new_map(node, rank, (1,), (cout,))
            grid_out = y.labels.reshape(group, m)
            ctx.space.unify_along(grid_out, 0)
            if x is not None:
                grid_in = x.labels.reshape(group, k)
                ctx.space.unify_along(grid_in, 0)
                if transposed:
                    ctx.param(node, 1, {0: 0}, x.labels, consume=True)
                else:
                    ctx.param(node, 1, {0: 0, 1: 1}, np.repeat(grid_in, m, axis=0), consume=True)
            if transposed:  # weight (g*k, m, ...): row c belongs to group c // k
                ctx.param(node, 1, {0: 0, 1: 1}, np.repeat(grid_out, k, axis=0))
            else:
                ctx.param(node, 1, {0: 0}, y.labels)
        else:
            kind = "dense"
            y = ctx.new_map(node, rank, (1,), (cout,))
            ctx.param(node, 1, {out_axis: 0}, y.labels)
            if x is not None:
                ctx.param(node, 1, {in_axis: 0}, x.labels, consume=True)
        if node.input(2):
            if ctx.const(node.input(2)) is None:
                return ctx.barrier(node, "bias is not a constant")
            ctx.param(node, 2, {0: 0}, y.labels)
        ctx.set_map(node.proto.output[0], y)
        ctx.note(node, kind=kind, m=m)

    def rewrite(self, node, ctx):
        info = ctx.note_of(node)
        if info["kind"] == "depthwise":
            kept = int(ctx.keep(node.proto.output[0]).sum())
            node.set_attr("group", kept // info["m"])
