"""Quantized models (issues 6 and 16), made from the bundled digits CNN by ONNX Runtime's own
quantizer. QDQ (per channel and per tensor), QOperator (QLinearConv, QGemm, QLinearAdd, ...)
and dynamic quantization (DynamicQuantizeLinear, ConvInteger, MatMulInteger) prune and stay
quantized: the integer weights, their per-axis scales, zero points and int32 biases are cut
where they are stored, and no weight turns into a float. 4-bit MatMulNBits layers lose rows
and whole blocks of inputs.
"""

from __future__ import annotations

import json
from collections import Counter

import onnx
import pytest

from onnxprune import pipeline

from .oracle import assert_oracle

quantization = pytest.importorskip("onnxruntime.quantization")

from .quantized_digits import dynamic_digits, prepare, quantized_digits  # noqa: E402
SHAPES = {"input": (2, 1, 8, 8)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    prepare(folder)
    return folder


def _static(prepared, fmt: str, per_channel: bool):
    return quantized_digits(prepared, fmt, per_channel)


def _float_weights(model) -> int:
    """Float initializers with two or more axes longer than 1 (weights; a bias reshaped to
    [1, C, 1, 1] is not one)."""
    return sum(1 for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and sum(d > 1 for d in t.dims) >= 2)


@pytest.mark.parametrize("per_channel", [True, False])
def test_qdq_prunes_and_stays_quantized(prepared, per_channel):
    model = _static(prepared, "QDQ", per_channel)
    assert _float_weights(model) == 0
    numbers = assert_oracle(model, ratio=0.5, round_to=1, shapes=SHAPES)
    pruned, report = pipeline.prune(model, ratio=0.5, input_shapes=SHAPES)
    assert _float_weights(pruned) == 0, "a weight was dequantized into a float"
    stored = Counter(onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
                     for t in pruned.graph.initializer)
    assert stored["int8"] >= 9, "the conv and gemm weights stay int8"
    assert report["params"]["after"] == report["params"]["planned_after"]
    assert report["macs"]["after"] == report["macs"]["planned_after"]
    assert numbers["params"][1] < 0.5 * numbers["params"][0]
    if per_channel:     # the per-axis scales were cut with their weights
        for node in pruned.graph.node:
            if node.op_type == "Conv":
                dq = next(n for n in pruned.graph.node if n.output[0] == node.input[1])
                scale = next(t for t in pruned.graph.initializer if t.name == dq.input[1])
                weight = next(t for t in pruned.graph.initializer if t.name == dq.input[0])
                assert scale.dims[0] == weight.dims[0]


def test_compensation_leaves_quantized_weights_alone(prepared):
    model = _static(prepared, "QDQ", True)
    pruned, report = pipeline.prune(model, ratio=0.5, strategy=pipeline.Strategy("obs"), calib="random",
                               input_shapes=SHAPES)
    assert _float_weights(pruned) == 0
    assert any("stored quantized, not compensated" in n for n in report["strategy"]["notes"])


def _barrier_ops(report) -> set[str]:
    return {b["op"] for b in report["barriers"]}


FORMATS = {   # name: (model maker, ops that must stay)
    "qoperator_per_channel": (lambda f: quantized_digits(f, "QOperator", True, reduce_range=True),
                              {"QLinearConv", "QGemm", "QLinearAdd", "QLinearConcat"}),
    "qoperator_per_tensor": (lambda f: quantized_digits(f, "QOperator", False, reduce_range=True),
                             {"QLinearConv", "QGemm", "QLinearMul"}),
    "dynamic_per_tensor": (lambda f: dynamic_digits(f, per_channel=False),
                           {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}),
    "dynamic_per_channel": (lambda f: dynamic_digits(f, per_channel=True),
                            {"DynamicQuantizeLinear", "ConvInteger", "MatMulInteger"}),
}


def _initializers(model) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in model.graph.initializer}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_qoperator_and_dynamic_quantization_prune_and_stay_quantized(prepared, fmt):
    make, ops = FORMATS[fmt]
    model = make(prepared)
    numbers = assert_oracle(model, ratio=0.5, round_to=1, shapes=SHAPES)
    pruned, report = pipeline.prune(model, ratio=0.5, input_shapes=SHAPES)
    assert report["check"]["ok"] and not report["barriers"]
    assert report["check"]["max_rel_error"] == 0.0, "integer sums over the kept channels are exact"
    assert ops <= {n.op_type for n in pruned.graph.node}
    assert _float_weights(pruned) == 0, "a weight was dequantized into a float"
    assert report["params"]["after"] == report["params"]["planned_after"]
    assert numbers["params"][1] < 0.5 * numbers["params"][0]
    init = _initializers(pruned)

    def dims(name):
        return list(init[name].dims) if name in init else None

    for node in pruned.graph.node:
        if node.op_type == "QLinearConv":     # per-channel scale, zero point, int32 bias
            out = dims(node.input[3])[0]
            assert all(dims(node.input[k]) in ([], [out]) for k in (4, 5, 8))
        if node.op_type == "MatMulInteger":   # zero point per column; the scale after it
            out = dims(node.input[1])[1]
            assert dims(node.input[3]) in ([], [out])
            scales = next(n for n in pruned.graph.node if n.op_type == "Mul"
                          and node.output[0] + "_cast_output" in n.input)
            product = next(n for n in pruned.graph.node if n.output[0] == scales.input[1])
            assert dims(product.input[1]) in ([], [out])


