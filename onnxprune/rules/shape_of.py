"""Shape: reading a tensor's shape is harmless unless the channel count is used."""

from __future__ import annotations

from .base import Rule, normalize_axis, register


@register("Shape")
class ShapeRule(Rule):
    """Allowed when every reader picks only non-channel entries (Gather/Slice with constants);
    otherwise the channel count would silently change downstream, so it is a barrier."""

    def propagate(self, node, ctx):
        x = ctx.map(node.input(0))
        if x is None:
            return
        start = normalize_axis(int(node.attr("start", 0)), x.rank)
        end = node.attr("end")
        end = x.rank if end is None else min(normalize_axis(int(end), x.rank), x.rank)
        positions = {a - start for a in x.axes if start <= a < end}
        if not positions:
            return
        for reader in ctx.graph.consumers.get(node.proto.output[0], []):
            if not _reads_only_other_entries(reader, ctx, positions, end - start):
                return ctx.barrier(node, f"the channel count is read by {reader.label}")


def _reads_only_other_entries(reader, ctx, positions, length) -> bool:
    if reader.op == "Gather" and int(reader.attr("axis", 0)) == 0:
        indices = ctx.const(reader.input(1))
        if indices is None:
            return False
        picked = {normalize_axis(int(i), length) for i in indices.ravel()}
        return not picked & positions
    if reader.op == "Slice" and reader.input(1):
        starts, ends = ctx.const(reader.input(1)), ctx.const(reader.input(2))
        axes = ctx.const(reader.input(3)) if reader.input(3) else None
        steps = ctx.const(reader.input(4)) if reader.input(4) else None
        if starts is None or ends is None or (axes is not None and list(axes) != [0]) or (
                reader.input(3) and axes is None) or (steps is not None and list(steps) != [1]):
            return False
        picked = set(range(length)[slice(int(starts[0]), int(ends[0]))])
        return not picked & positions
    return False
