"""Gather: an embedding lookup creates channels; a gather of activations along another axis
passes them through.

* ``Gather(table, ids)`` with a constant float table [V, D] and ``axis=0`` is an embedding: its
  output [..., D] gets fresh atoms along the last axis, and the table's columns are sliced with
  them (it *creates* the hidden size of a transformer, as a Conv creates its channels).
* ``Gather(x, indices)`` of a tracked activation along an untracked axis (ViT's class token
  ``x[:, 0]``) keeps the channels; the tracked axes move by the rank the indices add or remove.
* Along a tracked axis, constant indices pick positions of the label grid (``q, k, v =
  qkv[0], qkv[1], qkv[2]`` after a packed projection is reshaped to [3, heads, head_dim]):
  the output carries the picked labels, and the indices are renumbered to the kept positions.
* Gathers of shape vectors are read by ``shape_values``; untracked ones need nothing here.
"""

from __future__ import annotations

import numpy as np

from ..graph import ChannelMap
from .base import Rule, normalize_axis, register


@register("Gather")
class GatherRule(Rule):
    def propagate(self, node, ctx):
        data, indices = node.input(0), node.input(1)
        if ctx.map(indices) is not None:
            return ctx.barrier(node, "the indices carry tracked channels")
        x = ctx.map(data)
        if x is None:
            return self._embedding(node, ctx)
        axis = normalize_axis(int(node.attr("axis", 0)), x.rank)
        if axis in x.axes:
            return self._pick(node, ctx, x, axis)
        index_rank = ctx.rank(indices)
        if index_rank is None:
            return ctx.barrier(node, "the indices have an unknown rank")
        shift = index_rank - 1
        axes = tuple(a + shift if a > axis else a for a in x.axes)
        ctx.set_map(node.proto.output[0], x.with_axes(x.rank + shift, axes))
        ctx.note(node)

    @staticmethod
    def _pick(node, ctx, x, axis):
        index = ctx.const(node.input(1))
        j = x.axes.index(axis)
        width = x.labels.shape[j]
        if index is None or index.ndim > 1 or not np.issubdtype(index.dtype, np.integer):
            return ctx.barrier(node, "gathers along the tracked channels at run-time indices")
        positions = np.where(index < 0, index + width, index).astype(np.int64)
        if positions.size == 0 or positions.min() < 0 or positions.max() >= width:
            return ctx.barrier(node, "gather indices out of range")
        if positions.ndim == 1 and len(set(positions.tolist())) != positions.size:
            return ctx.barrier(node, "gathers a tracked position twice")
        labels = np.take(x.labels, positions, axis=j)
        if positions.ndim == 0:
            axes = tuple(a - 1 if a > axis else a for a in x.axes if a != axis)
            if not axes:
                return ctx.barrier(node, "picks a single channel")
            ctx.set_map(node.proto.output[0], ChannelMap(x.rank - 1, axes, labels))
        else:
            ctx.set_map(node.proto.output[0], ChannelMap(x.rank, x.axes, labels))
        ctx.note(node, pick=(axis, positions))

    def rewrite(self, node, ctx):
        pick = ctx.note_of(node).get("pick")
        if pick is None:
            return
        axis, positions = pick
        keep = ctx.axis_keep(node.input(0))[axis]
        if keep.all():
            return
        new_index = np.cumsum(keep) - 1
        kept = positions if positions.ndim == 0 else positions[keep[positions]]
        if not np.all(keep[kept]):
            raise ValueError("a gathered position was removed")
        old = ctx.const(node.input(1))
        ctx.graph.set_const(node, 1, new_index[kept].astype(old.dtype))

    @staticmethod
    def _embedding(node, ctx):
        table = ctx.const(node.input(0))
        if (table is None or table.ndim != 2 or not np.issubdtype(table.dtype, np.floating)
                or int(node.attr("axis", 0)) != 0 or table.shape[1] < 2):
            return
        index_rank = ctx.rank(node.input(1))
        if index_rank is None:
            return
        out = ctx.new_map(node, index_rank + 1, (index_rank,), (table.shape[1],))
        ctx.param(node, 0, {1: 0}, out.labels)
        ctx.set_map(node.proto.output[0], out)
        ctx.note(node)
