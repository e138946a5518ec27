"""Attention heads (issue 3, first increment): a BERT-style encoder block written the way
exporters write it: separate Q/K/V projections, Reshape to heads, Transpose, MatMul, Softmax,
MatMul, Transpose, Reshape, output projection, residual + LayerNorm, and an MLP."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.numpy_helper
import pytest

import onnxprune

from .builder import GraphBuilder
from .oracle import assert_oracle

S, E, H = 6, 32, 4
D = E // H


def encoder_block(opset=17, shape_entry=0):
    b = GraphBuilder(opset)

    def linear(x, n_in, n_out):
        return b.op("Add", [b.op("MatMul", [x, b.weight(n_in, n_out)]), b.weight(n_out)])

    def heads(x, perm):
        target = b.const(np.array([shape_entry or 1, S, H, D] if shape_entry != 0 else
                                  [0, 0, H, D], np.int64))
        return b.op("Transpose", [b.op("Reshape", [x, target])], perm=perm)

    x = "x"
    q = heads(linear(x, E, E), [0, 2, 1, 3])
    k = heads(linear(x, E, E), [0, 2, 3, 1])
    v = heads(linear(x, E, E), [0, 2, 1, 3])
    scores = b.op("Mul", [b.op("MatMul", [q, k]), b.const(np.float32(D ** -0.5))])
    scores = b.op("Add", [scores, b.const(np.zeros((1, 1, 1, S), np.float32))])
    context = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    context = b.op("Reshape", [b.op("Transpose", [context], perm=[0, 2, 1, 3]),
                               b.const(np.array([0, 0, E], np.int64))])
    y = b.op("LayerNormalization", [b.op("Add", [x, linear(context, E, E)]), b.weight(E),
                                    b.weight(E)], axis=-1)
    mlp = linear(b.op("Relu", [linear(y, E, 4 * E)]), 4 * E, E)
    out = b.op("LayerNormalization", [b.op("Add", [y, mlp]), b.weight(E), b.weight(E)], axis=-1)
    return b.model({"x": [1, S, E]}, [out])


def test_heads_and_mlp_neurons_are_groups():
    info = onnxprune.inspect(encoder_block())
    prunable = sorted(g["channels"] for g in info["groups"] if g["prunable"])
    assert H in [g["units"] for g in info["groups"] if g["prunable"]]
    assert 4 * E in prunable


@pytest.mark.parametrize("entry", [0, 1])
def test_head_pruning_matches_masked_original(entry):
    assert_oracle(encoder_block(shape_entry=entry), ratio=0.5)


def test_pruned_heads_rewrite_reshape_constants():
    pruned, report = onnxprune.prune(encoder_block(), ratio=0.5, round_to=1)
    targets = [next(t for t in pruned.graph.initializer if t.name == n.input[1])
               for n in pruned.graph.node if n.op_type == "Reshape"]
    dims = [list(np.frombuffer(t.raw_data, dtype=np.int64)) if t.raw_data else list(t.int64_data)
            for t in targets]
    assert [0, 0, H // 2, D] in dims and [0, 0, E // 2] in dims
    assert report["check"]["ok"]


def _widths(report):
    return {g["kind"]: (g["units"], len(g["kept"])) for g in report["groups"] if g["prunable"]}


def test_group_kinds_heads_mlp_channels():
    info = onnxprune.inspect(encoder_block())
    kinds = {g["kind"] for g in info["groups"] if g["prunable"]}
    assert kinds == {"heads", "mlp"}
    from .test_patterns import residual
    assert {g["kind"] for g in onnxprune.inspect(residual())["groups"]} == {"channels"}


@pytest.mark.parametrize("heads,mlp", [(0.5, 0.0), (0.0, 0.5), (0.25, 0.75)])
def test_heads_and_mlp_ratios_apply_to_their_own_groups(heads, mlp):
    _, report = onnxprune.prune(encoder_block(), ratio=0.0, heads=heads, mlp=mlp, round_to=1)
    widths = _widths(report)
    assert widths["heads"] == (H, H - int(round(H * heads)))
    assert widths["mlp"] == (4 * E, 4 * E - int(round(4 * E * mlp)))
    assert report["check"]["ok"]


def test_cli_heads_and_mlp(tmp_path, capsys):
    import onnx

    from onnxprune.cli import main

    src = tmp_path / "block.onnx"
    onnx.save(encoder_block(), src)
    assert main(["prune", str(src), "-o", str(tmp_path / "o.onnx"), "--ratio", "0",
                 "--heads", "0.5", "--mlp", "0.25", "--round-to", "1"]) == 0
    kinds = {line.split()[1] for line in capsys.readouterr().out.splitlines()
             if line.split() and line.split()[0].isdigit()}      # the pruned groups' rows
    assert kinds == {"heads", "mlp"}
    assert main(["prune", str(src), "--heads", "1.0"]) == 2
    assert main(["inspect", str(src)]) == 0
    assert "heads" in capsys.readouterr().out


def packed_qkv_block():
    """Swin/ViT style: one qkv projection reshaped to [B, S, 3, H, D], permuted to
    [3, B, H, S, D] and split by Gather 0/1/2."""
    b = GraphBuilder()
    qkv = b.op("MatMul", ["x", b.weight(E, 3 * E)])
    qkv = b.op("Transpose", [b.op("Reshape", [qkv, b.const(np.array([1, S, 3, H, D], np.int64))])],
               perm=[2, 0, 3, 1, 4])
    q, k, v = (b.op("Gather", [qkv, b.const(np.int64(i))], axis=0) for i in range(3))
    scores = b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])])
    context = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    context = b.op("Reshape", [b.op("Transpose", [context], perm=[0, 2, 1, 3]),
                               b.const(np.array([1, S, E], np.int64))])
    return b.model({"x": [1, S, E]}, [b.op("MatMul", [context, b.weight(E, E)])])


def test_packed_qkv_split_by_gather_prunes_heads():
    model = packed_qkv_block()
    heads = [g for g in onnxprune.inspect(model)["groups"] if g["kind"] == "heads"]
    assert len(heads) == 1 and heads[0]["prunable"] and heads[0]["units"] == H
    assert_oracle(model, ratio=0.5)
    pruned, report = onnxprune.prune(model, ratio=0.0, heads=0.5, round_to=1)
    assert report["check"]["ok"]
    picks = sorted(int(np.asarray(onnx.numpy_helper.to_array(t)))
                   for n in pruned.graph.node if n.op_type == "Gather"
                   for t in pruned.graph.initializer if t.name == n.input[1])
    assert picks == [0, 1, 2]   # q, k, v rows survive; the indices stay valid


def batch_merged_heads_block():
    """torchvision's nn.MultiheadAttention as the dynamo exporter writes it: sequence-first
    [S, N, E], heads merged with the dynamic batch by ``view(S, N * H, D)``, then split out
    again as [N, H, S, D] for the attention MatMuls."""
    b = GraphBuilder()

    def heads(x, perm):
        merged = b.op("Reshape", [x, b.const(np.array([S, -1, D], np.int64))])     # [S, N·H, D]
        x = b.op("Transpose", [merged], perm=[1, 0, 2])                             # [N·H, S, D]
        x = b.op("Reshape", [x, b.const(np.array([-1, H, S, D], np.int64))])       # [N, H, S, D]
        return b.op("Transpose", [x], perm=perm) if perm else x

    q, k, v = (b.op("MatMul", ["x", b.weight(E, E)]) for _ in range(3))
    scores = b.op("MatMul", [heads(q, None), heads(k, [0, 1, 3, 2])])
    context = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), heads(v, None)])
    context = b.op("Reshape", [b.op("Transpose", [context], perm=[2, 0, 1, 3]),
                               b.const(np.array([S, -1, E], np.int64))])
    return b.model({"x": [S, "N", E]}, [b.op("MatMul", [context, b.weight(E, E)])])


def test_heads_merged_with_a_dynamic_batch_prune_whole():
    model = batch_merged_heads_block()
    heads = [g for g in onnxprune.inspect(model)["groups"] if g["kind"] == "heads"]
    assert len(heads) == 1 and heads[0]["prunable"] and heads[0]["units"] == H
    assert_oracle(model, ratio=0.5, shapes={"x": (S, 3, E)})   # batch 3: the tiling matters
    pruned, report = onnxprune.prune(model, ratio=0.0, heads=0.5, round_to=1,
                                     input_shapes={"x": (S, 2, E)})
    assert report["check"]["ok"]
    targets = {tuple(onnx.numpy_helper.to_array(t).tolist()) for n in pruned.graph.node
               if n.op_type == "Reshape" for t in pruned.graph.initializer if t.name == n.input[1]}
    assert {(S, -1, D), (-1, H // 2, S, D), (S, -1, E // 2)} <= targets


def test_tiled_heads_reaching_an_unknown_op_are_a_barrier():
    b = GraphBuilder()
    q = b.op("MatMul", ["x", b.weight(E, E)])
    merged = b.op("Reshape", [q, b.const(np.array([S, -1, D], np.int64))])
    out = b.op("Reshape", [b.op("Relu", [merged]), b.const(np.array([S, -1, E], np.int64))])
    model = b.model({"x": [S, "N", E]}, [b.op("MatMul", [out, b.weight(E, E)])])
    reasons = {b["reason"] for b in onnxprune.inspect(model)["barriers"]}
    assert any("merged with a dynamic (batch) axis" in r for r in reasons)
    assert_oracle(model, ratio=0.5, shapes={"x": (S, 2, E)}, expect_pruned=False)
