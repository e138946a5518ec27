"""The compensation methods by name, behind one call: prune, its steps and sensitivity all
repair the layers that read removed channels the same way."""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration.hessian import DAMPING
from ..groups import Analysis
from .refit import refit
from .sequential import reconstruct

METHODS = ("none", "bias", "obs", "sequential")


def compensate(model: onnx.ModelProto, analysis: Analysis, removed_atom: np.ndarray, stats,
               method: str, damping: float = DAMPING, mask=None, progress=None
               ) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose readers of removed channels are re-fitted by ``method`` (the
    model itself for "none"), and notes on the layers left as they were. "sequential" runs the
    calibration batches (``stats.batches``) through ``mask(model)``, the masked form a model
    is checked against."""
    if method not in METHODS:
        raise ValueError(method)
    if method == "none":
        return model, []
    if method == "sequential":
        if mask is None or stats is None or not stats.batches:
            raise ValueError("sequential reconstruction needs calibration batches and a mask")
        return reconstruct(model, analysis, removed_atom, stats.batches, mask, damping,
                           stats.batch_weights, progress)
    return refit(model, analysis, removed_atom, stats, method, damping)
