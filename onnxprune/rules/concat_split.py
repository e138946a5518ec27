"""Concat, Split and Slice: channel offsets along the tracked axis."""

from __future__ import annotations

import numpy as np

from ..graph import ChannelMap
from .base import InputRule, Rule, normalize_axis, register
from .shape_values import locate_entry, shape_source, trace_dim


@register("Concat")
class ConcatRule(Rule):
    """Along a tracked axis labels are concatenated (each input keeps its own atoms).

    An untracked input there gets frozen atoms of its width. Along another axis the inputs
    sit side by side on the same channels, so they are unified like a residual Add.
    """

    streams = True

    def parts(self, node) -> list[str]:
        """The inputs that are concatenated (QLinearConcat interleaves scales with them)."""
        return list(node.proto.input)

    def propagate(self, node, ctx):
        names = self.parts(node)
        maps = [ctx.map(n) for n in names]
        known = [m for m in maps if m is not None]
        if not known:
            return
        rank = known[0].rank
        axis = normalize_axis(int(node.attr("axis")), rank)
        axes = known[0].axes
        if any(m.rank != rank for m in known):
            return ctx.barrier(node, "inputs differ in rank")
        if all(m.axes == axes for m in known) and axis in axes:
            j = axes.index(axis)
            pieces = []
            for name, m in zip(names, maps):
                if m is None:
                    shape = ctx.shape(name)
                    dims = tuple(shape[a] for a in axes) if shape is not None else ()
                    if len(dims) != len(axes) or not all(isinstance(d, int) for d in dims):
                        return ctx.barrier(node, "an untracked input has unknown width")
                    m = ctx.new_map(node, rank, axes, dims)
                    ctx.freeze(m, f"{node.label}: concatenated with an untracked tensor")
                pieces.append(m.labels)
            if any(np.delete(p.shape, j).tolist() != np.delete(pieces[0].shape, j).tolist()
                   for p in pieces):
                return ctx.barrier(node, "inputs are tracked with different grids")
            ctx.set_map(node.proto.output[0], ChannelMap(rank, axes, np.concatenate(pieces, j)))
            ctx.note(node)
            return
        base = known[0]
        if axis in base.axes:
            return ctx.barrier(node, "inputs are tracked on different axes")
        io = {}
        for i, (name, m) in enumerate(zip(names, maps)):
            if m is None and not _slice_expanded_constant(ctx, name, base):
                if not _cache_input(ctx, name, base):
                    return ctx.barrier(node, f"input {i} is untracked but varies along the "
                                             f"channels" + _CACHE_HINT * _is_input(ctx, name))
                io[name] = (base.axes, base.labels)
        for m in known[1:]:
            if m.axes != base.axes or m.labels.shape != base.labels.shape:
                return ctx.barrier(node, "inputs are tracked on different axes")
            ctx.space.unify(base.labels, m.labels)
        output = node.proto.output[0]
        if io and output in ctx.graph.graph_outputs:
            io[output] = (base.axes, base.labels)      # the present cache
        ctx.set_map(output, base)
        ctx.note(node, io=io)


_CACHE_HINT = " (a KV cache input: --allow-cache-change lets it lose heads)"


def _is_input(ctx, name: str) -> bool:
    return name in ctx.graph.graph_inputs


def _cache_input(ctx, name: str, base: ChannelMap) -> bool:
    """A graph input joined to tracked tensors on another axis (Optimum's past key/value
    concatenated with the new tokens on the sequence axis) may lose the channels with them
    when the user allows the cache to change: the input and the output that carries it out
    (the present cache) are then resized (``io`` in the note)."""
    if not (ctx.allow_cache_change and _is_input(ctx, name)):
        return False
    shape = ctx.shape(name)
    return shape is not None and len(shape) == base.rank and all(
        shape[a] == base.labels.shape[j] for j, a in enumerate(base.axes))


