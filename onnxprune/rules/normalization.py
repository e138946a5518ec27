"""Normalizations with per-channel parameters along axis 1."""

from __future__ import annotations

from .base import Rule, register


@register("BatchNormalization", "InstanceNormalization")
class PerChannelNormRule(Rule):
    """Statistics are per channel, so channels pass through; slice scale, bias, mean, var."""

    def propagate(self, node, ctx):
        x = ctx.map(node.input(0))
        if x is None:
            return
        if x.axes != (1,):
            return ctx.barrier(node, "channels are not tracked on axis 1")
        for i in range(1, len(node.proto.input)):
            if ctx.const(node.input(i)) is None:
                return ctx.barrier(node, "parameters are not constants")
        for i in range(1, len(node.proto.input)):
            ctx.param(node, i, {0: 0}, x.labels, score=(i == 1))
        if len(node.proto.output) > 1 and any(node.proto.output[1:]):
            return ctx.barrier(node, "training-mode outputs are used")
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node)


@register("GroupNormalization")
class GroupNormRule(Rule):
    """Statistics are shared within a group, so only whole groups can go: ``num_groups`` shrinks.

    Scale and bias are per group up to opset 18 and per channel from opset 21.
    """

    def propagate(self, node, ctx):
        x = ctx.map(node.input(0))
        if x is None:
            return
        groups = int(node.attr("num_groups"))
        channels = x.labels.size
        if x.axes != (1,) or channels % groups:
            return ctx.barrier(node, "channels are not tracked on axis 1")
        grid = x.labels.reshape(groups, channels // groups)
        ctx.space.unify_along(grid, 1)
        for i in (1, 2):
            value = ctx.const(node.input(i))
            if value is None:
                return ctx.barrier(node, "scale or bias is not a constant")
            labels = grid[:, 0] if value.shape[0] == groups and groups != channels else x.labels
            ctx.param(node, i, {0: 0}, labels, score=(i == 1))
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node, per_group=channels // groups)

    def rewrite(self, node, ctx):
        kept = int(ctx.keep(node.input(0)).sum())
        node.set_attr("num_groups", kept // ctx.note_of(node)["per_group"])


@register("LayerNormalization")
class LayerNormRule(Rule):
    """Normalizes over axes [axis, rank): tracked channels may only live before ``axis``."""

    def propagate(self, node, ctx):
        x = ctx.map(node.input(0))
        if x is None:
            return
        axis = int(node.attr("axis", -1))
        axis = axis + x.rank if axis < 0 else axis
        if any(a >= axis for a in x.axes):
            return ctx.barrier(node, "normalizes over the tracked channels")
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node)
