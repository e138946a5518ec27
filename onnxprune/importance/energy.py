"""The output energy of the layers that read each group: E‖W x‖² over the calibration inputs,
summed over the group's consumers. Dividing a group's scores by it (normalization "energy")
makes a score the share of those layers' output that removing the component loses, so that a
detector's head (small outputs) and its backbone (large ones) are ranked on one scale, while
the order inside each group stays the criterion's own.

Read from the calibration statistics the criteria already captured: the Gram matrix of a
layer's inputs (or of its k×k patches) where there is one, E[x²] per channel (correlations
ignored) where there is not.
"""

from __future__ import annotations

import numpy as np

from ..calibration.hessian import input_gram
from ..groups import Consumer, find_consumers
from .base import ScoringContext


def group_output_energy(ctx: ScoringContext) -> dict[int, float]:
    """{group id: E‖y‖² summed over the linear layers that read its channels}, for the groups
    read by at least one layer with calibration statistics (none without statistics)."""
    if ctx.calibration is None:
        return {}
    per_component = np.zeros(len(ctx.roots))
    for c in find_consumers(ctx.analysis):
        moments = ctx.calibration.get(c.input_name)
        if moments is None or not moments.count:
            continue
        read = np.unique(ctx.roots[np.asarray(c.labels).ravel()])
        per_component[read] += consumer_output_energy(c, moments)
    energy = {}
    for g in ctx.groups:
        value = float(per_component[g.components].max()) if g.components.size else 0.0
        if value > 0.0:
            energy[g.id] = value
    return energy


def consumer_output_energy(c: Consumer, moments) -> float:
    """E‖y‖² of one consumer's outputs (bias left out): tr(W H Wᵀ) per group of channels."""
    gram = input_gram(c, moments)
    total = 0.0
    for g, (rows, channels) in enumerate(c.blocks()):
        w = c.weight[rows]
        if gram is not None:
            h = gram[0][g] / max(gram[1], 1)
            flat = w.reshape(len(w), -1).astype(np.float64)
            total += float(np.einsum("of,fg,og->", flat, h, flat))
        else:
            second = moments.sum_sq[channels] / moments.count
            total += float((np.square(w, dtype=np.float64).sum(axis=2) * second[None]).sum())
    return total
