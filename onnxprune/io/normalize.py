"""Load-time repairs of irregular but legitimate graphs, so that what we write is regular.

* Node order: ONNX requires a graph's nodes in topological order, but some writers (hand-made
  graphs, graph surgery tools) emit them out of order. The checker rejects such a model, and
  would reject our output too; so every graph is put in topological order first, keeping the
  writer's order wherever the dependencies allow.
* Constant conditions: an ``If`` whose condition is a constant always runs the same branch, so
  that branch's nodes take its place (their names made unique, its outputs passed on through
  Identity). Its channels then prune like any other; an ``If`` decided at run time stays a
  barrier.
* Node names: the spec lets them repeat or be empty, but ONNX Runtime refuses a model with two
  nodes of one name, and our reports and ``--exclude`` address nodes by name; repeated names
  get a numbered suffix (empty ones stay empty).
* Shapes declared for constants: a value_info entry that contradicts the constant it names
  is given the constant's real shape (``true_constant_shapes``)."""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UserError


def sort_topologically(graph: onnx.GraphProto) -> bool:
    """Reorder ``graph.node`` (and the nodes of every subgraph) in place so that each node
    comes after the producers of everything it reads, subgraph reads included. Returns
    whether anything moved; a cycle is the user's error."""
    moved = False
    for node in graph.node:
        for sub in subgraphs(node):
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


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs ``node`` holds as attributes (an If's branches, a Loop's or Scan's body)."""
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
    for sub in subgraphs(node):
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


def all_graphs(graph: onnx.GraphProto):
    """``graph`` and every graph nested in it."""
    yield graph
    for node in graph.node:
        for sub in subgraphs(node):
            yield from all_graphs(sub)


def _walk(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for sub in subgraphs(node):
            yield from _walk(sub)


def inline_constant_ifs(graph: onnx.GraphProto) -> int:
    """Replace every ``If`` of the main graph whose condition is a constant by the branch it
    always takes (repeatedly, so an inlined branch's own constant Ifs go too). Returns how many
    were inlined."""
    inlined = 0
    while True:
        for position, node in enumerate(graph.node):
            branch = _taken_branch(graph, node)
            if branch is not None:
                _inline(graph, position, node, branch)
                inlined += 1
                break
        else:
            return inlined


def _taken_branch(graph: onnx.GraphProto, node: onnx.NodeProto) -> onnx.GraphProto | None:
    if node.op_type != "If" or node.domain not in ("", "ai.onnx") or not node.input:
        return None
    value = _constant(graph, node.input[0])
    if value is None or value.size != 1:
        return None
    name = "then_branch" if bool(value.ravel()[0]) else "else_branch"
    branch = next((a.g for a in node.attribute if a.name == name), None)
    if branch is None or branch.sparse_initializer or len(branch.output) != len(node.output):
        return None
    return branch


def _constant(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] == name:
            value = next((a for a in node.attribute if a.name == "value"), None)
            return numpy_helper.to_array(value.t) if value is not None else None
    return None


def _inline(graph: onnx.GraphProto, position: int, node: onnx.NodeProto,
            branch: onnx.GraphProto) -> None:
    """Put ``branch``'s nodes where ``node`` (its If) was. Names the branch itself defines get
    a fresh prefix, and so do their reads inside nested subgraphs (ONNX names are unique
    across scopes, so a rename never hits another tensor); names local to a nested subgraph
    stay. Its initializers join the graph; an Identity per output writes the If's outputs."""
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    taken |= {o for n in _walk(graph) for o in n.output}
    prefix = f"{node.name or 'if'}/"
    renamed: dict[str, str] = {}
    for name in [t.name for t in branch.initializer] + [o for n in branch.node
                                                        for o in n.output if o]:
        new, k = prefix + name, 1
        while new in taken:
            k += 1
            new = f"{prefix}{name}__{k}"
        taken.add(new)
        renamed[name] = new
    for tensor in branch.initializer:
        copy = graph.initializer.add()
        copy.CopyFrom(tensor)
        copy.name = renamed[tensor.name]
    nodes = []
    for inner in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        rename_reads_and_writes(copy, renamed)
        if copy.name:
            copy.name = prefix + copy.name
        nodes.append(copy)
    for out, result in zip(node.output, branch.output):
        nodes.append(onnx.helper.make_node("Identity", [renamed.get(result.name, result.name)],
                                           [out], name=f"{prefix}{out}"))
    rest = [onnx.NodeProto() for _ in graph.node[position + 1:]]
    for copy, later in zip(rest, graph.node[position + 1:]):
        copy.CopyFrom(later)
    del graph.node[position:]
    graph.node.extend(nodes + rest)


def rename_reads_and_writes(node: onnx.NodeProto, renamed: dict[str, str]) -> None:
    """Apply ``renamed`` to the node's inputs and outputs and to every node nested in it."""
    for k, name in enumerate(node.input):
        node.input[k] = renamed.get(name, name)
    for k, name in enumerate(node.output):
        node.output[k] = renamed.get(name, name)
    for sub in subgraphs(node):
        for inner in sub.node:
            rename_reads_and_writes(inner, renamed)


def true_constant_shapes(graph: onnx.GraphProto) -> int:
    """Make every value_info entry of a constant (an initializer or a Constant node's
    output) say the constant's real shape; returns how many were wrong. Exporters write such
    entries by hand (onnxruntime-genai's builder declares its [1] constants as scalars);
    ONNX Runtime ignores them, but ONNX's shape inference, and so the checker, stops there."""
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                shapes[node.output[0]] = list(value.dims)
    fixed = 0
    for info in graph.value_info:
        dims = shapes.get(info.name)
        tt = info.type.tensor_type
        if dims is None or not tt.HasField("shape"):
            continue
        if [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim] != dims:
            del tt.shape.dim[:]
            for d in dims:
                tt.shape.dim.add().dim_value = d
            fixed += 1
    return fixed
