"""Shape: reading a tensor's shape is harmless unless the channel count is used."""

from __future__ import annotations

from .base import InputRule, normalize_axis, register
from .shape_values import SHAPE_ARITHMETIC

# Readers that account for every entry of the shape they take (see shape_values).
TRACED_TERMINALS = {("Reshape", 1), ("Resize", 3), ("Slice", 1), ("Slice", 2), ("Expand", 1)}
# Readers of a derived shape vector that cannot leak a channel count: its length only, or
# the vector itself reshaped (a Reshape's data input, not its target).
LENGTH_ONLY = {("Shape", 0)}
VALUE_PRESERVING = {("Reshape", 0)}


@register("Shape")
class ShapeRule(InputRule):
    """After pruning, Shape reports the new channel count. That is only safe where the count
    reaches nothing but shape arithmetic ending in a Reshape target, Resize sizes or Slice bounds
    whose rule checked the entry against the channels (``shape_values``); otherwise it is a
    barrier."""

    def follow(self, node, ctx, x):
        start = normalize_axis(int(node.attr("start", 0)), x.rank)
        end = node.attr("end")
        end = x.rank if end is None else min(normalize_axis(int(end), x.rank), x.rank)
        positions = {a - start for a in x.axes if start <= a < end}
        if positions:
            ctx.defer(lambda roots: self._check(node, ctx, positions, end - start))

    def _check(self, node, ctx, positions, length) -> None:
        out = node.proto.output[0]
        stack, seen = [out], set()
        while stack:
            name = stack.pop()
            for reader in ctx.graph.consumers.get(name, []):
                if name == out and _reads_only_other_entries(reader, ctx, positions, length):
                    continue
                slots = {(reader.op, i) for i, n in enumerate(reader.proto.input) if n == name}
                if slots & TRACED_TERMINALS and ctx.notes.get(reader.index, {}).get("traced"):
                    continue
                if slots <= LENGTH_ONLY:
                    continue
                follow = reader.op in SHAPE_ARITHMETIC or (slots and slots <= VALUE_PRESERVING)
                if follow and reader.index not in seen:
                    seen.add(reader.index)
                    stack.extend(o for o in reader.proto.output if o)
                    continue
                if follow:
                    continue
                ctx.late_barrier(node, f"the channel count is read by {reader.label} "
                                       f"({reader.op})", (node.input(0),))
                return


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
