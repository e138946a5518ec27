"""MatMul between two activations, as in attention: scores = Q·Kᵀ and context = P·V.

Heads live on a batch axis of both operands. Removing a head must remove everything it owns
at once (its Q, K and V columns, its scores), so every position that belongs to one batch index
is tied into one unit, and the two operands' units are tied head to head. The contracted axis
is never pruned by itself (that would change the scores of a kept head). A tracked axis of
V's columns (or, for a context computed transposed as Vᵀ·Pᵀ, of Vᵀ's rows) is carried to the
output (the context keeps V's per-head layout).
Heads merged with a dynamic batch (tiled batch axes: tf2onnx lowers Keras's einsum attention
to batched MatMuls over [batch·heads, S, d]) stay tiled when both operands merge them alike.
"""

from __future__ import annotations

import numpy as np

from ..graph import ChannelMap


def _roles(rank: int, side: int) -> dict[int, str]:
    """Axis roles of a MatMul operand: batch axes, then (row, k) for A or (k, col) for B."""
    roles = {a: "batch" for a in range(rank - 2)}
    roles.update({rank - 2: "row", rank - 1: "k"} if side == 0 else {rank - 2: "k", rank - 1: "col"})
    return roles


def activation_matmul(node, ctx) -> None:
    names = node.proto.input[:2]
    maps = [ctx.map(n) for n in names]
    if maps == [None, None]:
        return
    ranks = [ctx.rank(n) for n in names]
    if any(r is None or r < 2 for r in ranks):
        return ctx.barrier(node, "operand rank unknown")
    out_rank = max(ranks)
    per_head = []     # (side, labels with batch axes first, batch axes in output coordinates)
    kept = None       # a tracked non-contracted matrix axis: (map, its index, batch, out axis)
    for side, (cmap, rank) in enumerate(zip(maps, ranks)):
        if cmap is None:
            continue
        roles = _roles(rank, side)
        kinds = [roles[a] for a in cmap.axes]
        batch = [k for k, kind in enumerate(kinds) if kind == "batch"]
        if not batch:
            return ctx.barrier(node, "channels are contracted without a head axis")
        if any(roles[a] != "batch" for a in cmap.tiled):
            return ctx.barrier(node, "channels merged with the batch sit on a matrix axis")
        order = batch + [k for k in range(len(kinds)) if k not in batch]
        labels = np.transpose(cmap.labels, order)
        grid = labels.reshape(labels.shape[:len(batch)] + (-1,))
        for k in range(1, grid.shape[-1]):          # one unit per head
            ctx.space.unify(grid[..., 0], grid[..., k])
        ctx.mark_heads(grid)
        out_axes = tuple(cmap.axes[k] + out_rank - rank for k in batch)
        per_head.append((side, grid[..., 0], out_axes))
        for kind in ("row", "col"):            # the left rows / right columns pass through
            if kind in kinds:
                if kept is not None:
                    return ctx.barrier(node, "rows of the left and columns of the right "
                                             "operand are both tracked")
                kept = (cmap, kinds.index(kind), batch, out_rank - (2 if kind == "row" else 1))
    for side, cmap in enumerate(maps):
        if cmap is None and _varies_along(ctx, names[side], ranks[side], out_rank,
                                          per_head[0][2]):
            return ctx.barrier(node, "the other operand is not tracked along the heads")
    tiled = [tuple(sorted(a + out_rank - rank for a in m.tiled))
             for m, rank in zip(maps, ranks) if m is not None]
    if len(set(tiled)) > 1 or (tiled[0] and len(tiled) < 2):
        return ctx.barrier(node, "heads merged with the batch in one operand only")
    if len(per_head) == 2:
        (_, a, axes_a), (_, b, axes_b) = per_head
        if axes_a != axes_b or a.shape != b.shape:
            return ctx.barrier(node, "operands split heads differently")
        ctx.space.unify(a, b)
    _, heads, axes = per_head[0]
    tiled = tiled[0]
    if kept is None:
        ctx.set_map(node.proto.output[0], ChannelMap(out_rank, axes, heads, tiled))
    else:
        cmap, index, batch, out_axis = kept
        order = batch + [index]
        labels = np.transpose(cmap.labels, order) if len(order) == cmap.labels.ndim else None
        if labels is None:
            return ctx.barrier(node, "an operand is tracked on its contracted axis")
        ctx.set_map(node.proto.output[0],
                    ChannelMap(out_rank, axes + (out_axis,), labels, tiled))
    ctx.note(node)


def _varies_along(ctx, name, rank, out_rank, out_axes) -> bool:
    shape = ctx.shape(name)
    if shape is None:
        return True
    for axis in out_axes:
        p = axis - (out_rank - rank)
        if p >= 0 and shape[p] != 1:
            return True
    return False
