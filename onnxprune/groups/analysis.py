"""Channel propagation: run every node's rule in topological order over a ModelGraph.

This is the context object the rules talk to (see ``rules.base``). Its results: the
ChannelMap of every tracked tensor, the constants each rule will slice (``ParamUse``), per-node
notes for the rewrite, and the frozen atoms with the reason each was frozen.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..errors import OnnxPruneError
from ..graph import ChannelMap, ChannelSpace, ModelGraph
from ..graph.model_graph import NodeRef
from ..rules import rule_for


@dataclass
class ParamUse:
    """Constant input ``input_index`` of a node is sliced like ``labels``.

    ``axes`` maps a constant's axis to the label axis whose kept positions it follows.
    ``consume`` marks weights that *read* the channels (a Conv's input channels): in the
    masked original these are zeroed instead of sliced. ``score`` says whether the values count
    toward magnitude importance (running statistics do not). ``zero``, for a consumed integer
    weight, is (input index, weight axis) of its zero point: the masked original writes the
    zero point there (which stands for 0), per axis when the zero point is a vector.
    """

    node: int
    input_index: int
    axes: dict[int, int]
    labels: np.ndarray
    consume: bool = False
    score: bool = True
    zero: tuple[int, int] | None = None


class RuleError(OnnxPruneError):
    """A rule raised while propagating (strict analysis only: otherwise the node becomes a
    barrier and the failure is recorded in ``Analysis.failures``)."""


def strict_from_environment() -> bool:
    """``ONNXPRUNE_STRICT_RULES=1`` (the test suite sets it): a rule that raises is an error
    rather than a barrier, so that a broken rule cannot hide behind pruning less."""
    return os.environ.get("ONNXPRUNE_STRICT_RULES", "") == "1"


@dataclass
class Analysis:
    graph: ModelGraph
    space: ChannelSpace = field(default_factory=ChannelSpace)
    maps: dict[str, ChannelMap] = field(default_factory=dict)
    params: list[ParamUse] = field(default_factory=list)
    notes: dict[int, dict] = field(default_factory=dict)
    barriers: dict[int, str] = field(default_factory=dict)
    deferred: list = field(default_factory=list)
    shaping: list = field(default_factory=list)
    head_atoms: set = field(default_factory=set)
    hidden_atoms: set = field(default_factory=set)
    strict: bool = field(default_factory=strict_from_environment)
    allow_cache_change: bool = False    # rules may resize a KV cache's inputs and outputs
    sliced_factors: set = field(default_factory=set)   # computed per-channel factors (see
    # ``rules.elementwise``): sliced at their constants
    failures: list = field(default_factory=list)    # (node, op, message) of rules that raised

    # -- the interface rules use ---------------------------------------------------------
    def map(self, name: str) -> ChannelMap | None:
        return self.maps.get(name) if name else None

    def set_map(self, name: str, cmap: ChannelMap | None) -> None:
        if name and cmap is not None:
            self.maps[name] = cmap

    def const(self, name: str):
        return self.graph.const(name)

    def shape(self, name: str):
        return self.graph.shape(name)

    def rank(self, name: str) -> int | None:
        cmap = self.map(name)
        if cmap is not None:
            return cmap.rank
        return self.graph.rank(name)

    def new_map(self, node: NodeRef, rank: int, axes: tuple[int, ...], shape) -> ChannelMap:
        """Fresh atoms for channels the node creates from its weights."""
        return ChannelMap(rank, tuple(axes), self.space.new_atoms(tuple(shape), node.index))

    def param(self, node: NodeRef, input_index: int, axes: dict[int, int], labels: np.ndarray,
              consume: bool = False, score: bool = True,
              zero: tuple[int, int] | None = None) -> None:
        self.params.append(ParamUse(node.index, input_index, dict(axes), np.asarray(labels),
                                    consume, score, zero))

    def defer(self, check) -> None:
        """Run ``check(roots)`` once every node has propagated (components are final)."""
        self.deferred.append(check)

    def defer_shaping(self, step) -> None:
        """Run ``step()`` after propagation but before the checks: for unifications whose
        choice depends on what later nodes tied (see ``rules.reshape``)."""
        self.shaping.append(step)

    def mark_heads(self, labels: np.ndarray) -> None:
        """Remember atoms that form attention heads (so groups can be told apart by kind)."""
        self.head_atoms.update(np.asarray(labels).ravel().tolist())

    def mark_hidden(self, labels: np.ndarray) -> None:
        """Remember atoms that a normalization or reduction reads across (a transformer's
        hidden size): removing them changes the statistics, so their groups are opt-in."""
        self.hidden_atoms.update(np.asarray(labels).ravel().tolist())

    def note(self, node: NodeRef, **info) -> None:
        self.notes[node.index] = info

    def freeze(self, cmap: ChannelMap | None, reason: str) -> None:
        if cmap is not None:
            self.space.freeze(cmap.labels, reason)

    def barrier(self, node: NodeRef, reason: str) -> None:
        """Freeze every tracked channel that reaches ``node``; its outputs stay untracked."""
        hit = False
        for name in list(node.proto.input) + self.graph.implicit_inputs(node):
            cmap = self.map(name)
            if cmap is not None:
                self.freeze(cmap, f"{node.label} ({node.op}): {reason}")
                hit = True
        for name in node.proto.output:
            cmap = self.maps.pop(name, None)
            if cmap is not None:
                self.freeze(cmap, f"{node.label} ({node.op}): {reason}")
                hit = True
        self.notes.pop(node.index, None)
        self.params = [p for p in self.params if p.node != node.index]
        if hit:
            self.barriers[node.index] = reason

    def late_barrier(self, node: NodeRef, reason: str, names) -> None:
        """A barrier decided by a deferred check: freeze the channels of ``names``."""
        for name in names:
            self.freeze(self.map(name), f"{node.label} ({node.op}): {reason}")
        self.barriers[node.index] = reason

    # -- driver --------------------------------------------------------------------------
    def run(self) -> "Analysis":
        for node in self.graph.order:
            rule = rule_for(node)
            if rule is None:
                self.barrier(node, "no channel rule for this op")
                continue
            if not rule.follows_tiled and any(
                    m is not None and m.tiled for m in map(self.map, node.proto.input)):
                self.barrier(node, "channels merged with a dynamic (batch) axis reach an op "
                                   "that cannot follow them")
                continue
            try:
                rule.propagate(node, self)
            except (ValueError, IndexError, KeyError, TypeError) as exc:
                self.failures.append((node.label, node.op, str(exc)))
                if self.strict:
                    raise RuleError(f"the {node.op} rule raised on {node.label}: "
                                    f"{type(exc).__name__}: {exc}") from exc
                self.barrier(node, f"rule could not handle this node ({exc})")
        for step in self.shaping:
            step()
        if self.deferred:
            roots = self.space.roots()
            for check in self.deferred:
                check(roots)
        resized = {name for note in self.notes.values() for name in note.get("io", {})}
        for name in self.graph.graph_outputs:
            if name not in resized:     # a KV cache output a rule lets shrink (``io``)
                self.freeze(self.map(name), f"graph output {name}")
        return self


def analyze(graph: ModelGraph, strict: bool | None = None,
            allow_cache_change: bool = False) -> Analysis:
    """Propagate channel labels through the whole graph (``strict``: see
    :func:`strict_from_environment`, the default; ``allow_cache_change``: see
    ``rules.gqa``)."""
    analysis = Analysis(graph, allow_cache_change=allow_cache_change)
    if strict is not None:
        analysis.strict = strict
    return analysis.run()
