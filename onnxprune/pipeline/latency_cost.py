"""A plan's predicted latency as latency-aware allocation needs it: removed components in,
the per-layer table's prediction out (``allocation.latency.LatencyPredictor``), and which
groups share a timed layer (a step of one re-prices the other)."""

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
        self.uses = {node: [u for u in a.analysis.params
                            if u.node == node and u.input_index == 1] for node in layers}
        self.dense_dims = {node: list(a.graph.const(a.graph.nodes[node].input(1)).shape)
                           for node in layers}
        group_of = {int(r): g.id for g in a.groups for r in g.components.tolist()}
        self.touched: dict[int, set[int]] = defaultdict(set)     # group → timed layers
        for node, uses in self.uses.items():
            for use in uses:
                for root in np.unique(a.roots[use.labels]).tolist():
                    if root in group_of:
                        self.touched[group_of[root]].add(node)
        self._layer_groups: dict[int, set[int]] = defaultdict(set)
        for gid, nodes in self.touched.items():
            for node in nodes:
                self._layer_groups[node].add(gid)

    def fraction(self, removed_roots: set[int]) -> float:
        removed = np.isin(self.a.roots, np.fromiter(removed_roots, dtype=np.int64,
                                                     count=len(removed_roots)))
        dims = {}
        for node, uses in self.uses.items():
            if not uses:
                continue
            shape = list(self.dense_dims[node])
            for use in uses:
                vectors = project(~removed[use.labels])
                for axis, label_dim in use.axes.items():
                    shape[axis] = min(shape[axis], int(vectors[label_dim].sum()))
            dims[(node, 1)] = shape
        return self.predictor.fraction(dims)

    def neighbours(self, group: int) -> set[int]:
        return set().union(*(self._layer_groups[n] for n in self.touched.get(group, ())))
