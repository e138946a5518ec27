"""Reading across the hidden size: what LayerNorm and ReduceMean-style ops need for
hidden-size pruning (an opt-in group kind, see ``allocation.ratio.OPT_IN_KINDS``).

A pruned LayerNorm normalizes over the kept channels only, so the pruned model computes a
different function than the original. The oracle still proves every index: in the masked
original, such an op is rewritten to read the kept channels alone (a 0/1 mask, and means
taken over the kept count), which is exactly what the pruned op computes.
"""

from __future__ import annotations

import numpy as np

# Reductions whose value over the kept channels is the value over the masked input (after a
# rescale for the mean): zeros add nothing to a sum, a sum of squares or of absolute values.
MASKABLE_REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2"}


def keep_vector(ctx, node) -> np.ndarray | None:
    """Kept positions along the single tracked axis of the node's input, or None when none
    of them was removed (the op then needs no rewriting)."""
    keep = ctx.keep(node.input(0))
    return None if keep.all() else keep


def broadcast_along(vector: np.ndarray, axis: int, rank: int) -> np.ndarray:
    """``vector`` shaped to broadcast along ``axis`` of a rank-``rank`` tensor."""
    return vector.reshape((vector.size,) + (1,) * (rank - 1 - axis))


def mask_reduction(node, ctx, axis: int, rank: int, dtype) -> None:
    """Feed the reduction ``input · mask`` (times D/k for a mean): its result is then the same
    reduction over the kept channels only."""
    keep = keep_vector(ctx, node)
    if keep is None:
        return
    scale = keep.size / keep.sum() if node.op in ("ReduceMean", "GlobalAveragePool") else 1.0
    mask = broadcast_along((keep * scale).astype(dtype), axis, rank)
    name = ctx.add_const(mask, f"{node.label}_kept_mask")
    masked = ctx.add_node(node, "Mul", [node.input(0), name], f"{node.label}_masked_input")
    node.proto.input[0] = masked


def mask_layer_norm(node, ctx, dtype, epsilon: float) -> None:
    """Replace a last-axis LayerNormalization by the same normalization over the kept
    channels (``layer_norm_over_kept``)."""
    keep = keep_vector(ctx, node)
    if keep is None:
        return
    layer_norm_over_kept(node, ctx, node.input(0), keep, dtype, epsilon, node.input(1),
                         node.input(2), node.proto.output[0])
    ctx.drop_node(node)


def layer_norm_over_kept(node, ctx, x: str, keep: np.ndarray, dtype, epsilon: float,
                         gamma: str, beta: str, output: str) -> None:
    """Write ``output`` = the last-axis layer norm of ``x`` over the kept channels: mean and
    variance are averages over the kept ones (a MatMul with 1/k at kept positions), removed
    positions are zeroed before the variance. What the pruned op computes, in standard ops,
    for the masked original."""
    k = int(keep.sum())
    avg = ctx.add_const((keep / k).astype(dtype).reshape(-1, 1), f"{node.label}_kept_mean")
    mask = ctx.add_const(keep.astype(dtype), f"{node.label}_kept_mask")
    eps = ctx.add_const(np.array(epsilon, dtype=dtype), f"{node.label}_epsilon")
    hint = node.label

    def op(kind, *inputs):
        return ctx.add_node(node, kind, list(inputs), f"{hint}_{kind.lower()}")

    centred = op("Mul", op("Sub", x, op("MatMul", x, avg)), mask)
    std = op("Sqrt", op("Add", op("MatMul", op("Mul", centred, centred), avg), eps))
    y = op("Mul", op("Div", centred, std), gamma)
    ctx.add_node(node, "Add" if beta else "Identity", [y, beta] if beta else [y], hint,
                 output=output)
