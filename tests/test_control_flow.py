"""Weights inside control flow (issue 6). An ``If`` whose condition is a constant is replaced
by the branch it always takes, whose channels then prune. An ``If`` decided at run time, and
``Loop`` and ``Scan``, are barriers: every channel that reaches one, as an input or read from
the outer scope inside a branch or body, is frozen, the subgraphs are never edited, and the
rest of the model still prunes. The oracle holds throughout."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import api
from onnxprune.io import load_model
from onnxprune.verify import make_inputs, run_model

from .builder import GraphBuilder
from .oracle import assert_oracle

RNG = np.random.default_rng(3)


def _weight(name, *shape):
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32) * 0.4, name)


def _conv_branch(name: str, reads: str, cin: int, cout: int) -> onnx.GraphProto:
    """A branch with its own weight that convolves an outer-scope tensor."""
    return helper.make_graph([helper.make_node("Conv", [reads, f"{name}_w"], [f"{name}_out"])],
                             name, [], [helper.make_tensor_value_info(f"{name}_out",
                                                                      TensorProto.FLOAT, None)],
                             [_weight(f"{name}_w", cout, cin, 1, 1)])


def _subgraph_weights(model) -> dict[str, bytes]:
    found = {}
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.update({t.name: t.SerializeToString() for t in attr.g.initializer})
    return found


def _if_model(constant_condition: bool):
    """conv → relu → conv → relu → If(then: conv 1×1 of it, else: another) → conv; the
    condition is a constant, or whether the input's mean is positive."""
    b = GraphBuilder()
    a = b.op("Relu", [b.conv("x", 3, 16)])
    inner = b.op("Relu", [b.conv(a, 16, 16)])
    if constant_condition:
        cond = b.const(np.array(True))
    else:
        cond = b.op("Greater", [b.op("ReduceMean", ["x"], keepdims=0),
                                b.const(np.array(0.0, np.float32))])
    b.nodes.append(helper.make_node("If", [cond], ["chosen"], name="choose",
                                    then_branch=_conv_branch("then", inner, 16, 12),
                                    else_branch=_conv_branch("else", inner, 16, 12)))
    out = b.conv(b.op("Relu", ["chosen"]), 12, 8)
    return b.model({"x": [1, 3, 8, 8]}, [out])


def test_an_if_with_a_constant_condition_is_inlined_and_its_branch_prunes():
    model = _if_model(constant_condition=True)
    numbers = assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = api.prune(model, ratio=0.5, round_to=1)
    assert "If" not in {n.op_type for n in pruned.graph.node}
    branch_weight = next(t for t in pruned.graph.initializer if t.name.endswith("then_w"))
    assert list(branch_weight.dims) == [6, 8, 1, 1], "the branch's conv lost channels both ways"
    assert numbers["params"][1] < 0.5 * numbers["params"][0]


def test_an_if_decided_at_run_time_is_a_barrier_and_the_rest_prunes():
    model = _if_model(constant_condition=False)
    before = _subgraph_weights(model)
    assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = api.prune(model, ratio=0.5, round_to=1)
    assert _subgraph_weights(pruned) == before, "the branches are never edited"
    frozen = [g for g in report["groups"] if not g["prunable"]]
    assert any("choose (If)" in (g.get("reason") or "") for g in frozen)
    pruned_groups = [g for g in report["groups"] if g["prunable"] and g["removed"]]
    assert pruned_groups, "the convs before the If still prune"


def _loop_model():
    """conv → Loop (3 trips, body: state ← relu(conv(state)) with the body's own weight) →
    conv; the loop-carried state has 8 channels."""
    b = GraphBuilder()
    a = b.op("Relu", [b.conv("x", 3, 16)])
    state = b.conv(a, 16, 8)
    body = helper.make_graph(
        [helper.make_node("Conv", ["s_in", "body_w"], ["s_conv"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["s_conv"], ["s_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 8, 8, 8])],
        [_weight("body_w", 8, 8, 3, 3)])
    trips, keep_going = b.const(np.array(3, np.int64)), b.const(np.array(True))
    b.nodes.append(helper.make_node("Loop", [trips, keep_going, state], ["looped"],
                                    name="repeat", body=body))
    out = b.conv(b.op("Relu", ["looped"]), 8, 8)
    return b.model({"x": [1, 3, 8, 8]}, [out], shapes={out: [1, 8, 8, 8]})


def _scan_model():
    """MatMul → Scan over the sequence (body: running sum through the body's own MatMul) →
    MatMul."""
    b = GraphBuilder()
    h = b.op("Relu", [b.op("MatMul", ["x", b.weight(6, 16)])])
    features = b.op("MatMul", [h, b.weight(16, 10)])
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "scan_w"], ["mixed"]),
         helper.make_node("Add", ["acc_in", "mixed"], ["acc_out"]),
         helper.make_node("Identity", ["acc_out"], ["y_t"])],
        "scan_body",
        [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [2, 10])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [2, 4])],
        [_weight("scan_w", 10, 4)])
    acc = b.const(np.zeros((2, 4), np.float32))
    b.nodes.append(helper.make_node("Scan", [acc, features], ["total", "steps"], name="scan",
                                    body=body, num_scan_inputs=1))
    out = b.op("MatMul", ["steps", b.weight(4, 3)])
    return b.model({"x": [5, 2, 6]}, [out])


def test_an_inlined_branch_keeps_its_nested_loop_intact():
    """The taken branch holds a Loop: its body's own names stay, its reads of the branch's
    names follow their renaming, and the model still computes the same function."""
    loop = _loop_model()
    b = GraphBuilder(seed=5)
    a = b.op("Relu", [b.conv("x", 3, 16)])
    state = b.conv(a, 16, 8)
    repeat = next(n for n in loop.graph.node if n.op_type == "Loop")
    trips, keep_going = b.const(np.array(2, np.int64)), b.const(np.array(True))
    scaled = "branch_scaled"
    then_branch = helper.make_graph(
        [helper.make_node("Mul", [state, state], [scaled]),
         helper.make_node("Loop", [trips, keep_going, scaled], ["branch_out"],
                          body=next(a.g for a in repeat.attribute if a.name == "body"))],
        "then", [], [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT,
                                                   [1, 8, 8, 8])])
    else_branch = helper.make_graph(
        [helper.make_node("Identity", [state], ["else_out"])], "else", [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1, 8, 8, 8])])
    b.nodes.append(helper.make_node("If", [b.const(np.array(True))], ["chosen"], name="pick",
                                    then_branch=then_branch, else_branch=else_branch))
    out = b.conv(b.op("Relu", ["chosen"]), 8, 8)
    model = b.model({"x": [1, 3, 8, 8]}, [out], shapes={out: [1, 8, 8, 8]})
    loaded = load_model(model)
    assert "If" not in {n.op_type for n in loaded.graph.node}
    onnx.checker.check_model(loaded, full_check=True)
    feeds = make_inputs(model)
    assert np.allclose(run_model(loaded, feeds)[out], run_model(model, feeds)[out])
    assert_oracle(model, ratio=0.5, round_to=1)


@pytest.mark.parametrize("make", [_loop_model, _scan_model], ids=["Loop", "Scan"])
def test_a_body_is_a_barrier_and_the_rest_prunes(make):
    model = make()
    before = _subgraph_weights(model)
    numbers = assert_oracle(model, ratio=0.5, round_to=1)
    pruned, _ = api.prune(model, ratio=0.5, round_to=1)
    assert _subgraph_weights(pruned) == before
    assert numbers["params"][1] < numbers["params"][0]
