"""Loading a model and finding its channel groups: the input to every later stage."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import UserError
from ..graph import ModelGraph
from ..groups import Analysis, Group, analyze, find_groups
from ..io import load_model


@dataclass
class Analyzed:
    """A loaded model with its channel analysis."""

    model: onnx.ModelProto
    graph: ModelGraph
    analysis: Analysis
    groups: list[Group]
    roots: np.ndarray


def analyze_model(model, exclude: tuple[str, ...] = (), allow_cache_change: bool = False
                  ) -> Analyzed:
    """Load ``model`` (a path or a ModelProto, never modified), propagate channel labels
    through it and group them; ``exclude``: node names or globs whose channels stay;
    ``allow_cache_change``: key/value heads may leave a KV cache (see ``rules.gqa``)."""
    model = load_model(model)
    graph = ModelGraph(model)
    analysis = analyze(graph, allow_cache_change=allow_cache_change)
    protect(analysis, exclude)
    groups, roots = find_groups(analysis)
    return Analyzed(model, graph, analysis, groups, roots)


def protect(analysis: Analysis, patterns: tuple[str, ...]) -> None:
    """--exclude: freeze every channel an excluded node reads or writes."""
    for pattern in patterns:
        hits = [n for n in analysis.graph.nodes
                if fnmatch.fnmatchcase(n.proto.name, pattern) or n.label == pattern]
        if not hits:
            raise UserError(f"--exclude {pattern!r} matches no node name")
        for node in hits:
            for name in list(node.proto.input) + list(node.proto.output):
                analysis.freeze(analysis.map(name), f"excluded by the user ({node.label})")
