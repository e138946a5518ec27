"""What an edit left unread: weights, and the nodes that computed them, that nothing reads
any more (a bias computed by Reshape once a pruned copy replaced it)."""

from __future__ import annotations

import onnx

from .normalize import subgraphs


def read_names(graph: onnx.GraphProto) -> set[str]:
    """Every name read in ``graph`` and its nested graphs, graph outputs included."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for sub in subgraphs(node):
            names |= read_names(sub)
    return names


def drop_unread_initializers(graph: onnx.GraphProto, read_before: set[str]) -> None:
    """Remove the initializers that were read before and are read by nothing now (an outer
    weight whose only reader now has its own pruned copy); IR 3 input entries go with them."""
    read = read_names(graph)
    gone = {t.name for t in graph.initializer if t.name in read_before and t.name not in read}
    if not gone:
        return
    keep = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    inputs = [i for i in graph.input if i.name not in gone]
    del graph.input[:]
    graph.input.extend(inputs)


def drop_orphaned_constants(model: onnx.ModelProto, before: set[str]) -> None:
    """Remove weights (and the nodes that computed them) that slicing left unread.

    Only what was read before (``before``: ``read_names`` of the graph before the edit) and
    is read by nothing now goes, so the graph otherwise stays exactly as exported.
    """
    while True:
        used = read_names(model.graph)
        dead = [n for n in model.graph.node
                if not any(o in used for o in n.output) and any(o in before for o in n.output)]
        for n in dead:
            model.graph.node.remove(n)
        if not dead:
            break
    drop_unread_initializers(model.graph, before)
