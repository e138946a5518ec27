"""What removing each component saves, for rankings that weigh importance against cost.

A global ranking by score alone removes cheap and expensive channels alike; ranking by score
per MAC removes first what costs much and matters little. A component's MACs are its share of
every Conv/Gemm/MatMul weight it slices: a layer's MACs spread evenly over its weight's
elements, summed over the slice the component owns (an output filter, an input column, a head's
rows). MatMuls of two activations (attention scores) are not counted: a head's saving there is
underestimated. Without shapes to count MACs, parameters are used instead.
"""

from __future__ import annotations

import numpy as np

from ..groups import Analysis
from ..importance.base import MemberScores, per_atom


def component_costs(analysis: Analysis, roots: np.ndarray,
                    per_node: list[int | None] | None) -> tuple[np.ndarray, str]:
    """(cost per component indexed by root atom, "macs" or "params")."""
    graph = analysis.graph
    unit = "macs" if per_node is not None and None not in per_node else "params"
    acc = MemberScores(len(roots), roots, "sum")
    for use in analysis.params:     # a weight's output and input axes are separate uses
        value = graph.const(graph.nodes[use.node].input(use.input_index))
        if value is None or value.ndim < 2:
            continue
        total = float(per_node[use.node]) if unit == "macs" else float(value.size)
        if total <= 0:
            continue
        acc.add(use.labels, per_atom(use, np.full(value.shape, total / value.size)))
    return acc.result(), unit