def _slice_expanded_constant(ctx, name: str, base: ChannelMap) -> bool:
    """A learned token broadcast to the batch (ViT's class token: ``Expand(const [1, 1, D],
    [N, 1|-1, 1|-1])``) sits beside tracked tokens: slice the constant with their channels.
    The target must leave every tracked axis at the constant's own size."""
    expand = ctx.graph.producer.get(name)
    if expand is None or expand.op != "Expand":
        return False
    value = ctx.const(expand.input(0))
    if value is None or value.ndim != base.rank:
        return False
    if any(value.shape[a] != base.labels.shape[j] for j, a in enumerate(base.axes)):
        return False
    for a in base.axes:
        loc = locate_entry(ctx, expand.input(1), a)
        if loc is None or loc[0] == "dim":
            return False
        if loc[0] == "const":
            entry = ctx.const(shape_source(ctx, expand.input(1))).ravel()[a]
        else:
            entry = ctx.const(ctx.graph.nodes[loc[1]].input(loc[2])).ravel()[loc[3]]
        if int(entry) not in (1, -1):   # -1: torch's "keep this size" (see shape_source)
            return False
    ctx.param(expand, 0, {a: j for j, a in enumerate(base.axes)}, base.labels)
    return True


@register("Split")
class SplitRule(InputRule):
    """Split on the tracked axis hands each output its slice of the labels; the sizes are
    rewritten to the kept counts (as an input from opset 13, an attribute before)."""

    def follow(self, node, ctx, x):
        axis = normalize_axis(int(node.attr("axis", 0)), x.rank)
        outputs = list(node.proto.output)
        if axis not in x.axes:
            for out in outputs:
                ctx.set_map(out, x)
            ctx.note(node, along=False)
            return
        if x.axes != (axis,):
            return ctx.barrier(node, "splits a multi-axis channel grid")
        sizes = _split_sizes(node, ctx, x.labels.size, len(outputs))
        if sizes is None:
            return ctx.barrier(node, "split sizes are not constant")
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        for out, a, b in zip(outputs, offsets[:-1], offsets[1:]):
            ctx.set_map(out, ChannelMap(x.rank, x.axes, x.labels[a:b]))
        ctx.note(node, along=True)

    def rewrite(self, node, ctx):
        if not ctx.note_of(node)["along"]:
            return
        sizes = np.array([int(ctx.keep(o).sum()) for o in node.proto.output], dtype=np.int64)
        if ctx.graph.opset >= 13:
            if node.has_attr("num_outputs"):
                node.proto.attribute.remove(next(a for a in node.proto.attribute
                                                 if a.name == "num_outputs"))
            if node.input(1):
                ctx.graph.set_const(node, 1, sizes)
            else:
                ctx.add_const_input(node, 1, sizes, "split")
        else:
            node.set_attr("split", sizes.tolist())


