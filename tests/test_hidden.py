"""Hidden-size pruning (opt-in): the residual stream of a pre-norm decoder, made by an
embedding Gather, read across by RMSNorm (decomposed: Pow → ReduceMean → Sqrt → Div) and by
LayerNormalization, written by every block's output projection, read by the LM head.

The pruned norms average over the kept channels, which is a different function; the oracle
proves the indices against the masked original whose norms read the kept channels alone."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxprune

from .builder import GraphBuilder
from .oracle import assert_oracle

V, S, E, F = 50, 5, 32, 48


def rms_norm(b: GraphBuilder, x: str) -> str:
    mean = b.op("ReduceMean", [b.op("Pow", [x, b.const(np.float32(2.0))])], axes=[-1])
    rms = b.op("Sqrt", [b.op("Add", [mean, b.const(np.float32(1e-6))])])
    return b.op("Mul", [b.op("Div", [x, rms]), b.weight(E)])


def decoder(norm="rms", position=True, output_hidden=False) -> onnx.ModelProto:
    b = GraphBuilder(seed=3)
    x = b.op("Gather", [b.weight(V, E), "ids"], axis=0)
    if position:
        x = b.op("Add", [x, b.weight(1, S, E)])
    for _ in range(2):
        h = rms_norm(b, x) if norm == "rms" else b.op(
            "LayerNormalization", [x, b.weight(E), b.weight(E)], axis=-1)
        gate = b.op("MatMul", [h, b.weight(E, F)])
        up = b.op("MatMul", [h, b.weight(E, F)])
        act = b.op("Mul", [b.op("Mul", [gate, b.op("Sigmoid", [gate])]), up])
        x = b.op("Add", [x, b.op("MatMul", [act, b.weight(F, E)])])
    h = rms_norm(b, x) if norm == "rms" else b.op(
        "LayerNormalization", [x, b.weight(E), b.weight(E)], axis=-1)
    out = h if output_hidden else b.op("MatMul", [h, b.weight(E, V)])
    graph = helper.make_graph(
        b.nodes, "decoder", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, S])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, S, E if output_hidden else V])],
        b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def groups(model, kind):
    return [g for g in onnxprune.inspect(model)["groups"] if g["kind"] == kind]


@pytest.mark.parametrize("norm", ["rms", "layernorm"])
def test_hidden_stream_is_one_opt_in_group(norm):
    (hidden,) = groups(decoder(norm), "hidden")
    assert hidden["prunable"] and hidden["units"] == E
    assert any("Gather" in s for s in hidden["sources"])
    # Without --hidden it is left alone, whatever --ratio says.
    pruned, report = onnxprune.prune(decoder(norm), ratio=0.5, round_to=1)
    entry = next(g for g in report["groups"] if g["kind"] == "hidden")
    assert entry["removed"] == [] and report["changes_function"] is False


@pytest.mark.parametrize("norm", ["rms", "layernorm"])
@pytest.mark.parametrize("position", [True, False])
def test_hidden_pruning_matches_masked_original(norm, position):
    assert_oracle(decoder(norm, position), ratio=0.5, shapes={"ids": (1, S)},
                  by_kind={"hidden": 0.5})


def test_hidden_pruning_slices_table_norms_and_head():
    pruned, report = onnxprune.prune(decoder("layernorm"), ratio=0.0, hidden=0.25, round_to=8)
    assert report["check"]["ok"] and report["changes_function"] is True
    dims = {t.name: list(t.dims) for t in pruned.graph.initializer}
    gather = next(n for n in pruned.graph.node if n.op_type == "Gather")
    assert dims[gather.input[0]] == [V, 24]
    norms = [n for n in pruned.graph.node if n.op_type == "LayerNormalization"]
    assert all(dims[n.input[1]] == [24] and dims[n.input[2]] == [24] for n in norms)
    head = [n for n in pruned.graph.node if n.op_type == "MatMul"][-1]
    assert dims[head.input[1]] == [24, V]


def test_hidden_graph_output_is_not_pruned():
    (hidden,) = groups(decoder(output_hidden=True), "hidden")
    assert not hidden["prunable"] and "graph output" in hidden["reason"]


def test_reduction_that_cannot_follow_is_a_barrier():
    b = GraphBuilder()
    h = b.op("MatMul", ["x", b.weight(E, E)])
    out = b.op("Mul", [h, b.op("ReduceMax", [h], axes=[-1])])
    model = b.model({"x": [1, S, E]}, [b.op("MatMul", [out, b.weight(E, E)])])
    reasons = {g["reason"] for g in onnxprune.inspect(model)["groups"] if not g["prunable"]}
    assert any("ReduceMax" in r and "reduces over the channels" in r for r in reasons)
