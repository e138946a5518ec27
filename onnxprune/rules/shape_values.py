"""Dims computed at run time: ``Shape(T)[axis]`` flowing into a Reshape target or Resize sizes.

Exporters often build shape tensors from the data (``x.view(b, g, c // g, h, w)`` becomes
Shape → Gather → Div → Unsqueeze → Concat). After pruning such an entry recomputes itself from
the pruned tensor, which is right only if it stays proportional to the channels it describes.
``trace_dim`` reads the entry as ``Shape(T)[axis] · num / den``; ``require_proportional`` checks,
once all channels are grouped, that for every component the counts agree, so the relation holds
for *any* set of removed channels. Otherwise the channels are frozen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from onnx import numpy_helper

from .base import normalize_axis

PASS_THROUGH = {"Cast", "Unsqueeze", "Squeeze", "Identity"}
SHAPE_ARITHMETIC = PASS_THROUGH | {"Gather", "Slice", "Div", "Mul", "Add", "Concat", "Equal",
                                   "Where", "ReduceProd", "Max", "Min"}


@dataclass(frozen=True)
class DimExpr:
    """((Shape(tensor)[axis] + add) // den) · num, the forms exporters write for
    ``c // g`` and for ``torch.chunk`` bounds.

    ``times``: dynamic axes of the same tensor multiplied in (tf2onnx's ReduceProd of
    [batch, heads] for heads merged with the batch; static ones are folded into ``num``).
    ``peers``: other entries this one is the Max or Min of (tf2onnx broadcasts two operands'
    batch dims that way); each must follow the channels for the result to.
    """

    tensor: str
    axis: int
    num: int = 1
    den: int = 1
    add: int = 0
    times: tuple[int, ...] = ()
    peers: tuple["DimExpr", ...] = ()

    def value(self, dim: int) -> int:
        return (dim + self.add) // self.den * self.num

    @property
    def plain(self) -> bool:
        """One dim of one tensor, no product or peers: ``value`` gives the entry."""
        return not self.times and not self.peers


def trace_dim(ctx, name: str) -> DimExpr | None:
    """``name`` (a one-element int tensor) as a DimExpr, or None."""
    num, den, add = 1, 1, 0
    for _ in range(16):
        node = ctx.graph.producer.get(name)
        if node is None:
            return None
        if node.op in PASS_THROUGH:
            name = node.input(0)
        elif node.op in ("Div", "Mul", "Add"):
            operand = ctx.const(node.input(1))
            if operand is None or operand.size != 1 or add:
                return None
            value = int(operand.ravel()[0])
            if node.op == "Add":
                add = value
            elif value <= 0 or (node.op == "Mul" and den > 1):
                return None
            elif node.op == "Div":
                den *= value
            else:
                num *= value
            name = node.input(0)
        elif node.op in ("Gather", "Slice"):
            picked = _picked_axes(ctx, name)
            if picked is None or len(picked[1]) != 1:
                return None
            return DimExpr(picked[0], picked[1][0], num, den, add)
        elif node.op == "ReduceProd" and (den, add) == (1, 0):
            return _product(ctx, node, num)
        elif node.op in ("Max", "Min") and (num, den, add) == (1, 1, 0):
            exprs = [trace_dim(ctx, operand) for operand in node.proto.input]
            return _with_peers(exprs)
        else:
            return None
    return None


def _with_peers(exprs) -> DimExpr | None:
    if not exprs or any(e is None or e.peers for e in exprs):
        return None
    first = exprs[0]
    return DimExpr(first.tensor, first.axis, first.num, first.den, first.add, first.times,
                   tuple(exprs[1:]))


def _product(ctx, node, num: int) -> DimExpr | None:
    """A ReduceProd over whole picked dims of one Shape: the tracked dim (if any) times the
    rest, static ones folded into ``num``."""
    if node.input(1) or node.attr("axes") not in (None, [0]):
        return None
    picked = _picked_axes(ctx, node.input(0))
    shape = ctx.shape(picked[0]) if picked else None
    if not picked or shape is None:
        return None
    tensor, axes = picked
    cmap = ctx.map(tensor)
    tracked = [a for a in axes if cmap is not None and a in cmap.axes]
    axis = tracked[0] if tracked else axes[0]
    rest = [a for a in axes if a != axis]
    static = [shape[a] for a in rest if isinstance(shape[a], int)]
    times = tuple(a for a in rest if not isinstance(shape[a], int))
    return DimExpr(tensor, axis, num * int(np.prod(static, dtype=np.int64)), times=times)


def _picked_axes(ctx, name: str):
    """(tensor, axes) when ``name`` is Shape(tensor), or a Gather of constant indices or a
    Slice (step 1) of it: the axes whose sizes it lists, in order."""
    node = ctx.graph.producer.get(name)
    if node is None:
        return None
    if node.op == "Shape":
        span = _shape_span(ctx, node)
        return None if span is None else (node.input(0), list(range(span[0], sum(span))))
    source = ctx.graph.producer.get(node.input(0))
    if source is None or source.op != "Shape" or node.op not in ("Gather", "Slice"):
        return None
    span = _shape_span(ctx, source)
    if span is None:
        return None
    start, length = span
    if node.op == "Gather":
        index = ctx.const(node.input(1))
        if int(node.attr("axis", 0)) != 0 or index is None or index.ndim > 1:
            return None
        picked = [normalize_axis(int(i), length) for i in index.ravel()]
        if any(not 0 <= p < length for p in picked):
            return None
    else:
        starts, ends = ctx.const(node.input(1)), ctx.const(node.input(2))
        steps = ctx.const(node.input(4)) if node.input(4) else None
        if starts is None or ends is None or starts.size != 1 or ends.size != 1 or (
                node.input(4) and (steps is None or int(steps.ravel()[0]) != 1)):
            return None
        picked = list(range(length)[slice(int(starts[0]), int(ends[0]))])
    return source.input(0), [start + p for p in picked]


def _shape_span(ctx, shape_node) -> tuple[int, int] | None:
    """(first axis, number of entries) that a Shape node reports (opset 15 start/end)."""
    rank = ctx.rank(shape_node.input(0))
    if rank is None:
        return None
    start = min(max(normalize_axis(int(shape_node.attr("start", 0)), rank), 0), rank)
    end = shape_node.attr("end")
    end = rank if end is None else min(max(normalize_axis(int(end), rank), 0), rank)
    return start, max(end - start, 0)


def shape_source(ctx, name: str) -> str:
    """Look through wrappers that leave a shape vector's dims unchanged: a Reshape of the
    vector to [-1], a Cast, and torch's ``Where(v == -1, 1, v)`` written before an Expand (an entry
    read from a Shape is never negative, so it passes unchanged)."""
    for _ in range(8):
        node = ctx.graph.producer.get(name)
        if node is None or ctx.const(name) is not None:
            return name
        if node.op == "Reshape" and _is_flat_target(ctx, node.input(1)) or node.op == "Cast":
            name = node.input(0)      # (tf2onnx casts shape vectors to int32 and back)
        elif node.op == "Where":
            cond = ctx.graph.producer.get(node.input(0))
            if cond is None or cond.op != "Equal":
                return name
            value, other = node.input(2), cond.input(1) if cond.input(0) == node.input(2) \
                else cond.input(0) if cond.input(1) == node.input(2) else None
            if other is None or not _all_negative(ctx, other):
                return name
            name = value
        else:
            return name
    return name


def _is_flat_target(ctx, name: str) -> bool:
    value = ctx.const(name)
    return value is not None and value.size == 1 and int(value.ravel()[0]) == -1


def _all_negative(ctx, name: str) -> bool:
    """Is every entry of ``name`` negative? Constants, and ConstantOfShape fills times a
    constant (torch writes ``ones(shape) * -1``)."""
    value = ctx.const(name)
    if value is not None:
        return bool(np.all(value < 0))
    node = ctx.graph.producer.get(name)
    if node is None or node.op != "Mul":
        return False
    signs = []
    for operand in node.proto.input:
        const = ctx.const(operand)
        fill = ctx.graph.producer.get(operand)
        if const is not None and const.size == 1:
            signs.append(float(const.ravel()[0]))
        elif fill is not None and fill.op == "ConstantOfShape":
            attr = fill.attr("value")
            signs.append(float(numpy_helper.to_array(attr).ravel()[0]) if attr is not None
                         else 0.0)
        else:
            return False
    return len(signs) == 2 and signs[0] * signs[1] < 0


def locate_entry(ctx, shape_name: str, t: int):
    """Entry ``t`` of a 1-D shape tensor: ("const",) when the whole tensor is constant,
    ("piece", concat node index, input index, offset) for a constant piece of a Concat,
    ("dim", DimExpr or None) for a run-time entry, or None when it cannot be followed."""
    shape_name = shape_source(ctx, shape_name)
    if ctx.const(shape_name) is not None:
        return ("const",)
    producer = ctx.graph.producer.get(shape_name)
    if producer is None:
        return None
    if producer.op == "Shape":
        span = _shape_span(ctx, producer)
        return ("dim", None if span is None else DimExpr(producer.input(0), span[0] + t))
    if producer.op != "Concat":
        return None
    offset = 0
    for idx, piece in enumerate(producer.proto.input):
        shape = ctx.graph.shape(piece)
        length = shape[0] if shape and len(shape) == 1 else None
        if not isinstance(length, int):
            return None
        if offset <= t < offset + length:
            if ctx.const(piece) is not None:
                return ("piece", producer.index, idx, t - offset)
            if length == 1:
                return ("dim", trace_dim(ctx, piece))
            return ("dim", _slice_of_shape(ctx, piece, t - offset))
        offset += length
    return None


def _slice_of_shape(ctx, name: str, k: int) -> DimExpr | None:
    """Entry ``k`` of ``Shape(T)``, of a Slice (step 1) or Gather of constant indices of it
    (the [N, C] part of a Resize's sizes), or of the Max or Min of such vectors."""
    node = ctx.graph.producer.get(name)
    if node is not None and node.op in ("Max", "Min"):
        return _with_peers([_slice_of_shape(ctx, operand, k) for operand in node.proto.input])
    picked = _picked_axes(ctx, name)
    if picked is None or not 0 <= k < len(picked[1]):
        return None
    return DimExpr(picked[0], picked[1][k])


def channel_dim(ctx, expr: DimExpr | None) -> bool:
    """Does the expression read a tracked channel count?"""
    if expr is None:
        return False
    cmap = ctx.map(expr.tensor)
    reads = cmap is not None and bool({expr.axis, *expr.times} & set(cmap.axes))
    return reads or any(channel_dim(ctx, peer) for peer in expr.peers)


def _slice_roots(roots: np.ndarray, cmap, axis: int) -> list[frozenset]:
    """The units found at each position along one tracked axis (a position is kept while
    any of them is)."""
    k = cmap.axes.index(axis)
    moved = np.moveaxis(roots[cmap.labels], k, 0).reshape(cmap.labels.shape[k], -1)
    return [frozenset(np.unique(row).tolist()) for row in moved]


def require_proportional(ctx, node, out_name: str, out_axis: int, expr: DimExpr) -> None:
    """After grouping, check kept(out along out_axis) == kept(T along axis) · num / den for
    every possible removal (for each peer of a Max/Min too); freeze the tensors' channels if
    it cannot be guaranteed."""

    def check(roots: np.ndarray) -> None:
        exprs = (expr,) + expr.peers
        if not all(_proportional(ctx, roots, out_name, out_axis, e) for e in exprs):
            ctx.late_barrier(node, "a run-time shape entry would not follow the pruned channels",
                             (out_name,) + tuple(e.tensor for e in exprs))

    ctx.defer(check)


def require_fixed(ctx, node, out_name: str, out_axis: int) -> None:
    """A run-time entry read from a dim no pruning changes (torch's ``d // heads`` with ``d``
    from an untracked input) sizes a tracked axis: after grouping, check that every unit
    spans that whole axis (whole heads go, head_dim stays), so its count never changes."""

    def check(roots: np.ndarray) -> None:
        out_map = ctx.map(out_name)
        sigs = (_slice_roots(roots, out_map, out_axis)
                if out_map is not None and out_axis in out_map.axes else [])
        if not sigs or len(set(sigs)) != 1:
            ctx.late_barrier(node, "a run-time shape entry is fixed but its channels may go",
                             (out_name,))

    ctx.defer(check)


def _proportional(ctx, roots, out_name: str, out_axis: int, expr: DimExpr) -> bool:
    out_map, src_map = ctx.map(out_name), ctx.map(expr.tensor)
    if not (out_map is not None and src_map is not None and expr.axis in src_map.axes
            and out_axis in out_map.axes and expr.add == 0
            and not set(expr.times) & set(src_map.axes)):
        return False
    out_sigs = _slice_roots(roots, out_map, out_axis)
    src_sigs = _slice_roots(roots, src_map, expr.axis)
    if (expr.num, expr.den) == (1, 1) and Counter(out_sigs) == Counter(src_sigs):
        return True   # the same units at the same number of positions: counts always agree
    if not all(len(s) == 1 for s in out_sigs + src_sigs):
        return False
    n_out = Counter(next(iter(s)) for s in out_sigs)
    n_src = Counter(next(iter(s)) for s in src_sigs)
    return all(n_out.get(r, 0) * expr.den == n_src.get(r, 0) * expr.num
               for r in set(n_out) | set(n_src))


def write_kept_counts(ctx, entries: dict, keep: dict) -> None:
    """Rewrite constant shape entries to the kept channel counts: ``entries`` maps an output
    axis to (owner node index, input index, offset) of the constant that holds its size."""
    for axis, (owner_index, index, offset) in entries.items():
        owner = ctx.graph.nodes[owner_index]
        values = ctx.const(owner.input(index)).copy()
        values.ravel()[offset] = int(keep[axis].sum())
        ctx.graph.set_const(owner, index, values)
