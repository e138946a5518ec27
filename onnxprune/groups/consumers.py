"""The linear layers that read tracked channels, each seen as y = W·x + b over them.

Criteria that read what flows into linear layers (OBS saliency) and compensation, which
re-fits such a layer after some of its inputs are removed, work on this one view. How an op
reads its input linearly, in which layout its weight is, and where its bias is, is the op's
rule's ``linear_view``; this module only pairs each view with the channels it reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..rules import LinearView, Rule, rule_for
from .analysis import Analysis, ParamUse


@dataclass
class Consumer:
    """A layer reading the tracked channels ``labels`` of tensor ``input_name`` through
    ``view`` (W [out, in/groups, k]); for dynamic quantization ``input_name`` is the float
    tensor quantized at run time (``LinearView.reads``)."""

    use: ParamUse                   # the weight, read along its input channels
    node: int
    input_name: str                 # the tensor it reads
    labels: np.ndarray              # the atom of each input channel (1-D)
    view: LinearView

    @property
    def weight(self) -> np.ndarray:
        return self.view.weight

    @property
    def groups(self) -> int:
        return self.view.groups

    @property
    def window(self):
        return self.view.window

    @property
    def bias(self):
        return self.view.bias

    @property
    def pointwise(self) -> bool:
        return self.view.shape[2] == 1

    def blocks(self):
        """(output rows, input channels) of each group, as slices."""
        out, per_group = self.view.shape[0] // self.groups, self.view.shape[1]
        for g in range(self.groups):
            yield slice(g * out, (g + 1) * out), slice(g * per_group, (g + 1) * per_group)

    def write(self, weight: np.ndarray) -> np.ndarray:
        """A [out, in/groups, k] weight back in the layer's own layout."""
        return self.view.write(weight)


def reads_linearly(node) -> bool:
    """Does the node's rule describe it as a linear reader of its input channels?"""
    rule = rule_for(node)
    return rule is not None and type(rule).linear_view is not Rule.linear_view


def find_consumers(analysis: Analysis) -> Iterator[Consumer]:
    """Every layer whose rule gives a linear view of it and whose input channels are tracked
    on one axis, in the order their weights were declared; one at a time, so that a caller
    going through them holds one layer's float64 weight at a time (``LinearView.weight``)."""
    graph = analysis.graph
    seen = set()
    for use in analysis.params:
        node = graph.nodes[use.node]
        if not use.consume or use.node in seen or not reads_linearly(node):
            continue
        view = rule_for(node).linear_view(node, graph)
        if view is None or use.input_index != view.weight_input:
            continue
        name = view.reads or node.input(0)
        cmap = analysis.map(name)
        if (cmap is None or cmap.labels.ndim != 1
                or view.shape[1] * view.groups != cmap.labels.size):
            continue
        seen.add(use.node)
        yield Consumer(use, node.index, name, cmap.labels, view)
