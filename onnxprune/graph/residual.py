"""Residual blocks: ``y = x + f(x)`` written as an ``Add`` whose one input ``x`` (the skip)
is an ancestor of the other, ``f(x)`` (the branch), both of one shape; or fused into ONNX
Runtime's ``SkipSimplifiedLayerNormalization(x, f, γ)`` (onnxruntime-genai's decoders) or
``SkipLayerNormalization(f, x, γ, β, bias)`` (its transformer optimizer on BERT-like
encoders), which normalize the sum and may pass it on as their fourth output, the branch
starting from the node that made ``x`` (a fused norm whose first output the branch reads).
A fused ``bias`` belongs to the branch (it is the branch's last projection's). Such a block
can go whole: ``y`` becomes ``x`` and the branch's nodes are dropped, when nothing outside
the block reads what the branch computes (a KV cache output, say, keeps its block).
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import onnx

from .model_graph import ModelGraph


@dataclass
class ResidualBlock:
    add: int                    # the Add node's index
    skip: str                   # x
    branch: str                 # f(x)
    output: str                 # y
    nodes: frozenset[int]       # the branch's nodes (what goes with the block)
    label: str                  # the Add's name, to name the block by
    dtype: int                  # the element type of x
    bias: str = ""              # a fused norm's bias input (part of the branch), if any


# Fused residual norms (com.microsoft): the input index of their bias.
FUSED = {"SkipSimplifiedLayerNormalization": 3, "SkipLayerNormalization": 4}


def residual_blocks(graph: ModelGraph) -> list[ResidualBlock]:
    """Every removable residual block, in graph order."""
    out = []
    for ref in graph.order:
        if ref.op == "Add" and len(ref.proto.input) == 2:
            a, b = ref.proto.input
            pairs = ((a, b), (b, a))
        elif ref.op in FUSED and ref.proto.domain == "com.microsoft":
            a, b = ref.proto.input[:2]
            pairs = ((a, b), (b, a))
        else:
            continue
        for skip, branch in pairs:
            block = _block(graph, ref, skip, branch)
            if block is not None:
                out.append(block)
                break
    return out


def _block(graph: ModelGraph, add, skip: str, branch: str) -> ResidualBlock | None:
    if not skip or not branch or skip == branch or graph.const(branch) is not None:
        return None
    shape_x, shape_f = graph.shape(skip), graph.shape(branch)
    if shape_x is None or shape_x != shape_f or None in shape_x:
        return None
    if skip not in graph.dag or branch not in graph.dag:
        return None
    # The branch: nodes on a path from x (or, fused, from the node that made x) to f(x).
    start = skip if add.op == "Add" else graph.producer.get(skip)
    start = start.index if start is not None and not isinstance(start, str) else start
    if start is None or not nx.has_path(graph.dag, start, branch):
        return None
    between = nx.descendants(graph.dag, start) & nx.ancestors(graph.dag, branch)
    nodes = frozenset(n for n in between if isinstance(n, int))
    for index in nodes:
        for name in graph.nodes[index].proto.output:
            if not name:
                continue
            if name in graph.graph_outputs:
                return None
            readers = {r.index for r in graph.consumers.get(name, [])}
            if not readers <= nodes | {add.index}:
                return None
    if not nodes:
        return None
    dtype = graph.dtypes.get(skip, onnx.TensorProto.FLOAT)
    bias = ""
    if add.op in FUSED and len(add.proto.input) > FUSED[add.op]:
        bias = add.proto.input[FUSED[add.op]]
    return ResidualBlock(add.index, skip, branch, add.proto.output[0], nodes, add.label, dtype,
                         bias)
