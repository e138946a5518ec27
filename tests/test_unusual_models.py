"""Irregular but legitimate models (issue 6): nodes out of topological order, repeated or empty
node names, one weight read by two nodes, several inputs and outputs; and the same
seed giving byte-identical output. Each pruned model must pass the core oracle."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from importlib import resources

import numpy as np
import onnx
import pytest

import onnxprune
from onnxprune import pipeline
from onnxprune.cli import main
from onnxprune.errors import UserError
from onnxprune.io import load_model

from .builder import GraphBuilder
from .oracle import assert_oracle

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


def _chain():
    b = GraphBuilder()
    out = b.conv(b.op("Relu", [b.conv(b.op("Relu", [b.conv("x", 3, 16)]), 16, 16)]), 16, 8)
    return b.model({"x": [1, 3, 8, 8]}, [out])


def _shuffled(model, seed=0):
    nodes = list(model.graph.node)
    random.Random(seed).shuffle(nodes)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def test_nodes_out_of_order_are_sorted_and_pruned():
    model = _shuffled(onnx.load(DEMO))
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    loaded = load_model(model)
    onnx.checker.check_model(loaded, full_check=True)
    assert sorted(n.name for n in loaded.graph.node) == sorted(n.name for n in model.graph.node)
    assert_oracle(model, shapes={"input": (2, 1, 8, 8)})


def test_a_file_out_of_order_prunes_from_the_command_line(tmp_path):
    onnx.save(_shuffled(onnx.load(DEMO), seed=1), tmp_path / "shuffled.onnx")
    assert main(["prune", str(tmp_path / "shuffled.onnx"), "-o", str(tmp_path / "o.onnx")]) == 0
    onnx.checker.check_model(str(tmp_path / "o.onnx"), full_check=True)


def test_a_cycle_is_a_one_line_user_error():
    model = _chain()
    first, last = model.graph.node[0], model.graph.node[-1]
    first.input[0] = last.output[0]     # the first conv now reads the last one's output
    with pytest.raises(UserError, match="has a cycle"):
        load_model(model)


def test_repeated_and_empty_node_names():
    model = _chain()
    for node in model.graph.node:
        node.name = "same"
    model.graph.node[0].name = ""
    loaded = load_model(model)
    names = [n.name for n in loaded.graph.node]
    assert names[0] == "" and names[1] == "same" and names[2:] == [
        f"same__{k}" for k in range(2, len(names))]
    assert_oracle(model)


def test_one_weight_read_by_two_convs():
    b = GraphBuilder()
    h = b.op("Relu", [b.conv("x", 3, 16)])
    shared = b.weight(16, 16, 3, 3)
    y1 = b.op("Conv", [h, shared], kernel_shape=[3, 3], pads=[1] * 4)
    y2 = b.op("Conv", [h, shared], kernel_shape=[3, 3], pads=[1] * 4)
    out = b.conv(b.op("Add", [b.op("Relu", [y1]), y2]), 16, 8)
    model = b.model({"x": [1, 3, 8, 8]}, [out])
    pruned, _ = pipeline.prune(model, ratio=0.5, round_to=1)
    readers = [n for n in pruned.graph.node if shared in n.input]
    assert len(readers) == 2, "the shared weight must stay one initializer read by both"
    assert_oracle(model)


def test_several_inputs_and_outputs():
    b = GraphBuilder()
    a = b.op("Relu", [b.conv("x", 3, 16)])
    c = b.op("Relu", [b.conv("z", 5, 16)])
    o1 = b.conv(b.op("Add", [a, c]), 16, 8)
    o2 = b.conv(b.op("Relu", [b.conv(a, 16, 12)]), 12, 4)
    model = b.model({"x": [1, 3, 8, 8], "z": [1, 5, 8, 8]}, [o1, o2])
    assert_oracle(model)


def _half(model, data_type):
    """``model`` with its float32 weights and inputs/outputs in ``data_type``."""
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            value = onnx.numpy_helper.to_array(tensor)
            tensor.CopyFrom(onnx.helper.make_tensor(tensor.name, data_type, value.shape,
                                                    value.ravel().tolist()))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = data_type
    del model.graph.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    return model


def test_float16_model_prunes_and_is_compared_through_its_float32_twin():
    model = _half(_chain(), onnx.TensorProto.FLOAT16)
    numbers = assert_oracle(model)
    pruned, report = pipeline.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and report["check"]["max_rel_error"] < 1e-6
    assert {t.data_type for t in pruned.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert numbers["params"][1] < numbers["params"][0]


def test_a_bfloat16_model_onnx_runtime_cannot_run_is_refused_in_one_line(tmp_path, capsys):
    b = GraphBuilder()      # MatMul and Relu: ONNX allows bfloat16 there, not in Conv
    h = b.op("Relu", [b.op("MatMul", ["x", b.weight(8, 16)])])
    mlp = b.model({"x": [2, 8]}, [b.op("MatMul", [h, b.weight(16, 4)])])
    onnx.save(_half(mlp, onnx.TensorProto.BFLOAT16), tmp_path / "bf16.onnx")
    assert main(["prune", str(tmp_path / "bf16.onnx"), "-o", str(tmp_path / "o.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ONNX Runtime cannot load the input model" in err and "\n" not in err
    assert not (tmp_path / "o.onnx").exists()


def test_same_seed_same_bytes(tmp_path):
    """Deterministic output: the same options give the same file, byte for byte, for a
    criterion with random calibration inputs and OBS compensation, in separate processes with
    different string-hash seeds (so no set or dict order can leak into the output)."""
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / f"o{hash_seed}.onnx"
        run = subprocess.run(
            [sys.executable, "-m", "onnxprune.cli", "prune", DEMO, "-o", str(out),
             "--criterion", "obs", "--calib", "random", "--allocation", "global", "--seed", "3"],
            env={**os.environ, "PYTHONHASHSEED": hash_seed}, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]


def test_a_norm_that_reads_one_tensor_twice_prunes():
    """Exporters that deduplicate equal initializers hand a fresh BatchNorm one tensor as its
    scale and its variance (all ones) and one as its bias and mean (all zeros), and share them
    with the next BatchNorm of the same width (torch 2.14's dynamo export of DenseNet-121 does:
    "constant axis 0 has 32 entries but 64 channel labels"). Each input is sliced once, the
    params are what the plan says (assert_oracle), and equal slices stay one tensor."""
    b = GraphBuilder()
    ones = b.const(np.ones(16, np.float32), "ones")
    zeros = b.const(np.zeros(16, np.float32), "zeros")
    y = b.op("Relu", [b.op("BatchNormalization", [b.conv("x", 3, 16), ones, zeros, zeros, ones])])
    z = b.op("Relu", [b.op("BatchNormalization", [b.conv(y, 16, 16), ones, zeros, zeros, ones])])
    model = b.model({"x": [1, 3, 8, 8]}, [b.conv(z, 16, 4, k=1)])
    assert_oracle(model, ratio=0.5, round_to=1)
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    for bn in (n for n in pruned.graph.node if n.op_type == "BatchNormalization"):
        assert bn.input[1] == bn.input[4] and bn.input[2] == bn.input[3]
    assert report["params"]["after"] == report["params"]["planned_after"]
