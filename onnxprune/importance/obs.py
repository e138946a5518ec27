"""OBS saliency: the loss in a consumer's outputs when one input channel is removed and the
rest re-fitted, ½·‖W[:, j]‖² / [H⁻¹]_jj with H = E[x xᵀ] over the consumer's inputs (OBC's
criterion, summed over the group's consumers).

* ``obs`` takes H from calibration data.
* ``obspa`` needs no data: H comes from synthetic inputs pushed through the model itself
  (seeded random inputs of the model's shapes), so it also works where no data exists.

Consumers whose H was captured (pointwise layers; k×k convs over their input patches) use its
inverse's diagonal; others the diagonal E[x_j²]. A channel's saliency sums those of its k
features (a per-feature approximation of removing them together).
"""

from __future__ import annotations

import numpy as np

from ..compensation.consumers import find_consumers
from ..compensation.refit import DAMPING, input_gram
from .base import MemberScores, ScoringContext, criterion


def _saliency(ctx: ScoringContext) -> np.ndarray:
    acc = MemberScores(len(ctx.roots), ctx.roots, ctx.reduction)
    for c in find_consumers(ctx.analysis):
        moments = ctx.calibration.get(c.input_name)
        if moments is None or not moments.count:
            continue
        gram = input_gram(c, moments)
        out, channels, k = c.weight.shape
        if gram is not None:
            h = gram[0] / max(gram[1], 1)
            h[np.diag_indices_from(h)] += DAMPING * float(np.mean(np.diag(h))) + 1e-12
            inv_diag = np.diag(np.linalg.inv(h)).reshape(channels, k)
        else:
            second = moments.sum_sq / moments.count
            inv_diag = np.repeat((1.0 / (second + DAMPING * float(np.mean(second)) + 1e-12))
                                 [:, None], k, axis=1)
        # Removing channel j removes its k features: the single-feature losses, summed.
        acc.add(c.use.labels, 0.5 * (np.square(c.weight) / inv_diag[None]).sum(axis=(0, 2)))
    return acc.result()


@criterion("obs", needs="calibration")
def obs(ctx: ScoringContext) -> np.ndarray:
    """OBS saliency with H from calibration data."""
    return _saliency(ctx)


@criterion("obspa", needs="synthetic")
def obspa(ctx: ScoringContext) -> np.ndarray:
    """OBS saliency with H from synthetic inputs (no data needed)."""
    return _saliency(ctx)
