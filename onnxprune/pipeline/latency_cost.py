"""A plan's predicted latency: removed components in, the per-layer table's prediction out
(``allocation.latency.LatencyPredictor``), for the target search and for latency-aware
allocation, which also asks which groups share a timed node (a step of one re-prices the
other).

Latency-aware allocation prices thousands of candidate steps, each a few components more than
the plan so far, and a step changes only the nodes its group touches. So the costs per node of
the plan so far are kept (``settle``) and a candidate re-prices only the nodes its difference
from that plan touches: on DenseNet-121 a whole-model evaluation of some 400 nodes became one
of a handful.
"""

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
        self.group_of = {int(r): g.id for g in a.groups for r in g.components.tolist()}
        self.touched: dict[int, set[int]] = defaultdict(set)     # group → timed nodes
        labelled = [(node, use.labels) for node, uses in self.uses.items() for use in uses]
        labelled += [(node, m.labels) for (node, _), m in self.maps.items() if m is not None]
        labelled += [(node, use.labels) for (node, _), uses in self.stream_uses.items()
                     for use in uses]
        for node, labels in labelled:
            for root in np.unique(a.roots[labels]).tolist():
                if root in self.group_of:
                    self.touched[self.group_of[root]].add(node)
        self._node_groups: dict[int, set[int]] = defaultdict(set)
        for gid, nodes in self.touched.items():
            for node in nodes:
                self._node_groups[node].add(gid)
        self._settled: tuple[frozenset, dict[int, float], float] | None = None

    def fraction(self, removed_roots: set[int]) -> float:
        """Predicted latency over the dense latency with these components removed: only the
        nodes whose inputs differ from the settled plan's are priced again."""
        if self._settled is None:
            return self.settle(removed_roots)
        roots, costs, total = self._settled
        changed = self._nodes_of(roots.symmetric_difference(removed_roots))
        removed = self._mask(removed_roots)
        total += sum(self._cost(node, removed) - costs[node] for node in changed)
        return self._share(total)

    def settle(self, removed_roots: set[int]) -> float:
        """``fraction``, keeping each node's cost under this plan for the next ones."""
        removed = self._mask(removed_roots)
        costs = {node: self._cost(node, removed) for node in self.nodes}
        self._settled = frozenset(removed_roots), costs, sum(costs.values())
        return self._share(self._settled[2])

    def fraction_of(self, removed: np.ndarray) -> float:
        """The same for a removed-atom mask (a plan's ``removed``), every node priced."""
        return self._share(sum(self._cost(node, removed) for node in self.nodes))

    def _share(self, seconds: float) -> float:
        """Over the dense layers' seconds; 1.0 where nothing was timed (nothing to save)."""
        dense = self.predictor.dense_layers
        return seconds / dense if dense > 0 else 1.0

    @property
    def nodes(self) -> list[int]:
        return list(self.uses) + list(self.streams)

    def _mask(self, removed_roots) -> np.ndarray:
        return np.isin(self.a.roots, np.fromiter(removed_roots, dtype=np.int64,
                                                 count=len(removed_roots)))

    def _nodes_of(self, roots) -> set[int]:
        groups = {self.group_of[r] for r in roots if r in self.group_of}
        return set().union(*(self.touched[g] for g in groups)) if groups else set()

    def _cost(self, node: int, removed: np.ndarray) -> float:
        """Seconds of one timed node under a plan."""
        if node in self.uses:
            uses = self.uses[node]
            dims = _narrowed(self.dense_dims[node], uses, removed) if uses else None
            return self.predictor.layer_cost(node, dims)
        layer = self.streams[node]
        return self.predictor.stream_cost(node, tuple(
            self._stream_input(node, k, dense, removed) for k, dense in enumerate(layer.shapes)))

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
