"""Weights inside control flow (issue 6). An ``If`` whose condition is a constant is replaced
by the branch it always takes, whose channels then prune. An ``If`` decided at run time, and
``Loop`` and ``Scan``, are barriers to the model's channels: every channel that reaches one, as
an input or read from the outer scope inside a branch or body, is frozen, and the rest of the
model still prunes. Inside a branch or body, the channels made and read there prune, the body
taken as a model of its own (``rewrite.bodies``): its own weights, and weights it reads from
the main graph. The oracle holds throughout."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import pipeline
from onnxprune.io import load_model
from onnxprune.runtime import make_inputs, run_model

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
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    assert "If" not in {n.op_type for n in pruned.graph.node}
    branch_weight = next(t for t in pruned.graph.initializer if t.name.endswith("then_w"))
    assert list(branch_weight.dims) == [6, 8, 1, 1], "the branch's conv lost channels both ways"
    assert numbers["params"][1] < 0.5 * numbers["params"][0]


def test_an_if_decided_at_run_time_is_a_barrier_and_the_rest_prunes():
    model = _if_model(constant_condition=False)
    before = _subgraph_weights(model)
    assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    assert _subgraph_weights(pruned) == before, "the branches are never edited"
    frozen = [g for g in report["groups"] if not g["prunable"]]
    assert any("choose (If)" in (g.get("reason") or "") for g in frozen)
    pruned_groups = [g for g in report["groups"] if g["prunable"] and g["removed"]]
    assert pruned_groups, "the convs before the If still prune"


def _loop_model(body_nodes=None, body_weights=None, trips=3):
    """conv → Loop (``trips`` trips over an 8-channel state ``s_in`` → ``s_out``; by default
    body: state ← relu(conv(state)) with the body's own weight) → conv."""
    b = GraphBuilder()
    a = b.op("Relu", [b.conv("x", 3, 16)])
    state = b.conv(a, 16, 8)
    body = helper.make_graph(
        (body_nodes or [helper.make_node("Conv", ["s_in", "body_w"], ["s_conv"],
                                         pads=[1, 1, 1, 1]),
                        helper.make_node("Relu", ["s_conv"], ["s_out"])])
        + [helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [1, 8, 8, 8])],
        body_weights or [_weight("body_w", 8, 8, 3, 3)])
    count, keep_going = b.const(np.array(trips, np.int64)), b.const(np.array(True))
    b.nodes.append(helper.make_node("Loop", [count, keep_going, state], ["looped"],
                                    name="repeat", body=body))
    out = b.conv(b.op("Relu", ["looped"]), 8, 8)
    return b.model({"x": [1, 3, 8, 8]}, [out], shapes={out: [1, 8, 8, 8]})


def _scan_model(mixing=None, seed=0):
    """MatMul → Scan over the sequence (body: a running sum of what ``mixing(builder)`` makes
    of each step, as (nodes from ``x_t`` to ``mixed``, the body's own weights); by default the
    body's own MatMul) → MatMul."""
    b = GraphBuilder(seed=seed)
    h = b.op("Relu", [b.op("MatMul", ["x", b.weight(6, 16)])])
    features = b.op("MatMul", [h, b.weight(16, 10)])
    nodes, weights = (mixing or _own_mixing)(b)
    body = helper.make_graph(
        nodes + [helper.make_node("Add", ["acc_in", "mixed"], ["acc_out"]),
                 helper.make_node("Identity", ["acc_out"], ["y_t"])],
        "scan_body",
        [helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [2, 10])],
        [helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 4]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [2, 4])],
        weights)
    acc = b.const(np.zeros((2, 4), np.float32))
    b.nodes.append(helper.make_node("Scan", [acc, features], ["total", "steps"], name="scan",
                                    body=body, num_scan_inputs=1))
    out = b.op("MatMul", ["steps", b.weight(4, 3)])
    return b.model({"x": [5, 2, 6]}, [out])


