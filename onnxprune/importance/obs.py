"""OBS saliency: the loss in a consumer's outputs when one input channel is removed and the
rest re-fitted, ½·‖W[:, j]‖² / [H⁻¹]_jj with H = E[x xᵀ] over the consumer's inputs (OBC's
criterion, summed over the group's consumers).

* ``obs`` takes H from calibration data.
* ``obspa`` needs no data: H comes from synthetic inputs pushed through the model itself
  (seeded random inputs of the model's shapes), so it also works where no data exists.

Consumers whose H was captured (pointwise layers; k×k convs over their input patches; a
grouped conv one H per group of channels) use its inverse's diagonal. The others (layers too
wide for a Gram matrix, transposed convs, whose inputs spread over overlapping outputs) use the
diagonal E[x_j²] alone, and the notes say which. A channel's saliency sums those of its k
features (a per-feature approximation of removing them together). A group that no consumer
with statistics reads is scored by L2, and the notes say so: never silent zeros.
"""

from __future__ import annotations

import numpy as np

from ..calibration.hessian import DAMPING, damped, input_gram, inverse_diagonal
from ..groups import Consumer, find_consumers
from .base import MemberScores, ScoringContext, criterion
from .magnitude import l2


def _saliency(ctx: ScoringContext) -> np.ndarray:
    acc = MemberScores(len(ctx.roots), ctx.roots, ctx.reduction)
    diagonal = set()
    for c in find_consumers(ctx.analysis):
        moments = ctx.calibration.get(c.input_name)
        if moments is None or not moments.count:
            continue
        gram = input_gram(c, moments)
        if gram is None:
            diagonal.add(ctx.analysis.graph.nodes[c.node].label)
        acc.add(c.labels, _consumer_saliency(c, moments, gram))
    if diagonal:
        ctx.notes.append(f"OBS with the diagonal E[x²] alone (no Gram matrix: too wide, or a "
                         f"transposed conv) for {len(diagonal)} layer(s), e.g. "
                         f"{sorted(diagonal)[0]}")
    scores = acc.result()
    _score_unread_groups_by_l2(ctx, acc, scores)
    return scores


def _consumer_saliency(c: Consumer, moments, gram) -> np.ndarray:
    """Saliency of each input channel of one consumer: ½·Σ W² / [H⁻¹]_ff over the outputs
    that read it and its k features, H per group of channels."""
    out, per_group, k = c.view.shape
    saliency = np.zeros(per_group * c.groups)
    for g, (rows, channels) in enumerate(c.blocks()):
        if gram is not None:
            h = damped(gram[0][g] / max(gram[1], 1), DAMPING, floor=1e-12)
            inv_diag = inverse_diagonal(h).reshape(per_group, k)
        else:
            second = moments.sum_sq / moments.count
            level = DAMPING * float(np.mean(second))
            inv_diag = np.repeat((1.0 / (second[channels] + level + 1e-12))[:, None], k, axis=1)
        # Removing channel j removes its k features: the single-feature losses, summed.
        saliency[channels] = 0.5 * (np.square(c.weight[rows]) / inv_diag[None]).sum(axis=(0, 2))
    return saliency


def _score_unread_groups_by_l2(ctx: ScoringContext, acc: MemberScores,
                               scores: np.ndarray) -> None:
    fallback = None
    for g in ctx.groups:
        if g.prunable and g.size > 1 and not acc.count[g.components].any():
            fallback = l2(ctx) if fallback is None else fallback
            scores[g.components] = fallback[g.components]
            ctx.notes.append(f"group {g.id}: no linear layer with calibration statistics "
                             f"reads it, scored by l2")


@criterion("obs", needs="calibration")
def obs(ctx: ScoringContext) -> np.ndarray:
    """OBS saliency with H from calibration data."""
    return _saliency(ctx)


@criterion("obspa", needs="synthetic")
def obspa(ctx: ScoringContext) -> np.ndarray:
    """OBS saliency with H from synthetic inputs (no data needed)."""
    return _saliency(ctx)
