"""Ops that move, merge or split axes: Reshape, Flatten, Transpose, Squeeze, Unsqueeze.

Labels follow the data: a Flatten into a Gemm repeats each channel's atom over its spatial
block; a Reshape that splits the channel axis into a grid keeps the grid rectangular: whole
rows go where later ops made each row one unit (attention heads), otherwise every row keeps the
same positions (channel shuffle: the group count stays, the groups shrink). Shape constants are
rewritten to the kept counts.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from ..graph import ChannelMap
from .base import InputRule, normalize_axis, register
from .shape_values import (channel_dim, locate_entry, require_fixed, require_proportional,
                           write_kept_counts)


def _static(dims) -> bool:
    return all(isinstance(d, int) for d in dims)


def _block(in_shape, out_shape, lo: int, hi: int):
    """Smallest runs of axes, in [a, b) and out [c, d), with equal static element counts that
    contain the tracked axes lo..hi. Matched from the left when the leading dims agree, else
    from the right (a dynamic batch the exporter renamed still lines up from the right)."""
    p = 0
    while p < lo and p < len(out_shape) and in_shape[p] == out_shape[p] and in_shape[p] is not None:
        p += 1
    found = _walk(in_shape, out_shape, p, lo, hi)
    if found is None:
        rev_in, rev_out = in_shape[::-1], out_shape[::-1]
        n, m = len(in_shape), len(out_shape)
        back = _walk(rev_in, rev_out, 0, n - 1 - hi, n - 1 - lo)
        if back is None:
            return None
        i, j = back
        return n - i, n, m - j, m
    i, j = found
    return p, i, p, j


def _walk(in_shape, out_shape, p: int, lo: int, hi: int):
    i, j, pin, pout = p, p, 1, 1
    while not (pin == pout and i > hi and (i > p or j > p)):
        if pin <= pout:
            if i >= len(in_shape) or not isinstance(in_shape[i], int):
                return None
            pin *= in_shape[i]
            i += 1
        else:
            if j >= len(out_shape) or not isinstance(out_shape[j], int):
                return None
            pout *= out_shape[j]
            j += 1
    return i, j


def _regroup(x: ChannelMap, in_shape, out_shape):
    """Carry labels from ``in_shape`` to ``out_shape`` of a row-major reshape.

    The tracked axes live in one block of axes with equal static sizes on both sides, or, when
    a dynamic dim sits between them (heads ... sequence ... head_dim), in one block each.
    Returns (out_axes, out_labels) or None when the channels cannot be followed.
    """
    if tuple(in_shape) == tuple(out_shape) and None not in in_shape:
        return x.axes, x.labels  # a no-op reshape (exporters write them around attention)
    if list(x.axes) != sorted(x.axes):
        order = np.argsort(x.axes)
        x = ChannelMap(x.rank, tuple(np.asarray(x.axes)[order].tolist()),
                       np.transpose(x.labels, order))
    blocks = _blocks(tuple(in_shape), tuple(out_shape), x.axes)
    if blocks is None:
        return None
    in_sizes, out_sizes = [1] * len(in_shape), [1] * len(out_shape)
    for a, b, c, d in blocks:
        in_sizes[a:b], out_sizes[c:d] = in_shape[a:b], out_shape[c:d]
    expand = [in_shape[k] if k in x.axes else 1 for k in range(len(in_shape))]
    full = np.broadcast_to(x.labels.reshape(expand), in_sizes).reshape(out_sizes)
    varying = []
    for k in range(full.ndim):
        first = np.take(full, [0], axis=k)
        if not np.array_equal(np.broadcast_to(first, full.shape), full):
            varying.append(k)
    if not varying:
        return None
    index = tuple(slice(None) if k in varying else 0 for k in range(full.ndim))
    return tuple(varying), full[index]


def _split_symbolic(shape):
    """Virtual axes of a shape: a dim like "12*batch" (ONNX Runtime's symbolic inference)
    becomes two, the symbol outer and the factor inner, as ``view(S, batch * 12, d)`` lays
    them out. Returns (virtual dims, real axis of each, is-factor-of-a-product flags) or None
    for a dim it cannot read."""
    dims, owner, factor = [], [], []
    for p, d in enumerate(shape):
        if isinstance(d, str) and "*" in d:
            parts = d.split("*")
            ints = [q for q in parts if q.strip().isdigit()]
            syms = [q.strip() for q in parts if not q.strip().isdigit()]
            if len(ints) != 1 or len(syms) != 1:
                return None
            dims += [syms[0], int(ints[0])]
            owner += [p, p]
            factor += [False, True]
        elif d is None:
            return None
        else:
            dims.append(d)
            owner.append(p)
            factor.append(False)
    return dims, owner, factor


def _regroup_tiled(x: ChannelMap, in_shape, out_shape):
    """``_regroup`` through dims that merge a dynamic batch with channels ("12*batch"): the
    shapes are split into virtual axes, the labels carried between those, and a product axis
    whose factor holds labels comes out tiled. Returns (axes, labels, tiled) or None."""
    vin, vout = _split_symbolic(in_shape), _split_symbolic(out_shape)
    if vin is None or vout is None:
        return None
    (in_dims, in_owner, in_factor), (out_dims, out_owner, out_factor) = vin, vout
    if len(in_dims) == len(in_shape) and len(out_dims) == len(out_shape):
        return None                                  # no product dims: nothing to add
    virtual_axes = []
    for j, a in enumerate(x.axes):
        spots = [v for v, p in enumerate(in_owner) if p == a and isinstance(in_dims[v], int)]
        if len(spots) != 1 or (a in x.tiled) != in_factor[spots[0]] \
                or in_dims[spots[0]] != x.labels.shape[j]:
            return None
        virtual_axes.append(spots[0])
    moved = _regroup(ChannelMap(len(in_dims), tuple(virtual_axes), x.labels), in_dims, out_dims)
    if moved is None:
        return None
    axes, labels = moved
    real = [out_owner[v] for v in axes]
    if len(set(real)) != len(real) or any(not isinstance(out_dims[v], int) for v in axes):
        return None
    tiled = tuple(sorted(out_owner[v] for v in axes if out_factor[v]))
    return tuple(real), labels, tiled


def _blocks(in_shape, out_shape, axes):
    """Blocks (a, b, c, d) holding the tracked axes: one block over all of them, else one per
    axis when those are disjoint, in order, and the dims between them agree."""
    found = _block(in_shape, out_shape, min(axes), max(axes))
    if found is not None:
        return [found] if all(found[0] <= t < found[1] for t in axes) else None
    blocks = [_block(in_shape, out_shape, t, t) for t in axes]
    if any(b is None or not b[0] <= t < b[1] for b, t in zip(blocks, axes)):
        return None
    edges_in = [0] + [e for a, b, _, _ in blocks for e in (a, b)] + [len(in_shape)]
    edges_out = [0] + [e for _, _, c, d in blocks for e in (c, d)] + [len(out_shape)]
    if edges_in != sorted(edges_in) or edges_out != sorted(edges_out):
        return None
    for k in range(0, len(edges_in), 2):   # the gaps before, between and after the blocks
        if _volume(in_shape[edges_in[k]:edges_in[k + 1]]) != _volume(
                out_shape[edges_out[k]:edges_out[k + 1]]):
            return None
    return blocks


def _volume(dims):
    """Element count of some dims as (static product, symbolic names); None if unknown."""
    if any(d is None for d in dims):
        return None, id(dims)
    static = int(np.prod([d for d in dims if isinstance(d, int)], dtype=np.int64))
    return static, tuple(sorted(d for d in dims if isinstance(d, str)))


def rectangular(ctx, labels) -> None:
    """A channel axis split into a grid must stay rectangular after pruning. If later nodes
    made every row one unit (attention heads) whole rows go; otherwise every row keeps the same
    positions (channel shuffle: the group count stays, the groups shrink)."""
    rows = labels.reshape(-1, labels.shape[-1])
    if all(len({ctx.space.find(int(a)) for a in row}) == 1 for row in rows):
        return
    for k in range(labels.ndim - 1):
        ctx.space.unify_along(labels, k)


def _carry(ctx, node, x, in_shape, out_shape):
    """Set the output map of a reshape-like node; returns the new map or None (barrier)."""
    if in_shape is None or out_shape is None:
        ctx.barrier(node, "input or output shape unknown")
        return None
    moved = _regroup(x, in_shape, out_shape) if not x.tiled else None
    tiled = ()
    if moved is None:
        moved = _regroup_tiled(x, in_shape, out_shape)
        if moved is not None:
            *moved, tiled = moved
    if moved is None:
        ctx.barrier(node, "channels sit in a block of dynamic or mismatched dims")
        return None
    axes, labels = moved
    if labels.ndim > 1:
        ctx.defer_shaping(lambda: rectangular(ctx, labels))
    y = ChannelMap(len(out_shape), axes, labels, tiled)
    ctx.set_map(node.proto.output[0], y)
    return y


@register("Reshape")
class ReshapeRule(InputRule):
    """Every entry of the target is accounted for: constants at channel axes are rewritten,
    run-time entries that read channel counts must stay proportional (``shape_values``).
    Heads merged with a dynamic batch (``[S, B, E] → [S, B·H, d]`` and back) are followed as
    tiled axes (see ``ChannelMap``)."""

    follows_tiled = True

    def follow(self, node, ctx, x):
        in_shape = ctx.shape(node.input(0))
        out_shape = _resolve_target(ctx, node, in_shape, ctx.shape(node.proto.output[0]))
        y = _carry(ctx, node, x, in_shape, out_shape)
        if y is None:
            return
        entries = {}
        for t in range(len(out_shape)):
            tracked = t in y.axes
            loc = locate_entry(ctx, node.input(1), t)
            if loc is None or loc[0] == "dim":
                expr = loc[1] if loc else None
                if channel_dim(ctx, expr) and tracked:
                    require_proportional(ctx, node, node.proto.output[0], t, expr)
                elif tracked and _fixed(ctx, expr, out_shape[t]):
                    require_fixed(ctx, node, node.proto.output[0], t)
                elif channel_dim(ctx, expr) or tracked:
                    return ctx.barrier(node, "target shape of the channel axis is not constant")
                continue
            if not tracked:
                continue
            owner, index, offset = (node.index, 1, t) if loc[0] == "const" else loc[1:]
            value = int(ctx.const(ctx.graph.nodes[owner].input(index))[offset])
            if value == 0 and not (t in x.axes and in_shape[t] == out_shape[t]):
                return ctx.barrier(node, "target shape copies a dim that changes")
            if value > 0:
                entries[t] = (owner, index, offset)
        ctx.note(node, entries=entries, traced=True)

    def rewrite(self, node, ctx):
        write_kept_counts(ctx, ctx.note_of(node)["entries"], ctx.axis_keep(node.proto.output[0]))


def _fixed(ctx, expr, size) -> bool:
    """Is the entry read from a static dim of a tensor without channels there (so pruning
    never changes it), with the value the axis has now?"""
    if expr is None or not expr.plain or channel_dim(ctx, expr):
        return False
    shape = ctx.shape(expr.tensor)
    dim = shape[expr.axis] if shape is not None and expr.axis < len(shape) else None
    return isinstance(dim, int) and isinstance(size, int) and expr.value(dim) == size


def _evaluate(ctx, expr, fallback):
    """The value of a run-time entry from T's inferred shape (a symbol if it is the dim as is)."""
    shape = ctx.shape(expr.tensor) if expr is not None and expr.plain else None
    if shape is None or expr.axis >= len(shape):
        return fallback
    dim = shape[expr.axis]
    if isinstance(dim, int):
        return expr.value(dim)
    return dim if (expr.num, expr.den, expr.add) == (1, 1, 0) and dim else fallback


def _resolve_target(ctx, node, in_shape, inferred):
    """The output shape, filling what inference left open from the target's constant entries
    (0 copies an input dim; -1 is what remains once equal symbols cancel out)."""
    if inferred is None or in_shape is None or all(isinstance(d, int) for d in inferred):
        return inferred
    dims = list(inferred)
    for t in range(len(dims)):
        loc = locate_entry(ctx, node.input(1), t)
        if loc is None:
            continue
        if loc[0] == "dim":
            dims[t] = _evaluate(ctx, loc[1], dims[t])
            continue
        owner, index, offset = (node.index, 1, t) if loc[0] == "const" else loc[1:]
        value = int(ctx.const(ctx.graph.nodes[owner].input(index))[offset])
        if value == -1:   # what remains: keep a size inference found (8, "12*batch")
            dims[t] = dims[t] if isinstance(dims[t], int) or isinstance(dims[t], str) and \
                not dims[t].startswith("unk__") else None
        else:
            dims[t] = in_shape[t] if value == 0 else value
    if dims.count(None) == 1 and None not in in_shape:
        known = [d for d in dims if d is not None]
        if Counter(d for d in known if isinstance(d, str)) == Counter(
                d for d in in_shape if isinstance(d, str)):
            total = int(np.prod([d for d in in_shape if isinstance(d, int)], dtype=np.int64))
            rest = int(np.prod([d for d in known if isinstance(d, int)], dtype=np.int64))
            if rest and total % rest == 0:
                dims[dims.index(None)] = total // rest
    return tuple(dims)


@register("Flatten")
class FlattenRule(InputRule):
    """Flatten is a Reshape to 2-D: the leading dims become one opaque dim."""

    def follow(self, node, ctx, x):
        in_shape = ctx.shape(node.input(0))
        if in_shape is None:
            return ctx.barrier(node, "input shape unknown")
        axis = normalize_axis(int(node.attr("axis", 1)), x.rank)
        tail = tuple(in_shape[axis:])
        if any(a < axis for a in x.axes) or not _static(tail):
            return ctx.barrier(node, "channels are not in a static flattened block")
        head = "flatten-head" if axis > 0 else 1
        virtual = x.with_axes(1 + len(tail), tuple(1 + a - axis for a in x.axes))
        if _carry(ctx, node, virtual, (head,) + tail,
                  (head, int(np.prod(tail, dtype=np.int64)))) is not None:
            ctx.note(node)


@register("Transpose")
class TransposeRule(InputRule):
    follows_tiled = True
    streams = True

    def follow(self, node, ctx, x):
        perm = list(node.attr("perm", list(range(x.rank))[::-1]))
        new_pos = {old: new for new, old in enumerate(perm)}
        order = sorted(range(len(x.axes)), key=lambda k: new_pos[x.axes[k]])
        axes = tuple(new_pos[x.axes[k]] for k in order)
        tiled = tuple(sorted(new_pos[a] for a in x.tiled))
        ctx.set_map(node.proto.output[0],
                    ChannelMap(x.rank, axes, x.labels.transpose(order), tiled))
        ctx.note(node)


def _axes_operand(node, ctx):
    if node.input(1):
        value = ctx.const(node.input(1))
        return None if value is None else [int(a) for a in value.ravel()]
    value = node.attr("axes")
    return None if value is None else [int(a) for a in value]


@register("Squeeze")
class SqueezeRule(InputRule):
    def follow(self, node, ctx, x):
        axes = _axes_operand(node, ctx)
        if axes is None:
            shape = ctx.shape(node.input(0))
            if node.input(1) or shape is None or not _static(shape):
                return ctx.barrier(node, "squeezed axes unknown")
            axes = [a for a, d in enumerate(shape) if d == 1]
        axes = {normalize_axis(a, x.rank) for a in axes}
        if axes & set(x.axes):
            return ctx.barrier(node, "squeezes a channel axis")
        new = tuple(a - sum(1 for s in axes if s < a) for a in x.axes)
        ctx.set_map(node.proto.output[0], ChannelMap(x.rank - len(axes), new, x.labels))
        ctx.note(node)


@register("Unsqueeze")
class UnsqueezeRule(InputRule):
    def follow(self, node, ctx, x):
        axes = _axes_operand(node, ctx)
        if axes is None:
            return ctx.barrier(node, "unsqueezed axes unknown")
        rank = x.rank + len(axes)
        inserted = sorted(normalize_axis(a, rank) for a in axes)
        kept = [a for a in range(rank) if a not in inserted]
        ctx.set_map(node.proto.output[0],
                    ChannelMap(rank, tuple(kept[a] for a in x.axes), x.labels))
        ctx.note(node)