def _own_mixing(b):
    return [helper.make_node("MatMul", ["x_t", "scan_w"], ["mixed"])], [_weight("scan_w", 10, 4)]


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
    pruned, _ = pipeline.prune(model, ratio=0.5, round_to=1)
    assert _subgraph_weights(pruned) == before
    assert numbers["params"][1] < numbers["params"][0]


def _loop_mlp_model():
    """conv → Loop (body: state ← conv(relu(conv(state))), 8 → 16 → 8 channels, the body's own
    weights) → conv: the 16 channels inside the body are the body's alone."""
    return _loop_model(
        [helper.make_node("Conv", ["s_in", "body_w1"], ["wide"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["wide"], ["wide_relu"]),
         helper.make_node("Conv", ["wide_relu", "body_w2"], ["s_out"])],
        [_weight("body_w1", 16, 8, 3, 3), _weight("body_w2", 8, 16, 1, 1)], trips=2)


def _body_dims(model) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for n in model.graph.node for a in n.attribute
            if a.type == onnx.AttributeProto.GRAPH for t in a.g.initializer}


def test_channels_made_and_read_inside_a_loop_body_prune():
    model = _loop_mlp_model()
    numbers = assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    assert _body_dims(pruned) == {"body_w1": [8, 8, 3, 3], "body_w2": [8, 8, 1, 1]}
    assert report["bodies"] == [{"node": "repeat", "op": "Loop", "graph": "body",
                                 "pruned": True, "criterion": "l2", "groups": 1,
                                 "channels_removed": 8}]
    body_params = 16 * 8 * 9 + 8 * 16
    assert numbers["params"][0] - numbers["params"][1] > body_params / 2


def _scan_reading_outer_weights():
    """``_scan_model`` whose body mixes by relu(x_t @ W1) @ W2, W1 and W2 kept in the main
    graph and read from the body, as PyTorch exports them."""
    names = []

    def outer_mlp(b):
        names.extend([b.weight(10, 32), b.weight(32, 4)])
        return [helper.make_node("MatMul", ["x_t", names[0]], ["hidden"]),
                helper.make_node("Relu", ["hidden"], ["hidden_relu"]),
                helper.make_node("MatMul", ["hidden_relu", names[1]], ["mixed"])], []

    return _scan_model(outer_mlp, seed=7), tuple(names)


def test_weights_read_from_the_main_graph_prune_inside_a_scan_body():
    model, (w1, w2) = _scan_reading_outer_weights()
    assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    dims = _body_dims(pruned)
    assert dims == {f"{w1}_scan_body": [10, 16], f"{w2}_scan_body": [16, 4]}
    main = {t.name for t in pruned.graph.initializer}
    assert w1 not in main and w2 not in main, "the outer copies went with their only reader"
    assert report["bodies"][0]["channels_removed"] == 16


def test_both_branches_of_a_run_time_if_prune_inside_and_keep_a_shared_weight_apart():
    """Each branch: conv(W_shared) → relu → conv of its own, read from the main graph. Each
    branch is pruned on its own and gets its own slice of the shared weight."""
    b = GraphBuilder(seed=11)
    inner = b.op("Relu", [b.conv(b.op("Relu", [b.conv("x", 3, 16)]), 16, 8)])
    shared = b.weight(16, 8, 1, 1)

    def branch(name):
        w = b.weight(8, 16, 1, 1)
        return helper.make_graph(
            [helper.make_node("Conv", [inner, shared], [f"{name}_wide"]),
             helper.make_node("Relu", [f"{name}_wide"], [f"{name}_relu"]),
             helper.make_node("Conv", [f"{name}_relu", w], [f"{name}_out"])],
            name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])

    cond = b.op("Greater", [b.op("ReduceMean", ["x"], keepdims=0),
                            b.const(np.array(0.0, np.float32))])
    b.nodes.append(helper.make_node("If", [cond], ["chosen"], name="choose",
                                    then_branch=branch("then"), else_branch=branch("else")))
    model = b.model({"x": [1, 3, 8, 8]}, [b.conv(b.op("Relu", ["chosen"]), 8, 4)])
    assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    assert [entry["channels_removed"] for entry in report["bodies"]] == [8, 8]
    assert shared not in {t.name for t in pruned.graph.initializer}
    for x in (np.ones((1, 3, 8, 8), np.float32), -np.ones((1, 3, 8, 8), np.float32)):
        assert run_model(pruned, {"x": x})    # both branches run


