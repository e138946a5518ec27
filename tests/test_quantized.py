"""Quantized models (issue 6), made from the bundled digits CNN by ONNX Runtime's own
quantizer. QDQ (per channel and per tensor) prunes and stays quantized: the int8 weights, their
per-axis scales and zero points are cut where they are stored, and no weight turns into a
float. QOperator (QLinearConv, QGemm, ...), dynamic quantization (ConvInteger, MatMulInteger)
and MatMulNBits are barriers: nothing is pruned there, and the model stays valid."""

from __future__ import annotations

import json
from collections import Counter

import onnx
import pytest

from onnxprune import pipeline
from onnxprune.runtime import count_params

from .oracle import assert_oracle

quantization = pytest.importorskip("onnxruntime.quantization")

from .quantized_digits import prepare, quantized_digits  # noqa: E402 - needs the quantizer
SHAPES = {"input": (2, 1, 8, 8)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("quantized")
    prepare(folder)
    return folder


def _static(prepared, fmt: str, per_channel: bool):
    return quantized_digits(prepared, fmt, per_channel)


def _float_weights(model) -> int:
    return sum(1 for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) >= 2)


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


def test_qoperator_and_dynamic_quantization_are_barriers(prepared):
    qoperator = _static(prepared, "QOperator", True)
    dynamic_path = prepared / "dynamic.onnx"
    quantization.quantize_dynamic(str(prepare(prepared)), str(dynamic_path),
                                  weight_type=quantization.QuantType.QInt8)
    for model, ops in ((qoperator, {"QLinearConv", "QGemm"}),
                       (onnx.load(str(dynamic_path)), {"ConvInteger", "MatMulInteger"})):
        assert ops <= {n.op_type for n in model.graph.node}
        pruned, report = pipeline.prune(model, ratio=0.5, input_shapes=SHAPES)
        assert report["check"]["ok"]
        assert not [g for g in report["groups"] if g["removed"]]
        assert report["nothing_pruned"].startswith("no channel group was found (")
        assert all(op in report["nothing_pruned"] for op in ops)
        # int8 weights are parameters: within 2% of the float model's count
        assert abs(report["params"]["before"] / count_params(onnx.load(str(prepare(prepared))))
                   - 1) < 0.02
        weights = {t.name: t.SerializeToString() for t in model.graph.initializer}
        assert {t.name: t.SerializeToString() for t in pruned.graph.initializer
                if t.name in weights} == weights, "nothing behind a barrier is cut"


def test_matmul_nbits_is_a_barrier(tmp_path):
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    from .builder import GraphBuilder

    b = GraphBuilder()
    h = b.op("Relu", [b.op("Gemm", ["x", b.weight(32, 64), b.weight(64)])])
    out = b.op("MatMul", [h, b.weight(64, 32)])     # becomes MatMulNBits; the Gemm stays
    model = b.model({"x": [4, 32]}, [out])
    quantizer = MatMulNBitsQuantizer(model, block_size=32)
    quantizer.process()
    nbits = quantizer.model.model
    assert "MatMulNBits" in {n.op_type for n in nbits.graph.node}
    pruned, report = pipeline.prune(nbits, ratio=0.5)
    assert report["check"]["ok"]
    assert "MatMulNBits" in _barrier_ops(report)
    assert not [g for g in report["groups"] if g["prunable"] and g["removed"]], \
        "the Gemm's outputs reach the MatMulNBits: they stay"


def test_the_cli_says_there_is_nothing_to_prune_and_writes_no_model(prepared, tmp_path, capsys):
    from onnxprune.cli import main

    path, out, report = tmp_path / "qop.onnx", tmp_path / "out.onnx", tmp_path / "r.json"
    onnx.save(_static(prepared, "QOperator", True), path)
    assert main(["prune", str(path), "-o", str(out), "--report", str(report)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("nothing to prune: no channel group was found (ops with no "
                                  "channel rule: QLinearConv ×") and "no model written" in \
        printed[-1]
    assert not out.exists()
    data = json.loads(report.read_text())
    assert data["output"] is None and "QLinearConv" in data["nothing_pruned"]


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
