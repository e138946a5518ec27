"""Depth pruning's rewrite: residual blocks removed whole, or zeroed for the oracle.

``mode="prune"``: each block's Add becomes ``Identity(x)`` (its output keeps its name), a fused
Skip(Simplified)LayerNormalization the norm of ``x`` alone, and the branch's nodes go (a fused
norm's bias with them), with the weights only they read. ``mode="mask"``: the branch (and
that bias) is multiplied by 0 before the Add, so the model computes what the pruned one
computes, with every node in place: the oracle depth pruning is checked against.
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
            add = onnx.NodeProto()
            add.CopyFrom(ref.proto)
            for k, name in enumerate(add.input):
                if name and name in (block.branch, block.bias):
                    part = "branch" if name == block.branch else "bias"
                    zeroed = graph._fresh_name(f"{name}_zeroed")
                    nodes.append(helper.make_node("Mul", [name, zero], [zeroed],
                                                  name=f"{block.label}_zero_{part}"))
                    add.input[k] = zeroed
            nodes.append(add)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if mode == "prune":
        drop_orphaned_constants(out, before)
        _forget_shapes(out)
    return out


def _unfused(ref, block: ResidualBlock) -> list[onnx.NodeProto]:
    """A fused Skip(Simplified)LayerNormalization without its branch: the norm of x alone
    (SimplifiedLayerNormalization, as onnxruntime-genai writes it, or LayerNormalization with
    γ and β) and x passed on as the residual sum."""
    out, inputs = list(ref.proto.output), list(ref.proto.input)
    epsilon = next((a.f for a in ref.proto.attribute if a.name == "epsilon"), 1e-12)
    if ref.op == "SkipLayerNormalization":
        norm = helper.make_node("LayerNormalization", [block.skip] + inputs[2:4], [out[0]],
                                name=ref.proto.name, axis=-1, epsilon=epsilon)
    else:
        norm = helper.make_node("SimplifiedLayerNormalization", [block.skip, inputs[2]],
                                [out[0]], name=ref.proto.name, axis=-1, epsilon=epsilon)
    nodes = [norm]
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
