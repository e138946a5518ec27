"""Load-time repairs of irregular but legitimate graphs, so that what we write is regular.

* Node order: ONNX requires a graph's nodes in topological order, but some writers (hand-made
  graphs, graph surgery tools) emit them out of order. The checker rejects such a model, and
  would reject our output too; so every graph is put in topological order first, keeping the
  writer's order wherever the dependencies allow.
* Node names: the spec lets them repeat or be empty, but ONNX Runtime refuses a model with two
  nodes of one name, and our reports and ``--exclude`` address nodes by name; repeated names
  get a numbered suffix (empty ones stay empty)."""

from __future__ import annotations

import networkx as nx
import onnx

from ..errors import UserError


def sort_topologically(graph: onnx.GraphProto) -> bool:
    """Reorder ``graph.node`` (and the nodes of every subgraph) in place so that each node
    comes after the producers of everything it reads, subgraph reads included. Returns
    whether anything moved; a cycle is the user's error."""
    moved = False
    for node in graph.node:
        for sub in _subgraphs(node):
            moved |= sort_topologically(sub)
    producer = {out: k for k, node in enumerate(graph.node) for out in node.output if out}
    deps = nx.DiGraph()
    deps.add_nodes_from(range(len(graph.node)))
    for k, node in enumerate(graph.node):
        for name in _reads(node):
            if name in producer and producer[name] != k:
                deps.add_edge(producer[name], k)
    try:
        order = list(nx.lexicographical_topological_sort(deps))
    except nx.NetworkXUnfeasible:
        cycle = nx.find_cycle(deps)
        names = " -> ".join(graph.node[a].name or graph.node[a].op_type for a, _ in cycle)
        raise UserError(f"the graph {graph.name or '(main)'} has a cycle: {names}") from None
    if order == list(range(len(graph.node))):
        return moved
    nodes = [graph.node[k] for k in order]
    copies = [onnx.NodeProto() for _ in nodes]
    for copy, node in zip(copies, nodes):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)
    return True


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def _reads(node: onnx.NodeProto) -> set[str]:
    """Every name ``node`` reads: its inputs, and the outer-scope names its subgraphs use."""
    names = {name for name in node.input if name}
    for sub in _subgraphs(node):
        names |= _outer_reads(sub)
    return names


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    reads = set()
    for node in graph.node:
        reads |= _reads(node)
        defined |= set(node.output)
    return reads - defined


def unique_node_names(graph: onnx.GraphProto) -> int:
    """Give the second and later nodes of a repeated name (across the graph and its
    subgraphs) the suffix ``__2``, ``__3``, ... (skipping names in use). Returns how many
    were renamed."""
    nodes = list(_walk(graph))
    taken = {node.name for node in nodes}
    seen: set[str] = set()
    renamed = 0
    for node in nodes:
        if node.name and node.name in seen:
            k = 2
            while f"{node.name}__{k}" in taken:
                k += 1
            node.name = f"{node.name}__{k}"
            taken.add(node.name)
            renamed += 1
        seen.add(node.name)
    return renamed


def _walk(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for sub in _subgraphs(node):
            yield from _walk(sub)