def test_integer_weights_are_scored_as_the_floats_they_stand_for(prepared):
    """Magnitude criteria weigh a quantized weight dequantized (scale and zero point): the
    channels kept in the quantized models are nearly those kept in the float model."""
    def kept(model):
        _, report = pipeline.prune(model, ratio=0.5, input_shapes=SHAPES)
        return [set(g["kept"]) for g in report["groups"] if g["removed"]]

    want = kept(onnx.load(str(prepare(prepared))))
    for model in (quantized_digits(prepared, "QOperator", True), dynamic_digits(prepared, True)):
        got = kept(model)
        assert len(got) == len(want) == 7
        same = sum(len(a & b) for a, b in zip(got, want)) / sum(len(b) for b in want)
        assert same > 0.9, f"only {same:.0%} of the float model's kept channels kept"


def test_the_masked_original_reads_removed_columns_at_the_weight_zero_point():
    """uint8 weights with a zero point of 128 (QLinearMatMul): a removed input column holds
    128 (which stands for 0) in the masked original, not 0 (which stands for −128·scale)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    consts = {"w1": rng.integers(0, 255, (8, 16), dtype=np.uint8),
              "w2": rng.integers(0, 255, (16, 4), dtype=np.uint8),
              "zp": np.array(128, np.uint8), "s": np.array(0.02, np.float32),
              "ws": np.array(0.01, np.float32), "hs": np.array(0.05, np.float32)}
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"]),
        helper.make_node("QLinearMatMul", ["xq", "s", "zp", "w1", "ws", "zp", "hs", "zp"],
                         ["hq"]),
        helper.make_node("QLinearMatMul", ["hq", "hs", "zp", "w2", "ws", "zp", "s", "zp"],
                         ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s", "zp"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "uint8_weights",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
                              [numpy_helper.from_array(v, n) for n, v in consts.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert_oracle(model, ratio=0.5, round_to=1)
    _, report = pipeline.prune(model, ratio=0.5, round_to=8)   # 16 would keep its one block
    assert report["check"]["ok"] and report["check"]["max_rel_error"] == 0.0
    assert [g["units"] - len(g["removed"]) for g in report["groups"] if g["prunable"]] == [8]


def _nbits(model, symmetric: bool):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=symmetric)
    quantizer.process()
    return quantizer.model.model


def _gemm_then_matmul():
    from .builder import GraphBuilder

    b = GraphBuilder()
    h = b.op("Relu", [b.op("Gemm", ["x", b.weight(32, 64), b.weight(64)])])
    out = b.op("MatMul", [h, b.weight(64, 32)])     # becomes MatMulNBits; the Gemm stays
    return b.model({"x": [4, 32]}, [out])


def test_matmul_nbits_reads_whole_blocks():
    """The 4-bit layer (ORT's MatMulNBits quantizer, block 32) reads the Gemm's 64 outputs in
    two blocks: with one scale per block they go by whole blocks and the model stays 4-bit;
    with packed zero points (two blocks per byte) they stay."""
    nbits = _nbits(_gemm_then_matmul(), symmetric=True)
    assert "MatMulNBits" in {n.op_type for n in nbits.graph.node}
    assert_oracle(nbits, ratio=0.5, round_to=1)
    pruned, report = pipeline.prune(nbits, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and report["check"]["max_rel_error"] == 0.0
    node = next(n for n in pruned.graph.node if n.op_type == "MatMulNBits")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["K"] == 32 and attrs["N"] == 32
    assert report["params"]["after"] == report["params"]["planned_after"]
    assert report["macs"]["after"] == report["macs"]["planned_after"]
    asymmetric = _nbits(_gemm_then_matmul(), symmetric=False)
    _, report = pipeline.prune(asymmetric, ratio=0.5, round_to=1)
    assert not [g for g in report["groups"] if g["prunable"] and g["removed"]]
    assert any("packed zero points" in g.get("reason", "") for g in report["groups"])


def test_the_cli_says_there_is_nothing_to_prune_and_writes_no_model(tmp_path, capsys):
    from onnxprune.cli import main

    from .builder import GraphBuilder

    b = GraphBuilder()
    out = b.op("LpNormalization", ["x"], axis=-1)
    path, out_path, report = tmp_path / "lp.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(b.model({"x": [4, 32]}, [out]), path)
    assert main(["prune", str(path), "-o", str(out_path), "--report", str(report)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("nothing to prune: no channel group was found (ops with no "
                                  "channel rule: LpNormalization ×1") and "no model written" in \
        printed[-1]
    assert not out_path.exists()
    data = json.loads(report.read_text())
    assert data["output"] is None and "LpNormalization" in data["nothing_pruned"]


def test_a_ratio_too_small_for_round_to_says_so():
    from .builder import GraphBuilder

    b = GraphBuilder(seed=0)
    h = b.op("Relu", [b.conv(b.op("Relu", [b.conv("x", 3, 32)]), 32, 32)])
    model = b.model({"x": ["N", 3, 8, 8]}, [b.conv(h, 32, 4)])
    _, report = pipeline.prune(model, ratio=0.05, round_to=16)
    assert report["nothing_pruned"] == ("the ratio removes no channel of the 2 prunable groups "
                                        "at --round-to 16 (raise the ratio or lower --round-to)")
    _, report = pipeline.prune(model, ratio=0.5, round_to=16)
    assert report["nothing_pruned"] is None


@pytest.mark.parametrize("fmt", ["qoperator", "dynamic"])
def test_obs_compensates_integer_weights_and_keeps_the_task(prepared, fmt, tmp_path):
    """QOperator and dynamically quantized layers are re-fitted as the floats they stand for
    and quantized back with their own scales: on the trained digits CNN at 30% of channels,
    OBS keeps the accuracy that plain magnitude pruning loses, the model stays int8 and equals
    its (compensated) masked original exactly."""
    import numpy as np

    from models.digits_cnn import accuracy, load_split

    x_train, _, x_test, y_test = load_split()
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=x_train[:256])
    model = (quantized_digits(prepared, "QOperator", True, reduce_range=True) if fmt == "qoperator"
             else dynamic_digits(prepared, per_channel=True))
    dense = accuracy(model, x_test, y_test)
    plain, _ = pipeline.prune(model, ratio=0.3, round_to=1, input_shapes=SHAPES)
    pruned, report = pipeline.prune(model, ratio=0.3, round_to=1, calib=str(calib),
                                    strategy=pipeline.Strategy("obs"), input_shapes=SHAPES)
    assert report["check"]["ok"] and report["check"]["max_rel_error"] == 0.0
    assert not [n for n in report["strategy"]["notes"] if "not compensated" in n]
    assert _float_weights(pruned) == 0
    kept, lost = accuracy(pruned, x_test, y_test), accuracy(plain, x_test, y_test)
    assert dense > 0.97 and kept > dense - 0.03 and lost < kept - 0.2, (dense, kept, lost)
