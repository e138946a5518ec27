"""Criteria that read calibration data: what flows into the layers that consume a group's
channels, captured through ONNX Runtime (``calibration.capture``).

* ``activation``: mean |x| of every channel where a linear layer (Conv, Gemm, MatMul) reads it.
* ``apoz``: 1 − the average percentage of zeros there (dead channels after a ReLU score 0).
* ``wanda``: |W| of the consumer's input columns times the channel's RMS input (Wanda's
  |W_ij|·‖X_j‖, summed over the consumer's outputs and kernel).
"""

from __future__ import annotations

import numpy as np

from ..groups import Analysis, find_consumers, reads_linearly
from .base import MemberScores, ScoringContext, criterion, per_atom


def consumed_inputs(analysis: Analysis) -> dict[str, object]:
    """The tracked tensors that linear layers read (their channels' 'input features'), by
    name, with their ChannelMap: what calibration must capture. Which ops are linear readers
    is their rule's to say (``Rule.linear_view``)."""
    out = {}
    for use in analysis.params:
        node = analysis.graph.nodes[use.node]
        if not use.consume or not reads_linearly(node):
            continue
        cmap = analysis.map(node.input(0))
        if cmap is not None and cmap.labels.shape == use.labels.shape:
            out[node.input(0)] = cmap
    for consumer in find_consumers(analysis):      # grouped convs read theirs by blocks
        out.setdefault(consumer.input_name, analysis.map(consumer.input_name))
    return out


def _per_tensor(ctx: ScoringContext, statistic) -> np.ndarray:
    acc = MemberScores(len(ctx.roots), ctx.roots, ctx.reduction)
    for name, cmap in consumed_inputs(ctx.analysis).items():
        moments = ctx.calibration.get(name)
        if moments is not None and moments.count:
            acc.add(cmap.labels, statistic(moments))
    return acc.result()


@criterion("activation", needs="calibration")
def activation(ctx: ScoringContext) -> np.ndarray:
    """Mean |activation| where linear layers read the channel."""
    return _per_tensor(ctx, lambda m: m.mean_abs())


@criterion("apoz", needs="calibration")
def apoz(ctx: ScoringContext) -> np.ndarray:
    """1 − average percentage of zeros where linear layers read the channel."""
    return _per_tensor(ctx, lambda m: 1.0 - m.zero_rate())


@criterion("wanda", needs="calibration")
def wanda(ctx: ScoringContext) -> np.ndarray:
    """Σ |W| over a consumer's weights reading the channel × the channel's RMS input."""
    acc = MemberScores(len(ctx.roots), ctx.roots, ctx.reduction)
    graph = ctx.analysis.graph
    for use in ctx.scored_uses():
        node = graph.nodes[use.node]
        if not use.consume or not reads_linearly(node):
            continue
        moments = ctx.calibration.get(node.input(0))
        value = ctx.value(use)
        if (moments is None or not moments.count or value is None
                or moments.rms().shape != use.labels.shape):
            continue
        acc.add(use.labels, per_atom(use, value, lambda v: np.abs(v, dtype=np.float64))
                * moments.rms())
    return acc.result()
