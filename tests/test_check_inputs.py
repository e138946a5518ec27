"""Check inputs that make sense (issue 16, item 2, first part): when the *dense* model cannot
run on the generated check inputs, the error says so, names the node and the input it depends
on, and exits 2 (never "the pruned model failed"); ``--check-data FILE.npz`` feeds the check
whole (no split on axis 0), and a file that does not fit the model is a one-line error before
any work."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import UserError


def rate_model() -> onnx.ModelProto:
    """A CNN whose per-channel offset is looked up by an integer input (a sample-rate index
    into a table of one row): index 1, which the generated 0/1 integers include, is out of
    range, as a real sample rate of 0 or 1 would be for a voice-activity detector."""
    rng = np.random.default_rng(0)

    def const(name, value):
        return numpy_helper.from_array(np.asarray(value, np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Gather", ["table", "rate"], ["rows"], name="lookup", axis=0),
        helper.make_node("ReduceMean", ["rows"], ["row"], name="mean", axes=[0]),
        helper.make_node("Reshape", ["row", "shape"], ["offset"], name="as_channels"),
        helper.make_node("Add", ["c1", "offset"], ["shifted"], name="add"),
        helper.make_node("Relu", ["shifted"], ["h"], name="relu"),
        helper.make_node("Conv", ["h", "w2", "b2"], ["y"], name="conv2"),
    ]
    inits = [const("w1", rng.standard_normal((8, 3, 3, 3))), const("b1", rng.standard_normal(8)),
             const("table", rng.standard_normal((1, 8))),
             numpy_helper.from_array(np.array([1, 8, 1, 1], np.int64), "shape"),
             const("w2", rng.standard_normal((4, 8, 1, 1))), const("b2", rng.standard_normal(4))]
    graph = helper.make_graph(
        nodes, "rate",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 8, 8]),
         helper.make_tensor_value_info("rate", onnx.TensorProto.INT64, [6])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_a_dense_model_that_cannot_run_on_the_check_inputs_is_the_users_error(tmp_path, capfd):
    """One line on stderr, at the file-descriptor level: ONNX Runtime logs nothing of its own."""
    path, out = tmp_path / "rate.onnx", tmp_path / "out.onnx"
    onnx.save(rate_model(), path)
    code = main(["prune", str(path), "-o", str(out), "--ratio", "0.5", "--round-to", "1"])
    err = capfd.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert err.count("\n") == 0 and "the pruned model failed" not in err
    assert err.startswith("error: the dense model itself cannot run on the generated check "
                          "inputs (x [1, 3, 8, 8], rate [6]) at lookup, which "
                          "depends on input 'rate'")
    assert "--check-data FILE.npz" in err


def test_check_data_feeds_the_check_whole(tmp_path):
    path, data = tmp_path / "rate.onnx", tmp_path / "check.npz"
    onnx.save(rate_model(), path)
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(data, x=x, rate=np.zeros(6, np.int64))
    pruned, report = onnxprune.prune(str(path), ratio=0.5, round_to=1, check_data=str(data))
    assert report["check"]["ok"] and report["check"]["inputs"] == {"x": [1, 3, 8, 8],
                                                                   "rate": [6]}
    assert [d.dim_value for d in pruned.graph.input[1].type.tensor_type.shape.dim] == [6]


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((1, 3, 8, 8), np.float32)}, "has no array for model input 'rate'"),
    ({"x": np.zeros((1, 3, 8, 8), np.float32), "rate": np.zeros(6, np.int32)},
     "input 'rate' is int32, the model wants int64"),
    ({"x": np.zeros((1, 3, 4, 4), np.float32), "rate": np.zeros(6, np.int64)},
     "input 'x' has shape [1, 3, 4, 4], the model wants [1, 3, 8, 8]"),
])
def test_check_data_that_does_not_fit_fails_before_any_work(arrays, message, tmp_path, capsys):
    path, data, out = tmp_path / "rate.onnx", tmp_path / "check.npz", tmp_path / "out.onnx"
    onnx.save(rate_model(), path)
    np.savez(data, **arrays)
    assert main(["prune", str(path), "-o", str(out), "--check-data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --check-data {data}") and message in err
    assert "\n" not in err and not out.exists()
    with pytest.raises(UserError, match="not found"):
        onnxprune.prune(str(path), check_data=str(tmp_path / "missing.npz"))
    with pytest.raises(UserError, match="verify=False skips"):
        onnxprune.prune(str(path), check_data=str(data), verify=False)


def _mlp_after(nodes, inits, h, width, rng):
    """h [.., width] → MatMul → Relu → MatMul → y: an MLP group to prune."""
    inits += [numpy_helper.from_array(rng.standard_normal((width, 16)).astype(np.float32), "w1"),
              numpy_helper.from_array(rng.standard_normal((16, width)).astype(np.float32), "w2")]
    nodes += [helper.make_node("MatMul", [h, "w1"], ["m1"]),
              helper.make_node("Relu", ["m1"], ["r1"]),
              helper.make_node("MatMul", ["r1", "w2"], ["y"])]


def cache_model() -> onnx.ModelProto:
    """An Optimum-style step: the past joined to the new tokens on the sequence axis, times an
    attention mask whose length is named ``past_sequence_length + sequence_length``."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Concat", ["past", "x"], ["joined"], axis=1),
             helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"]),
             helper.make_node("Cast", ["mask3"], ["maskf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["joined", "maskf"], ["h"])]
    inits = [numpy_helper.from_array(np.array([2], np.int64), "last")]
    _mlp_after(nodes, inits, "h", 8, rng)
    graph = helper.make_graph(
        nodes, "cache",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                       ["batch_size", "sequence_length", 8]),
         helper.make_tensor_value_info("past", onnx.TensorProto.FLOAT,
                                       ["batch_size", "past_sequence_length", 8]),
         helper.make_tensor_value_info("mask", onnx.TensorProto.INT64,
                                       ["batch_size",
                                        "past_sequence_length + sequence_length"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, None, 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def state_model() -> onnx.ModelProto:
    """A recurrent state [layers, batch, 8] with its batch on axis 1, read beside x [batch, 8],
    and a sample-rate input that selects the branch that keeps the width (If(Equal(sr, 16000)))."""
    rng = np.random.default_rng(1)
    keep = helper.make_graph([helper.make_node("Identity", ["x"], ["picked"])], "keep", [],
                             [helper.make_tensor_value_info("picked", onnx.TensorProto.FLOAT,
                                                            [None, None])])
    cut = helper.make_graph(
        [helper.make_node("Slice", ["x", "zero", "four", "one"], ["half"])], "cut", [],
        [helper.make_tensor_value_info("half", onnx.TensorProto.FLOAT, [None, None])])
    nodes = [helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
             helper.make_node("If", ["is16k"], ["xs"], then_branch=keep, else_branch=cut),
             helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
             helper.make_node("Concat", ["xs", "s0"], ["h"], axis=1)]
    inits = [numpy_helper.from_array(np.array(16000, np.int64), "rate"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.array([1], np.int64), "one")]
    nodes[2] = helper.make_node("Gather", ["state", "first"], ["s0"], axis=0)
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "first"))
    _mlp_after(nodes, inits, "h", 16, rng)
    graph = helper.make_graph(
        nodes, "state",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8]),
         helper.make_tensor_value_info("state", onnx.TensorProto.FLOAT, [2, "batch", 8]),
         helper.make_tensor_value_info("sr", onnx.TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [None, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_named_dims_agree_and_sums_of_them_are_computed():
    from onnxprune.runtime import input_shapes

    model = cache_model()
    assert input_shapes(model) == {"x": (1, 64, 8), "past": (1, 64, 8), "mask": (1, 128)}
    assert input_shapes(model, {"x": (2, 5, 8)}) == {"x": (2, 5, 8), "past": (2, 64, 8),
                                                     "mask": (2, 69)}
    shapes = input_shapes(state_model())
    assert shapes["state"] == (2, 1, 8) and shapes["x"] == (1, 8) and shapes["sr"] == ()


@pytest.mark.parametrize("make", [cache_model, state_model])
def test_generated_check_inputs_follow_what_the_graph_implies(make):
    """Each model ran only on consistent inputs: a mask as long as past + new tokens, a state
    whose batch (axis 1) is the batch, a sample rate the graph tests for. Its MLP prunes and
    the check passes."""
    from onnxprune.runtime import make_inputs

    model = make()
    onnx.checker.check_model(model, full_check=True)
    feeds = make_inputs(model)
    if "sr" in feeds:
        assert int(feeds["sr"]) == 16000
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"]
    assert any(g["kind"] == "mlp" and g["removed"] for g in report["groups"])


def per_sample_rate_model() -> onnx.ModelProto:
    """``rate_model`` with one rate per sample ([N]): calibration data can carry it."""
    model = rate_model()
    graph = model.graph
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    del graph.input[1].type.tensor_type.shape.dim[:]
    graph.input[1].type.tensor_type.shape.dim.add().dim_param = "N"
    nodes = [n for n in graph.node if n.name not in ("mean", "as_channels")]
    nodes.insert(2, helper.make_node("Unsqueeze", ["rows", "axes"], ["offset"],
                                     name="as_channels"))
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
    graph.output[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.checker.check_model(model, full_check=True)
    return model


def test_calibration_data_feeds_the_check(tmp_path):
    """Generated 0/1 rates break the dense model; the calibration samples carry real ones, and
    the check runs on the first of them."""
    path, data = tmp_path / "rate.onnx", tmp_path / "calib.npz"
    onnx.save(per_sample_rate_model(), path)
    x = np.random.default_rng(2).standard_normal((16, 3, 8, 8)).astype(np.float32)
    np.savez(data, x=x, rate=np.zeros(16, np.int64))
    with pytest.raises(UserError, match=r"generated check inputs \(x \[6, 3, 8, 8\], rate \[6\]"):
        onnxprune.prune(str(path), ratio=0.5, round_to=1, input_shapes={"x": (6, 3, 8, 8)})
    _, report = onnxprune.prune(str(path), ratio=0.5, round_to=1, calib=str(data),
                                strategy=onnxprune.Strategy("obs"))
    assert report["check"]["ok"] and report["check"]["inputs"]["x"] == [8, 3, 8, 8]


@pytest.mark.parametrize("source", ["npz", "random"])
def test_calibration_stacks_each_input_on_its_batch_axis(tmp_path, source):
    """A state [2, batch, 8] stacks its samples on axis 1 (the batch names it there), a scalar
    sample rate is shared by every sample; given as an .npz or made at random, the batches
    fit the model and feed a data-driven criterion."""
    from onnxprune.calibration import load_calibration
    from onnxprune.pipeline import Strategy

    model = state_model()
    calib = source
    if source == "npz":
        rng = np.random.default_rng(0)
        calib = str(tmp_path / "calib.npz")
        np.savez(calib, x=rng.standard_normal((12, 8)).astype(np.float32),
                 state=rng.standard_normal((2, 12, 8)).astype(np.float32),
                 sr=np.array(16000, np.int64))
    batches = load_calibration(calib, model, batch_size=4)
    assert [b["state"].shape for b in batches][:3] == [(2, 4, 8)] * 3
    assert all(b["x"].shape == (4, 8) and int(b["sr"]) == 16000 for b in batches)
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1, calib=calib,
                                     strategy=Strategy("activation"))
    assert report["check"]["ok"]
    assert any(g["kind"] == "mlp" and g["removed"] for g in report["groups"])
