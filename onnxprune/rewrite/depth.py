"""Depth pruning's rewrite: residual blocks removed whole, or zeroed for the oracle.

``mode="prune"``: each block's Add becomes ``Identity(x)`` (its output keeps its name), a fused
SkipSimplifiedLayerNormalization the norm of ``x`` alone, and the branch's nodes go, with the
weights only they read. ``mode="mask"``: the branch is multiplied by 0 before the Add, so the
model computes what the pruned one computes, with every node in place: the oracle depth
pruning is checked against.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import ModelGraph
from ..graph.residual import ResidualBlock
from ..io.orphans import drop_orphaned_constants, read_names


def drop_blocks(model: onnx.ModelProto, blocks: list[ResidualBlock], mode: str = "prune"
                ) -> onnx.ModelProto:
    if mode not in ("prune", "mask"):
        raise ValueError(mode)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    before = read_names(out.graph)
    graph = ModelGraph(out, infer_shapes=False)
    gone = {i for block in blocks for i in block.nodes} if mode == "prune" else set()
    adds = {block.add: block for block in blocks}
    nodes = []
    for ref in graph.nodes:
        if ref.index in gone:
            continue
        block = adds.get(ref.index)
        if block is None:
            nodes.append(ref.proto)
        elif mode == "prune" and ref.op == "Add":
            nodes.append(helper.make_node("Identity", [block.skip], [block.output],
                                          name=ref.proto.name))
        elif mode == "prune":
            nodes.extend(_unfused(ref, block))
        else:
            zero = graph._fresh_name(f"{block.label}_zero")
            out.graph.initializer.append(numpy_helper.from_array(
                np.zeros((), helper.tensor_dtype_to_np_dtype(block.dtype)), zero))
            zeroed = graph._fresh_name(f"{block.branch}_zeroed")
            nodes.append(helper.make_node("Mul", [block.branch, zero], [zeroed],
                                          name=f"{block.label}_zero_branch"))
            add = onnx.NodeProto()
            add.CopyFrom(ref.proto)
            add.input[list(add.input).index(block.branch)] = zeroed
            nodes.append(add)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if mode == "prune":
        drop_orphaned_constants(out, before)
        _forget_shapes(out)
    return out


def _unfused(ref, block: ResidualBlock) -> list[onnx.NodeProto]:
    """SkipSimplifiedLayerNormalization(x, f, γ) without its branch: the norm of x alone
    (SimplifiedLayerNormalization, as onnxruntime-genai writes it) and x passed on as the
    residual sum."""
    out = list(ref.proto.output)
    epsilon = next((a.f for a in ref.proto.attribute if a.name == "epsilon"), 1e-5)
    nodes = [helper.make_node("SimplifiedLayerNormalization", [block.skip, ref.proto.input[2]],
                              [out[0]], name=ref.proto.name, axis=-1, epsilon=epsilon)]
    if len(out) > 3 and out[3]:
        nodes.append(helper.make_node("Identity", [block.skip], [out[3]],
                                      name=f"{ref.proto.name}_residual"))
    return nodes


def _forget_shapes(model: onnx.ModelProto) -> None:
    """Value-info entries of tensors no node writes any more go with them."""
    written = {o for n in model.graph.node for o in n.output}
    keep = [v for v in model.graph.value_info if v.name in written]
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
