"""Where a failed check starts: the first tensor, in the order the graph computes them, at
which the pruned model leaves the masked original. The pruned model's tensors hold the kept
channels only, so the masked original's are cut to them before the two are compared."""

from __future__ import annotations

import numpy as np
import onnx

from ..groups import project
from ..runtime import run_model
from ..runtime.run import exposing
from ..verify import relative_error
from .analyze import Analyzed


def first_divergence(a: Analyzed, pruned: onnx.ModelProto, masked: onnx.ModelProto, feeds,
                     removed: np.ndarray, tolerance: float) -> tuple[str, str, float] | None:
    """(node label, tensor, relative error) where the error first exceeds ``tolerance``, or
    None when no tensor both models compute can be compared (or none diverges)."""
    written = {o for n in pruned.graph.node for o in n.output} & \
        {o for n in masked.graph.node for o in n.output}
    order = [(node, name) for node in a.graph.order for name in node.proto.output
             if name in written]
    names = [name for _, name in order]
    try:
        got = run_model(exposing(pruned, names), feeds, exact=True)
        want = run_model(exposing(masked, names), feeds, exact=True)
    except Exception:  # noqa: BLE001 - a diagnosis must never hide the failure it explains
        return None
    for node, name in order:
        if name not in got or name not in want:
            continue
        expected = _kept_part(a, name, want[name], removed)
        if expected is None or expected.shape != got[name].shape:
            continue
        error = relative_error(got[name], expected)
        if error > tolerance:
            return node.label, name, error
    return None


def _kept_part(a: Analyzed, name: str, value: np.ndarray, removed: np.ndarray):
    """The masked original's tensor cut to the channels the pruned model keeps."""
    cmap = a.analysis.map(name)
    if cmap is None or cmap.tiled:
        return value if cmap is None else None
    for axis, keep in zip(cmap.axes, project(~removed[cmap.labels])):
        if value.shape[axis] != keep.size:
            return None
        value = np.compress(keep, value, axis=axis)
    return value
