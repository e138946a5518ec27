"""A plan's predicted latency: removed components in, the per-layer table's prediction out
(``allocation.latency.LatencyPredictor``), for the target search and for latency-aware
allocation, which also asks which groups share a timed node (a step of one re-prices the
other)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..allocation.latency import LatencyPredictor
from ..groups import project
from .analyze import Analyzed


class PlanLatency:
    def __init__(self, a: Analyzed, predictor: LatencyPredictor):
        self.a, self.predictor = a, predictor
        layers = predictor.table.layers()
        self.streams = predictor.table.streams()
        self.uses = {node: [u for u in a.analysis.params
                            if u.node == node and u.input_index == 1] for node in layers}
        self.dense_dims = {node: list(a.graph.const(a.graph.nodes[node].input(1)).shape)
                           for node in layers}
        # stream node → per input: the constant's uses (sliced) or the value's channel map
        self.stream_uses = defaultdict(list)
        for use in a.analysis.params:
            if use.node in self.streams:
                self.stream_uses[(use.node, use.input_index)].append(use)
        self.maps = {(node, k): a.analysis.maps.get(name)
                     for node, layer in self.streams.items()
                     for k, name in enumerate(layer.names) if name}
        group_of = {int(r): g.id for g in a.groups for r in g.components.tolist()}
        self.touched: dict[int, set[int]] = defaultdict(set)     # group → timed nodes
        labelled = [(node, use.labels) for node, uses in self.uses.items() for use in uses]
        labelled += [(node, m.labels) for (node, _), m in self.maps.items() if m is not None]
        for node, labels in labelled:
            for root in np.unique(a.roots[labels]).tolist():
                if root in group_of:
                    self.touched[group_of[root]].add(node)
        self._node_groups: dict[int, set[int]] = defaultdict(set)
        for gid, nodes in self.touched.items():
            for node in nodes:
                self._node_groups[node].add(gid)

    def fraction(self, removed_roots: set[int]) -> float:
        """Predicted latency over the dense latency with these components removed."""
        return self.fraction_of(np.isin(self.a.roots, np.fromiter(
            removed_roots, dtype=np.int64, count=len(removed_roots))))

    def fraction_of(self, removed: np.ndarray) -> float:
        """The same for a removed-atom mask (a plan's ``removed``)."""
        dims = {}
        for node, uses in self.uses.items():
            if uses:
                dims[(node, 1)] = _narrowed(self.dense_dims[node], uses, removed)
        streams = {node: tuple(self._stream_input(node, k, dense, removed)
                               for k, dense in enumerate(layer.shapes))
                   for node, layer in self.streams.items()}
        return self.predictor.fraction(dims, streams)

    def _stream_input(self, node: int, k: int, dense, removed: np.ndarray):
        if dense is None:
            return None
        uses = self.stream_uses.get((node, k))
        if uses:
            return tuple(_narrowed(list(dense), uses, removed))
        cmap = self.maps.get((node, k))
        if cmap is None:
            return tuple(dense)
        shape = list(dense)
        for label_dim, (axis, kept) in enumerate(zip(cmap.axes,
                                                     project(~removed[cmap.labels]))):
            shape[axis] = dense[axis] // cmap.labels.shape[label_dim] * int(kept.sum())
        return tuple(shape)

    def neighbours(self, group: int) -> set[int]:
        return set().union(*(self._node_groups[n] for n in self.touched.get(group, ())))


def _narrowed(dims: list[int], uses, removed: np.ndarray) -> list[int]:
    """A constant's dims once the plan slices it."""
    shape = list(dims)
    for use in uses:
        vectors = project(~removed[use.labels])
        for axis, label_dim in use.axes.items():
            shape[axis] = min(shape[axis], int(vectors[label_dim].sum()))
    return shape
