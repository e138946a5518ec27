"""Group-level L2 magnitude: the squared norm of every weight slice a channel owns, summed
over all members of its group (producers' rows, consumers' columns, BN scales)."""

from __future__ import annotations

import numpy as np

from ..groups import Analysis


def l2_magnitude(analysis: Analysis, roots: np.ndarray) -> np.ndarray:
    """Score per atom's component: index the result with a root atom id."""
    per_atom = np.zeros(len(roots), dtype=np.float64)
    squares: dict[tuple[int, int], np.ndarray] = {}
    for use in analysis.params:
        if not use.score:
            continue
        key = (use.node, use.input_index)
        if key not in squares:
            value = analysis.graph.const(analysis.graph.nodes[use.node].input(use.input_index))
            if value is None or not np.issubdtype(value.dtype, np.floating):
                continue
            squares[key] = np.square(value, dtype=np.float32)
        squared = squares[key]
        kept_axes = sorted(use.axes)
        other = tuple(a for a in range(squared.ndim) if a not in use.axes)
        reduced = squared.sum(axis=other, dtype=np.float64) if other else squared
        # reduced has the constant's mapped axes in ascending order; lay them out as labels.
        order = [use.axes[a] for a in kept_axes]
        shape = [1] * use.labels.ndim
        for size, label_axis in zip(reduced.shape, order):
            shape[label_axis] = size
        arranged = np.transpose(reduced, np.argsort(order)).reshape(shape)
        np.add.at(per_atom, use.labels.ravel(), np.broadcast_to(arranged, use.labels.shape).ravel())
    per_component = np.zeros(len(roots), dtype=np.float64)
    np.add.at(per_component, roots, per_atom)
    return per_component
