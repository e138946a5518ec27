"""Ops that work on spatial or other non-channel axes: pools, Resize, Pad, reductions, Softmax.

Each passes the channels through unchanged as long as it leaves the tracked axes alone.
"""

from __future__ import annotations

from onnx import helper

from .base import InputRule, normalize_axis, register
from .hidden import MASKABLE_REDUCTIONS, mask_reduction
from .shape_values import channel_dim, locate_entry, require_proportional


def _pass(node, ctx, x):
    ctx.set_map(node.proto.output[0], x)
    ctx.note(node)


@register("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
          "GlobalLpPool")
class PoolRule(InputRule):
    """Pools over the axes after 1. tf2onnx writes a mean over the last axis of a 3-D
    [B, T, C] tensor (a Keras LayerNorm's moments) as GlobalAveragePool: with the channels
    there it is a reduction across them, the hidden size (see ``ReduceRule``)."""

    streams = True

    def follow(self, node, ctx, x):
        if node.op == "GlobalAveragePool" and x.rank == 3 and x.axes == (2,):
            dtype = ctx.graph.dtypes.get(node.input(0))
            if dtype is None:
                return ctx.barrier(node, "averages over the channels (element type unknown)")
            ctx.mark_hidden(x.labels)
            ctx.note(node, hidden=(2, 3, helper.tensor_dtype_to_np_dtype(dtype)))
            return
        if x.axes != (1,):
            return ctx.barrier(node, "channels are not on axis 1")
        if len(node.proto.output) > 1 and node.proto.output[1]:
            return ctx.barrier(node, "MaxPool indices are used")
        _pass(node, ctx, x)

    def mask_rewrite(self, node, ctx):
        hidden = ctx.note_of(node).get("hidden")
        if hidden:
            mask_reduction(node, ctx, *hidden)


@register("Resize", "Upsample")
class ResizeRule(InputRule):
    """Scales must be 1 on the channel axes; constant output sizes are rewritten, run-time
    sizes built from Shape must stay proportional to the channels (``shape_values``)."""

    def follow(self, node, ctx, x):
        axes = node.attr("axes")
        axes = list(range(x.rank)) if axes is None else [normalize_axis(a, x.rank) for a in axes]
        scales_at = 1 if (node.op == "Upsample" or ctx.graph.opset < 11) else 2
        scales = node.attr("scales") if node.op == "Upsample" and ctx.graph.opset < 9 else None
        if scales is None and node.input(scales_at):
            scales = ctx.const(node.input(scales_at))
            if scales is None:
                return ctx.barrier(node, "scales are not constant")
        if scales is not None and len(scales):
            if any(float(scales[k]) != 1.0 for k, a in enumerate(axes) if a in x.axes):
                return ctx.barrier(node, "resizes the channel axis")
        sizes_name = node.input(3) if scales_at == 2 else ""
        entries = []
        if sizes_name and ctx.const(sizes_name) is not None:
            entries = [(k, a) for k, a in enumerate(axes) if a in x.axes]
        elif sizes_name:
            for k, a in enumerate(axes):
                loc = locate_entry(ctx, sizes_name, k)
                expr = loc[1] if loc and loc[0] == "dim" else None
                if a in x.axes and channel_dim(ctx, expr):
                    require_proportional(ctx, node, node.proto.output[0], a, expr)
                elif a in x.axes or channel_dim(ctx, expr):
                    return ctx.barrier(node, "output sizes of the channel axis are not known")
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node, entries=entries, traced=True)

    def rewrite(self, node, ctx):
        entries = ctx.note_of(node)["entries"]
        if not entries:
            return
        keep = ctx.axis_keep(node.input(0))
        sizes = ctx.const(node.input(3)).copy()
        for k, axis in entries:
            sizes[k] = int(keep[axis].sum())
        ctx.graph.set_const(node, 3, sizes)


@register("Pad")
class PadRule(InputRule):
    def follow(self, node, ctx, x):
        pads = node.attr("pads") if ctx.graph.opset < 11 else ctx.const(node.input(1))
        if pads is None:
            return ctx.barrier(node, "pads are not constant")
        pads = [int(p) for p in pads]
        axes = list(range(x.rank))
        if node.input(3):
            value = ctx.const(node.input(3))
            if value is None:
                return ctx.barrier(node, "pad axes are not constant")
            axes = [normalize_axis(int(a), x.rank) for a in value]
        half = len(pads) // 2
        if any(pads[k] or pads[k + half] for k, a in enumerate(axes) if a in x.axes):
            return ctx.barrier(node, "pads the channel axis")
        _pass(node, ctx, x)


@register("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
          "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
class ReduceRule(InputRule):
    """Reducing over spatial axes keeps the channels.

    A sum-like reduction over exactly the tracked axis (RMSNorm's mean of squares over the
    hidden size) reads across the channels: they may be pruned as a *hidden* group, and the
    reduction then runs over the kept ones. Any other reduction over them is a barrier.
    """

    streams = True

    def follow(self, node, ctx, x):
        if node.input(1):
            value = ctx.const(node.input(1))
            if value is None:
                return ctx.barrier(node, "reduced axes are not constant")
            axes = [int(a) for a in value.ravel()]
        else:
            axes = node.attr("axes")
        if not axes:
            return ctx.barrier(node, "reduces over every axis")
        axes = {normalize_axis(int(a), x.rank) for a in axes}
        if axes & set(x.axes):
            dtype = ctx.graph.dtypes.get(node.input(0))
            if (node.op not in MASKABLE_REDUCTIONS or axes != set(x.axes) or len(x.axes) != 1
                    or dtype is None):
                return ctx.barrier(node, "reduces over the channels")
            ctx.mark_hidden(x.labels)
            ctx.note(node, hidden=(x.axes[0], x.rank,
                                   helper.tensor_dtype_to_np_dtype(dtype)))
            return
        if int(node.attr("keepdims", 1)):
            return _pass(node, ctx, x)
        shifted = tuple(a - sum(1 for r in axes if r < a) for a in x.axes)
        ctx.set_map(node.proto.output[0], x.with_axes(x.rank - len(axes), shifted))
        ctx.note(node)

    def mask_rewrite(self, node, ctx):
        hidden = ctx.note_of(node).get("hidden")
        if hidden:
            mask_reduction(node, ctx, *hidden)


@register("Softmax", "LogSoftmax", "Hardmax")
class SoftmaxRule(InputRule):
    """Normalizes along one axis (or, before opset 13, every axis from ``axis`` on)."""

    streams = True

    def follow(self, node, ctx, x):
        if ctx.graph.opset >= 13:
            axis = normalize_axis(int(node.attr("axis", -1)), x.rank)
            mixed = axis in x.axes
        else:
            axis = normalize_axis(int(node.attr("axis", 1)), x.rank)
            mixed = any(a >= axis for a in x.axes)
        if mixed:
            return ctx.barrier(node, "normalizes across the channels")
        _pass(node, ctx, x)
