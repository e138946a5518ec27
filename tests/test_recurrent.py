"""LSTM, GRU and RNN (issue 6): their input features and their hidden units prune, in PyTorch
exports (one layer, bidirectional, two layers; zero initial states made at run time) and in
hand-made graphs (constant states and peepholes, LSTM's ``input_forget``, GRU's
``linear_before_reset``); a state given at run time keeps the units but not the inputs. The
batch-first ``layout=1`` follows the same rule but is not tested: ONNX Runtime does not run
it."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import pipeline

from .oracle import assert_oracle

torch = pytest.importorskip("torch")

SEQ, BATCH, FEATURES, HIDDEN = 7, 2, 10, 32
SHAPES = {"x": (SEQ, BATCH, FEATURES)}


class _Net(torch.nn.Module):
    def __init__(self, kind: str, bidirectional: bool, layers: int):
        super().__init__()
        self.inp = torch.nn.Linear(FEATURES, 24)
        self.rnn = getattr(torch.nn, kind)(24, HIDDEN, num_layers=layers,
                                           bidirectional=bidirectional)
        self.out = torch.nn.Linear(HIDDEN * (2 if bidirectional else 1), 5)

    def forward(self, x):
        y, _ = self.rnn(torch.relu(self.inp(x)))
        return self.out(y)


def _export(kind: str, bidirectional: bool, layers: int) -> onnx.ModelProto:
    torch.manual_seed(0)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Net(kind, bidirectional, layers).eval(),
                          (torch.randn(SEQ, BATCH, FEATURES),), buffer, dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "seq", 1: "batch"}})
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional,layers", [(False, 1), (True, 1), (False, 2)])
def test_torch_exports_prune_inputs_and_hidden_units(kind, bidirectional, layers):
    model = _export(kind, bidirectional, layers)
    assert_oracle(model, ratio=0.5, shapes=SHAPES)
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1, input_shapes=SHAPES)
    recurrent = [n for n in pruned.graph.node if n.op_type == kind]
    assert len(recurrent) == layers
    for node in recurrent:
        hidden = next(a.i for a in node.attribute if a.name == "hidden_size")
        assert hidden == HIDDEN // 2
        assert not node.input[5:7] or not any(node.input[5:7]), "zero states are dropped"
    assert report["macs"]["after"] == report["macs"]["planned_after"]
    assert report["macs"]["after"] < 0.35 * report["macs"]["before"]


def _recurrent_graph(op: str, gates: int, hidden: int = 6, states=True,
                     peepholes=False, state_input=False, **attrs) -> onnx.ModelProto:
    """x → Gemm-like MatMul (8 features) → op (bidirectional) → Y flattened → MatMul."""
    rng = np.random.default_rng(1)

    def const(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.4,
                                       name)

    directions, features = 2, 8
    inits = [const("w_in", 5, features), const("W", directions, gates * hidden, features),
             const("R", directions, gates * hidden, hidden),
             const("B", directions, 2 * gates * hidden),
             const("w_out", directions * hidden, 3)]
    inputs = ["a", "W", "R", "B", ""]
    graph_inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [SEQ, BATCH, 5])]
    state_shape = [directions, BATCH, hidden]
    if state_input:
        inputs.append("h0")
        graph_inputs.append(helper.make_tensor_value_info("h0", TensorProto.FLOAT, state_shape))
    elif states:
        inits.append(const("h0", *state_shape))
        inputs.append("h0")
        if op == "LSTM":
            inits.append(const("c0", *state_shape))
            inputs.append("c0")
    if peepholes:
        inits.append(const("P", directions, 3 * hidden))
        inputs += [""] * (7 - len(inputs)) + ["P"]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["a0"]),
             helper.make_node("Relu", ["a0"], ["a"]),
             helper.make_node(op, inputs, ["Y"], hidden_size=hidden, direction="bidirectional",
                              **attrs),
             helper.make_node("Transpose", ["Y"], ["Yt"], perm=[2, 0, 1, 3]),  # batch first
             helper.make_node("Reshape", ["Yt", "flat"], ["Yf"]),
             helper.make_node("MatMul", ["Yf", "w_out"], ["y"])]
    inits.append(numpy_helper.from_array(np.array([BATCH, SEQ, directions * hidden]), "flat"))
    graph = helper.make_graph(nodes, op, graph_inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [BATCH, SEQ, 3])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8        # what ONNX Runtime reads, whatever onnx writes by default
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("op,gates,options", [
    ("LSTM", 4, {"peepholes": True}),
    ("LSTM", 4, {"input_forget": 1}),
    ("GRU", 3, {"linear_before_reset": 1}),
    ("GRU", 3, {"states": False}),
    ("RNN", 1, {"activations": ["Relu", "Relu"]}),
])
def test_hand_made_recurrent_ops(op, gates, options):
    attrs = {k: v for k, v in options.items() if k in ("linear_before_reset", "activations",
                                                         "input_forget")}
    shaping = {k: v for k, v in options.items() if k not in attrs}
    model = _recurrent_graph(op, gates, **shaping, **attrs)
    numbers = assert_oracle(model, ratio=0.5, round_to=1)
    pruned, _ = pipeline.prune(model, ratio=0.5, round_to=1)
    node = next(n for n in pruned.graph.node if n.op_type == op)
    assert next(a.i for a in node.attribute if a.name == "hidden_size") == 3
    assert numbers["params"][1] < numbers["params"][0]


def test_a_state_given_at_run_time_keeps_the_units():
    model = _recurrent_graph("GRU", 3, state_input=True)
    assert_oracle(model, ratio=0.5, round_to=1, shapes={"x": (SEQ, BATCH, 5)})
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    node = next(n for n in pruned.graph.node if n.op_type == "GRU")
    assert next(a.i for a in node.attribute if a.name == "hidden_size") == 6
    assert [g for g in report["groups"] if not g["prunable"] and "input 5" in g["reason"]]
    w = next(t for t in pruned.graph.initializer if t.name == node.input[1])
    assert list(w.dims) == [2, 18, 4], "the input features still prune"
