"""Pruning inside control flow: the branches of an ``If`` and the bodies of ``Loop`` and
``Scan``, each on its own.

To the model's analysis a control-flow node is a barrier: every channel that reaches it or
leaves it is frozen. Inside a body, channels that are made and read there (the hidden layer of
an MLP in a Loop body, say) are coupled only there. So each body is pruned as a model of its
own (``body_model``): its formal inputs and the outer-scope values it reads become that
model's inputs, which carry no channels, and its outputs stay as they are, which freezes every
channel that crosses the boundary. Outer-scope *constants* it reads become its initializers,
so a weight that an exporter keeps in the main graph and reads inside the body (PyTorch does)
prunes too. The rewritten body goes back in place (``write_back``): a weight it changed
becomes the body's own under a new name, while the outer one stays for its other readers or
goes when it has none left; new names are made unique across the whole model.

The same body is rewritten into the pruned model and into the masked original, from the same
plan, so the whole model's check covers what changed inside.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import one_line
from ..graph import ModelGraph
from ..graph.model_graph import fresh_name, outer_names
from ..io.normalize import rename_reads_and_writes, subgraphs
from ..io.orphans import drop_unread_initializers, read_names

# (standalone body model, "prune" or "mask") -> (its rewrite, or None when nothing went;
# a summary for the report)
BodyRewriter = Callable[[onnx.ModelProto, str], tuple[onnx.ModelProto | None, dict]]


def has_bodies(model: onnx.ModelProto) -> bool:
    return any(a.type == onnx.AttributeProto.GRAPH for n in model.graph.node
               for a in n.attribute)


def rewrite_bodies(model: onnx.ModelProto, rewriter: BodyRewriter, mode: str) -> list[dict]:
    """Rewrite every branch and body of ``model`` (in place) with ``rewriter``; returns one
    summary per body, with the node and attribute it belongs to."""
    if not has_bodies(model):
        return []
    outer = ModelGraph(model)
    read_before = read_names(model.graph)
    taken = defined_names(model.graph)
    summaries = []
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type != onnx.AttributeProto.GRAPH:
                continue
            where = {"node": node.name or node.op_type, "op": node.op_type, "graph": attr.name}
            made = body_model(attr.g, outer, model)
            if made is None:
                summaries.append({**where, "pruned": False, "reason": (
                    "it reads a value of unknown type, takes a non-tensor input, or holds "
                    "sparse initializers")})
                continue
            standalone, imported = made
            try:
                result, summary = rewriter(standalone, mode)
            except Exception as exc:  # noqa: BLE001 - a body the tool cannot follow stays whole
                summaries.append({**where, "pruned": False, "reason": one_line(str(exc), 160)})
                continue
            summaries.append({**where, **summary})
            if result is not None:
                write_back(attr.g, result.graph, imported, taken)
    drop_unread_initializers(model.graph, read_before)
    return summaries


def body_model(body: onnx.GraphProto, outer: ModelGraph, model: onnx.ModelProto
               ) -> tuple[onnx.ModelProto, dict[str, bytes]] | None:
    """The body as a model of its own, and the outer constants it imported (name → their
    serialized tensor, to tell later whether the rewrite changed them); None when a value it
    reads from outside has no known element type or the body holds sparse initializers."""
    if body.sparse_initializer or not all(i.type.HasField("tensor_type") for i in body.input):
        return None
    graph = onnx.GraphProto(name=body.name or "body")
    graph.node.extend(body.node)
    graph.initializer.extend(body.initializer)
    graph.input.extend(body.input)
    graph.output.extend(body.output)
    graph.value_info.extend(body.value_info)
    imported: dict[str, bytes] = {}
    for name in dict.fromkeys(outer_names(body)):
        value = outer.const(name)
        if value is not None:
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            imported[name] = tensor.SerializeToString()
            continue
        dtype = outer.dtypes.get(name)
        if not dtype:
            return None
        shape = outer.shapes.get(name)
        graph.input.append(onnx.helper.make_tensor_value_info(
            name, dtype, list(shape) if shape is not None else None))
    standalone = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    standalone.ir_version = max(model.ir_version, 4)
    standalone.functions.extend(model.functions)
    return standalone, imported


def write_back(body: onnx.GraphProto, result: onnx.GraphProto, imported: dict[str, bytes],
               taken: set[str]) -> None:
    """Put the rewritten body ``result`` in place of ``body`` (inputs and outputs stay).
    ``taken``: every name the model defines, in any scope; names made here join it."""
    local = defined_names(body)
    rename: dict[str, str] = {}
    initializers = []
    for tensor in result.initializer:
        if tensor.name in imported:
            if tensor.SerializeToString() == imported[tensor.name]:
                continue        # unchanged: still read from the outer scope
            rename[tensor.name] = fresh_name(f"{tensor.name}_{body.name or 'body'}", taken)
        elif tensor.name not in local and tensor.name in taken:
            rename[tensor.name] = fresh_name(tensor.name, taken)
        initializers.append(tensor)
    for node in result.node:
        for out in node.output:
            if out and out not in local and out in taken:
                rename[out] = fresh_name(out, taken)
    outside = {i.name for i in result.input} | set(imported)
    value_info = [v for v in result.value_info if v.name not in outside]
    del body.node[:]
    body.node.extend(result.node)
    del body.initializer[:]
    body.initializer.extend(initializers)
    del body.value_info[:]
    body.value_info.extend(value_info)
    if rename:
        _rename(body, rename)


def _rename(graph: onnx.GraphProto, rename: dict[str, str]) -> None:
    """Apply ``rename`` to the body's initializers, value_info and nodes, nested graphs
    included (the new names are unique model-wide, so no scope hides one)."""
    for tensor in graph.initializer:
        tensor.name = rename.get(tensor.name, tensor.name)
    for info in graph.value_info:
        info.name = rename.get(info.name, info.name)
    for node in graph.node:
        rename_reads_and_writes(node, rename)


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """Every name ``graph`` and its nested graphs define (inputs, initializers, outputs of
    nodes)."""
    names = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(o for o in node.output if o)
        for sub in subgraphs(node):
            names |= defined_names(sub)
    return names
