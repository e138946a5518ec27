"""Data-free criteria that read the weights only: L1 and L2 magnitude, BN scale, FPGM, and
random (the honest baseline every other criterion must beat)."""

from __future__ import annotations

import numpy as np

from ..groups import Analysis
from ..rules import rule_for
from .base import MemberScores, ScoringContext, criterion, per_atom


def _magnitude(ctx: ScoringContext, power: int) -> np.ndarray:
    acc = MemberScores(len(ctx.roots), ctx.roots, ctx.reduction)
    for use in ctx.scored_uses():
        value = ctx.value(use)
        if value is not None:
            acc.add(use.labels, per_atom(
                use, value, lambda v: np.abs(v, dtype=np.float64) ** power))
    return acc.result()


@criterion("l1")
def l1(ctx: ScoringContext) -> np.ndarray:
    """Sum of |w| over every weight slice a component owns (producers' filters, consumers'
    input columns, norm scales), reduced across the group's members."""
    return _magnitude(ctx, 1)


@criterion("l2")
def l2(ctx: ScoringContext) -> np.ndarray:
    """Sum of w² over every weight slice a component owns, reduced across members."""
    return _magnitude(ctx, 2)


@criterion("bn_scale")
def bn_scale(ctx: ScoringContext) -> np.ndarray:
    """|γ| of the normalizations in the group (network slimming). Groups without one fall back
    to L2, and the report says which."""
    graph = ctx.analysis.graph
    acc = MemberScores(len(ctx.roots), ctx.roots, ctx.reduction)
    for use in ctx.scored_uses():
        rule = rule_for(graph.nodes[use.node])
        if rule is not None and use.input_index == rule.scale_input:
            value = ctx.value(use)
            if value is not None:
                acc.add(use.labels, per_atom(use, value, lambda v: np.abs(v, dtype=np.float64)))
    scores = acc.result()
    fallback = None
    for g in ctx.groups:
        if g.prunable and not acc.count[g.components].any():
            fallback = _magnitude(ctx, 2) if fallback is None else fallback
            scores[g.components] = fallback[g.components]
            ctx.notes.append(f"group {g.id}: no normalization scale, scored by l2")
    return scores


@criterion("fpgm")
def fpgm(ctx: ScoringContext) -> np.ndarray:
    """Filter pruning via geometric median: a producer's filter close to all the others (small
    summed distance) is redundant. Consumers' columns are not filters and do not count."""
    acc = MemberScores(len(ctx.roots), ctx.roots, ctx.reduction)
    for use in ctx.scored_uses():
        value = ctx.value(use)
        if value is None or use.consume or len(use.axes) != 1 or value.ndim < 2:
            continue
        (axis, label_axis), = use.axes.items()
        if use.labels.ndim != 1:
            continue
        rows = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1).astype(np.float64)
        sq = np.square(rows).sum(axis=1)
        dist = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2.0 * rows @ rows.T, 0.0))
        acc.add(use.labels, dist.sum(axis=1))
    return acc.result()


@criterion("random", reduces=False)
def random(ctx: ScoringContext) -> np.ndarray:
    """Uniform random scores (seeded): the baseline that shows what a criterion is worth."""
    rng = np.random.default_rng(ctx.seed)
    return rng.random(len(ctx.roots))


def l2_magnitude(analysis: Analysis, roots: np.ndarray) -> np.ndarray:
    """Group L2 (sum of squares across members): the default criterion."""
    return l2(ScoringContext(analysis, roots, []))
