"""Normalizations: per-channel (BN, IN), per-group (GN), and LayerNorm over the hidden size."""

from __future__ import annotations

from .base import InputRule, register
from .hidden import mask_layer_norm


@register("BatchNormalization", "InstanceNormalization")
class PerChannelNormRule(InputRule):
    """Statistics are per channel, so channels pass through; slice scale, bias, mean, var."""

    scale_input = 1
    streams = True

    def fuses_after(self, node, producer, constant_inputs):
        return producer == "Conv" and node.op == "BatchNormalization"

    def follow(self, node, ctx, x):
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
class GroupNormRule(InputRule):
    """Statistics are shared within a group, so only whole groups can go: ``num_groups`` shrinks.

    Scale and bias are per group up to opset 18 and per channel from opset 21.
    """

    scale_input = 1
    streams = True

    def follow(self, node, ctx, x):
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
class LayerNormRule(InputRule):
    """Normalizes over axes [axis, rank). Channels before ``axis`` pass through untouched.

    Channels on the normalized axis itself (a transformer's hidden size, normalized over the
    last axis alone) may be pruned as a *hidden* group: scale and bias are sliced, the norm
    then averages over the kept channels (a different function, so the kind is opt-in).
    """

    scale_input = 1
    streams = True

    def follow(self, node, ctx, x):
        axis = int(node.attr("axis", -1))
        axis = axis + x.rank if axis < 0 else axis
        if not any(a >= axis for a in x.axes):
            ctx.set_map(node.proto.output[0], x)
            ctx.note(node, hidden=False)
            return
        if x.axes != (x.rank - 1,) or axis != x.rank - 1:
            return ctx.barrier(node, "normalizes over the tracked channels and other axes")
        if any(node.proto.output[1:]):
            return ctx.barrier(node, "its mean or inverse std-dev output is used")
        width = x.labels.size
        for i in (1, 2):
            if not node.input(i):
                continue
            value = ctx.const(node.input(i))
            if value is None or value.shape != (width,):
                return ctx.barrier(node, "scale or bias is not a constant per channel")
            ctx.param(node, i, {0: 0}, x.labels, score=(i == 1))
        ctx.mark_hidden(x.labels)
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node, hidden=True)

    def mask_rewrite(self, node, ctx):
        if ctx.note_of(node)["hidden"]:
            scale = ctx.const(node.input(1))
            mask_layer_norm(node, ctx, scale.dtype, float(node.attr("epsilon", 1e-5)))