def test_a_body_inside_a_body_prunes_too():
    """A Loop whose body holds the MLP Loop of ``_loop_mlp_model``."""
    inner = _loop_mlp_model()
    repeat = next(n for n in inner.graph.node if n.op_type == "Loop")
    b = GraphBuilder(seed=13)
    state = b.conv(b.op("Relu", [b.conv("x", 3, 16)]), 16, 8)
    trips = b.const(np.array(2, np.int64))
    keep_going = b.const(np.array(True))
    outer_body = helper.make_graph(
        [helper.make_node("Loop", [trips, keep_going, "o_in"], ["o_out"], name="inner",
                          body=next(a.g for a in repeat.attribute if a.name == "body")),
         helper.make_node("Identity", ["o_cond_in"], ["o_cond_out"])],
        "outer_body",
        [helper.make_tensor_value_info("j", TensorProto.INT64, []),
         helper.make_tensor_value_info("o_cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("o_in", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("o_cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("o_out", TensorProto.FLOAT, [1, 8, 8, 8])])
    b.nodes.append(helper.make_node("Loop", [trips, keep_going, state], ["looped"],
                                    name="outer", body=outer_body))
    model = b.model({"x": [1, 3, 8, 8]}, ["looped"], shapes={"looped": [1, 8, 8, 8]})
    assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    nested = report["bodies"][0]["bodies"][0]
    assert (nested["node"], nested["channels_removed"]) == ("inner", 8)
    body = next(a.g for a in pruned.graph.node[-1].attribute if a.name == "body")
    assert _body_dims(onnx.helper.make_model(body)) == {"body_w1": [8, 8, 3, 3],
                                                       "body_w2": [8, 8, 1, 1]}


def test_a_torchscript_loop_prunes_inside_and_the_check_runs_the_body(tmp_path):
    """A real export: a scripted refinement loop, x ← x + fc2(relu(fc1(x))) repeated `steps`
    times; the exporter keeps fc1 and fc2 in the main graph and reads them in the Loop body."""
    torch = pytest.importorskip("torch")

    class Refine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(8, 32), torch.nn.Linear(32, 8)
            self.head = torch.nn.Linear(8, 4)

        def forward(self, x, steps: torch.Tensor):
            for _ in range(int(steps)):
                x = x + self.fc2(torch.relu(self.fc1(x)))
            return self.head(x)

    torch.manual_seed(0)
    path = tmp_path / "refine.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # the TorchScript exporter's deprecation notice
        torch.onnx.export(torch.jit.script(Refine().eval()), (torch.randn(2, 8), torch.tensor(3)),
                          str(path), dynamo=False, input_names=["x", "steps"],
                          output_names=["y"], opset_version=17)
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node if n.op_type == "Loop"] == ["Loop"]
    assert make_inputs(model)["steps"] == 2
    assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    assert report["bodies"][0]["channels_removed"] == 16
    assert report["params"]["after"] == report["params"]["planned_after"] < \
        report["params"]["before"]


def test_a_body_the_tool_cannot_follow_stays_whole():
    from onnxprune.rewrite.bodies import rewrite_bodies

    model = load_model(_loop_mlp_model())
    before = _body_dims(model)

    def fails(standalone, mode):
        raise ValueError("no rule for this\nbody")

    summaries = rewrite_bodies(model, fails, "prune")
    assert summaries == [{"node": "repeat", "op": "Loop", "graph": "body", "pruned": False,
                          "reason": "no rule for this body"}]
    assert _body_dims(model) == before
