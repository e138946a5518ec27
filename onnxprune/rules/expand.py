"""Expand: broadcasting a tensor to a larger shape, as in grouped-query attention, where each
key/value head is repeated for the query heads that share it (``x[:, :, None].expand(...)``
followed by a Reshape that merges the copies)."""

from __future__ import annotations

from .base import InputRule, register
from .shape_values import (channel_dim, locate_entry, require_proportional, shape_source,
                           write_kept_counts)


@register("Expand")
class ExpandRule(InputRule):
    """Channels pass through when the target leaves the tracked axes as they are: an entry of
    1 (keep the input's size) or the channel count itself, which is rewritten when it is a
    constant and must be read from a tensor with the same channels when computed at run time.
    No other entry may read a channel count (the copies would change in number)."""

    def follow(self, node, ctx, x):
        target = node.input(1)
        if ctx.map(target) is not None:
            return ctx.barrier(node, "the target shape is itself tracked")
        length = ctx.shape(target)
        length = length[0] if length and len(length) == 1 else None
        in_shape = ctx.shape(node.input(0))
        if not isinstance(length, int) or in_shape is None:
            return ctx.barrier(node, "target length or input shape unknown")
        out_rank = max(x.rank, length)
        shift, lead = out_rank - x.rank, out_rank - length
        out_name = node.proto.output[0]
        entries = {}
        for t in range(length):
            axis = t + lead                   # output axis of target entry t
            tracked = (axis - shift) in x.axes
            loc = locate_entry(ctx, target, t)
            if loc is None or loc[0] == "dim":
                expr = loc[1] if loc else None
                if tracked and channel_dim(ctx, expr):
                    require_proportional(ctx, node, out_name, axis, expr)
                elif tracked or channel_dim(ctx, expr):
                    return ctx.barrier(node, "a target entry of the channel axis is not known")
                continue
            if not tracked:
                continue
            owner, index, offset = (node.index, 1, t) if loc[0] == "const" else loc[1:]
            value = int(ctx.const(ctx.graph.nodes[owner].input(index)).ravel()[offset])
            if value == in_shape[axis - shift] and value != 1:
                entries[axis] = (owner, index, offset)
            elif value != 1:
                return ctx.barrier(node, "the target broadcasts a channel axis")
        if shape_source(ctx, target) != target and any(
                owner == node.index for owner, _, _ in entries.values()):
            # a whole constant behind a wrapper: there is no constant to rewrite at input 1
            # (pieces of a Concat behind a Cast are rewritten where they are)
            return ctx.barrier(node, "constant entries behind a shape wrapper")
        ctx.set_map(out_name, x.with_axes(out_rank, tuple(a + shift for a in x.axes)))
        ctx.note(node, entries=entries, traced=True)

    def rewrite(self, node, ctx):
        write_kept_counts(ctx, ctx.note_of(node)["entries"], ctx.axis_keep(node.proto.output[0]))
