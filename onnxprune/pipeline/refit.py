"""The strategy's compensation for one removed-channel mask: what every candidate, sensitivity
row and test oracle starts its pruned and masked models from."""

from __future__ import annotations

import numpy as np
import onnx

from ..compensation import compensate
from ..rewrite import apply_plan
from .analyze import Analyzed
from .options import Strategy


def compensated(a: Analyzed, removed: np.ndarray, stats, strategy: Strategy, progress=None
                ) -> tuple[onnx.ModelProto, list[str]]:
    """The original re-fitted for ``removed`` (itself when the strategy does not compensate),
    with notes. Sequential reconstruction compares against the masked form of the re-fitted
    copy, which is what the pruned model is checked against."""
    return compensate(a.model, a.analysis, removed, stats, strategy.compensation,
                      strategy.damping,
                      mask=lambda model: apply_plan(model, a.analysis, removed, "mask"),
                      progress=progress)
