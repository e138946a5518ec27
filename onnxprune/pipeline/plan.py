"""A plan at one ratio (which components go), and what it will cost: the params and MACs the
pruned model will have, computed from the plan alone, before any rewrite."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..allocation import Plan, allocate
from ..graph import ModelGraph
from ..groups import project
from ..rules import rule_for
from ..io.normalize import all_graphs
from ..runtime.cost import counted_integers, macs_and_shapes
from .analyze import Analyzed
from .options import Strategy
from .scoring import GroupScores, group_scores


@dataclass
class Planned:
    """A plan, the removed-atom mask it implies, and the scoring notes it was made with."""

    plan: Plan
    removed: np.ndarray
    notes: list[str]


def make_plan(a: Analyzed, ratio: float, round_to: int, by_kind: dict[str, float] | None,
              strategy, scored: GroupScores, latency=None) -> Planned:
    """Allocate ``ratio`` (``by_kind`` per group kind) over the groups by their scores
    (``latency``: a ``PlanLatency`` for latency-aware allocation)."""
    plan = allocate(a.analysis, a.groups, a.roots, scored.scores, ratio, round_to, by_kind,
                    strategy.allocates, strategy.group_cap, scored.ranking, scored.weights,
                    latency, strategy.cap_relaxes_to, scored.offsets)
    return Planned(plan, plan.removed_atoms(a.roots), list(scored.notes))


def plan_for(a: Analyzed, ratio: float, round_to: int, by_kind: dict[str, float] | None = None,
             strategy: Strategy | None = None, stats=None) -> Planned:
    """The plan at ``ratio``, scoring included (a search scores once and calls
    :func:`make_plan`)."""
    strategy = strategy or Strategy()
    return make_plan(a, ratio, round_to, by_kind, strategy, group_scores(a, strategy, stats))


def kept_axes(a: Analyzed, removed) -> dict[tuple[int, int], dict[int, np.ndarray]]:
    """(node, input) → {axis: what it keeps} for every sliced constant."""
    keep: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    for use in a.analysis.params:
        vectors = project(~removed[use.labels])
        axes = keep.setdefault((use.node, use.input_index), {})
        for p, l in use.axes.items():
            axes[p] = axes.get(p, vectors[l]) & vectors[l]
    return keep


def sliced_shapes(a: Analyzed, removed) -> dict[tuple[int, int], tuple[list, list]]:
    """(node, input) → (dims before, dims after) for every sliced constant."""
    shapes = {}
    for (node, idx), axes in kept_axes(a, removed).items():
        value = a.graph.const(a.graph.nodes[node].input(idx))
        dims = list(value.shape)
        for p, vec in axes.items():
            dims[p] = int(vec.sum())
        shapes[(node, idx)] = (list(value.shape), dims)
    return shapes


def sliced_dims(a: Analyzed, removed) -> dict[tuple[int, int], list[int]]:
    """(node, input) → dims after slicing, for every sliced constant."""
    return {key: new for key, (_, new) in sliced_shapes(a, removed).items()}


def planned_params(a: Analyzed, removed, before: int, graph: ModelGraph | None = None) -> int:
    """``before`` less what the sliced constants lose; a weight stored quantized also loses
    per-axis scales and zero points along the cut axis.

    A constant read in several places (exporters deduplicate equal initializers, and may read
    the copies through Identity aliases) becomes what the rewrite makes of it: one tensor per
    distinct slice among the readers of each name, and the whole constant where a reader
    keeps it whole."""
    graph = graph or a.graph
    keep = kept_axes(a, removed)
    roots: dict[str, None] = {}
    for node, index in keep:
        roots[_root(graph, graph.nodes[node].input(index))] = None
    total = before
    counted = counted_integers(all_graphs(graph.model.graph))
    for root in roots:
        value = graph.const(root)
        if np.issubdtype(value.dtype, np.floating) or root in counted:
            total += (_tensors_of(graph, root, value, keep) - value.size) * _per_stored(graph,
                                                                                       root)
    return total


def _per_stored(graph: ModelGraph, root: str) -> int:
    """Weights per stored element: 8 / bits for MatMulNBits' packed bytes (its params count
    K × N), 1 otherwise."""
    for reader in graph.consumers.get(root, []):
        if reader.op == "MatMulNBits" and reader.input(1) == root:
            return 8 // int(reader.attr("bits", 4))
    return 1


def _root(graph: ModelGraph, name: str) -> str:
    """The constant an Identity alias (or a chain of them) reads."""
    producer = graph.producer.get(name)
    while (producer is not None and producer.op == "Identity"
           and graph.const(producer.input(0)) is not None):
        name = producer.input(0)
        producer = graph.producer.get(name)
    return name


def _readers(graph: ModelGraph, name: str):
    """(alias names read through Identity nodes, other (node, input) slots) of ``name``."""
    aliases, slots = [], []
    for reader in graph.consumers.get(name, []):
        for k, read in enumerate(reader.proto.input):
            if read != name:
                continue
            if reader.op == "Identity":
                aliases.append(reader.proto.output[0])
            else:
                slots.append((reader.index, k))
    return aliases, slots


def _tensors_of(graph: ModelGraph, root: str, value: np.ndarray, keep) -> int:
    """Elements of the tensors the constant ``root`` becomes after the rewrite: each name
    that reads it (the root, its aliases) holds its readers' distinct slices (copies of one
    name that come out equal are merged); the root stays whole while any reader, directly or
    through an alias, keeps it whole."""
    names, whole, sliced = [root], False, {}
    for name in names:
        aliases, slots = _readers(graph, name)
        names.extend(aliases)
        whole |= name != root and not aliases and not slots   # a dangling alias stays
        cut = [keep[s] for s in slots if s in keep and not all(v.all() for v in keep[s].values())]
        whole |= len(cut) < len(slots)       # a reader that loses nothing reads it as it is
        sliced[name] = cut
    if len(names) == 1 and len(sliced[root]) == 1 and not whole:
        return _sliced_size(graph, root, value, sliced[root][0])
    total = 0
    for name, cuts in sliced.items():
        arrays = [_cut(value, axes) for axes in cuts]
        if name == root and whole:
            arrays.append(value)
        total += sum({(x.shape, x.dtype.str, x.tobytes()): x.size for x in arrays}.values())
    return total


def _cut(value: np.ndarray, axes: dict[int, np.ndarray]) -> np.ndarray:
    for axis, vec in axes.items():
        value = np.compress(vec, value, axis=axis)
    return value


def _sliced_size(graph: ModelGraph, name: str, value: np.ndarray, axes) -> int:
    """Elements left of a constant one reader slices, with the per-axis scales and zero points
    of a weight stored quantized (they shrink along the cut axis)."""
    new = [int(axes[p].sum()) if p in axes else d for p, d in enumerate(value.shape)]
    size = int(np.prod(new, dtype=np.int64))
    source = graph.quantized_source(name)
    for k in (1, 2) if source is not None else ():
        per_axis = graph.const(source.input(k)) if source.input(k) else None
        if per_axis is not None and per_axis.size > 1:
            axis = int(source.attr("axis", 1)) % value.ndim
            size -= per_axis.size - per_axis.size * new[axis] // value.shape[axis]
    return size


class MacCounter:
    """MACs of the dense model and of any plan, each node counted by its rule at the shapes
    the plan gives it: every tracked tensor narrowed along its tracked axes to the kept
    channels, every sliced constant at its sliced dims. The dense shapes are inferred once."""

    def __init__(self, a: Analyzed, input_shapes=None):
        self.a = a
        self.dense, shapes = macs_and_shapes(a.model, input_shapes)
        known = self.dense is not None and None not in self.dense
        self.shapes = shapes if known else None

    @property
    def known(self) -> bool:
        return self.shapes is not None

    def total(self) -> int | None:
        return int(sum(self.dense)) if self.known else None

    def planned(self, removed: np.ndarray, sliced=None) -> int | None:
        """MACs of the model the plan ``removed`` leaves (``sliced``: its ``sliced_dims``)."""
        if not self.known:
            return None
        a = self.a
        sliced = sliced_dims(a, removed) if sliced is None else sliced
        narrowed = self._narrowed_activations(removed)
        total = 0
        for index, macs in enumerate(self.dense):
            if not macs:
                continue
            node = a.graph.nodes[index]
            own = {node.input(k): dims for (i, k), dims in sliced.items() if i == index}

            def shape(name, own=own):
                return own.get(name) or narrowed.get(name) or self.shapes.get(name)

            total += rule_for(node).macs(node, shape)
        return int(total)

    def _narrowed_activations(self, removed: np.ndarray) -> dict[str, list[int]]:
        out = {}
        for name, cmap in self.a.analysis.maps.items():
            dims = self.shapes.get(name)
            if dims is None or None in dims or len(dims) != cmap.rank:
                continue
            dims = list(dims)
            for axis, vec in zip(cmap.axes, project(~removed[cmap.labels])):
                dims[axis] = dims[axis] // vec.size * int(vec.sum())
            out[name] = dims
        return out