def _split_sizes(node, ctx, width, count):
    if node.input(1):
        sizes = ctx.const(node.input(1))
        return None if sizes is None else [int(s) for s in sizes]
    if node.has_attr("split"):
        return [int(s) for s in node.attr("split")]
    if width % count == 0:
        return [width // count] * count
    part = -(-width // count)  # opset 18 num_outputs: the last chunk is smaller
    return [part] * (count - 1) + [width - part * (count - 1)]


@register("Slice")
class SliceRule(InputRule):
    """A step-1 slice of one tracked axis keeps a contiguous run of its labels (in a grid of
    several tracked axes, e.g. heads × head_dim, the other axes are untouched); other axes
    pass."""

    def follow(self, node, ctx, x):
        spec = _slice_spec(node, ctx, x.rank)
        if spec is None:
            return self._chunk(node, ctx, x)
        touched = [(k, a) for k, a in enumerate(spec["axes"]) if a in x.axes]
        if not touched:
            ctx.set_map(node.proto.output[0], x)
            ctx.note(node, along=None)
            return
        if len(touched) > 1:
            return ctx.barrier(node, "slices two tracked axes at once")
        k, axis = touched[0]
        if spec["steps"][k] != 1:
            return ctx.barrier(node, "strided slice of the channels")
        j = x.axes.index(axis)
        width = x.labels.shape[j]
        start, stop, _ = slice(spec["starts"][k], spec["ends"][k]).indices(width)
        stop = max(start, stop)
        ctx.set_map(node.proto.output[0], _take(x, j, start, stop))
        ctx.note(node, along=k, axis=axis, start=start, stop=stop)

    def _chunk(self, node, ctx, x):
        """``torch.chunk`` (or rotate_half's ``x[..., : d // 2]``) exported with run-time
        bounds ((C + a) // d · m): the d parts must keep equal counts for those bounds to stay
        right, so their channels are tied part to part. The bounds then recompute themselves;
        nothing is rewritten. A constant bound may be 0 or "to the end"."""
        axes = ctx.const(node.input(3)) if node.input(3) else None
        steps = ctx.const(node.input(4)) if node.input(4) else None
        axis = normalize_axis(int(axes.ravel()[0]), x.rank) if (
            axes is not None and axes.size == 1) else None
        if (axis not in x.axes or (node.input(4) and (
                steps is None or int(steps.ravel()[0]) != 1))):
            return ctx.barrier(node, "slice bounds are not constant")
        j = x.axes.index(axis)
        width = x.labels.shape[j]
        bounds, parts = [], None
        for end, name in enumerate((node.input(1), node.input(2))):
            value = ctx.const(name)
            if value is not None and value.size == 1 and (
                    int(value.ravel()[0]) == 0 or (end and int(value.ravel()[0]) >= width)):
                bounds.append(min(int(value.ravel()[0]), width))
                continue
            expr = trace_dim(ctx, name)
            if (expr is None or not expr.plain or expr.tensor != node.input(0) or expr.axis != axis
                    or not 0 <= expr.add < expr.den or width % expr.den
                    or (parts is not None and parts != expr.den)):
                return ctx.barrier(node, "slice bounds are not constant")
            parts = expr.den
            bounds.append(expr.value(width))
        if parts is None:
            return ctx.barrier(node, "slice bounds are not constant")
        moved = np.moveaxis(x.labels, j, 0)
        ctx.space.unify_along(moved.reshape((parts, width // parts) + moved.shape[1:]), 0)
        start, stop = bounds
        ctx.set_map(node.proto.output[0], _take(x, j, start, stop))
        ctx.note(node, along=None, traced=True)

    def rewrite(self, node, ctx):
        info = ctx.note_of(node)
        if info["along"] is None:
            return
        keep = ctx.axis_keep(node.input(0))[info["axis"]]
        new_start = int(keep[: info["start"]].sum())
        new_stop = new_start + int(keep[info["start"]: info["stop"]].sum())
        k = info["along"]
        if ctx.graph.opset >= 10:
            for idx, value in ((1, new_start), (2, new_stop)):
                bounds = ctx.const(node.input(idx)).copy()
                bounds[k] = value
                ctx.graph.set_const(node, idx, bounds)
        else:
            for name, value in (("starts", new_start), ("ends", new_stop)):
                bounds = list(node.attr(name))
                bounds[k] = value
                node.set_attr(name, bounds)


def _take(x: ChannelMap, j: int, start: int, stop: int) -> ChannelMap:
    """The map of ``x`` sliced to [start, stop) along its j-th tracked axis."""
    return ChannelMap(x.rank, x.axes, np.take(x.labels, np.arange(start, stop), axis=j))


def _slice_spec(node, ctx, rank):
    if ctx.graph.opset >= 10:
        starts, ends = ctx.const(node.input(1)), ctx.const(node.input(2))
        axes = ctx.const(node.input(3)) if node.input(3) else None
        steps = ctx.const(node.input(4)) if node.input(4) else None
        if starts is None or ends is None or (node.input(3) and axes is None) or (
                node.input(4) and steps is None):
            return None
        starts, ends = starts.tolist(), ends.tolist()
        axes = list(range(len(starts))) if axes is None else axes.tolist()
        steps = [1] * len(starts) if steps is None else steps.tolist()
    else:
        starts, ends = list(node.attr("starts")), list(node.attr("ends"))
        axes = list(node.attr("axes", range(len(starts))))
        steps = [1] * len(starts)
    axes = [normalize_axis(int(a), rank) for a in axes]
    return {"starts": starts, "ends": ends, "axes": axes, "steps": steps}
