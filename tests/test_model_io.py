"""What a rewrite must preserve: names, opset, metadata, dynamic axes; external data; opsets."""

from __future__ import annotations

import onnx
import pytest

import onnxprune
from onnxprune.io import load_model, load_with_size, model_io, remove_saved, save_model

from .builder import GraphBuilder
from .oracle import assert_oracle
from .test_patterns import residual, stem


def test_names_opset_metadata_and_docs_survive():
    model = residual()
    model.doc_string = "a residual block"
    model.producer_name = "unit-test"
    model.graph.doc_string = "graph docs"
    onnx.helper.set_model_props(model, {"author": "tests", "license": "MIT"})
    model.graph.node[0].doc_string = "first conv"
    pruned, _ = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert [n.name for n in pruned.graph.node] == [n.name for n in model.graph.node]
    assert pruned.opset_import == model.opset_import
    assert pruned.ir_version == model.ir_version
    assert {p.key: p.value for p in pruned.metadata_props} == {"author": "tests", "license": "MIT"}
    assert (pruned.doc_string, pruned.producer_name, pruned.graph.doc_string) == (
        "a residual block", "unit-test", "graph docs")
    assert pruned.graph.node[0].doc_string == "first conv"
    assert pruned.graph.input == model.graph.input


def test_dynamic_batch_and_spatial_dims():
    b = GraphBuilder()
    y = stem(b)
    z = b.conv(b.op("Relu", [b.conv(y, 16, 8)]), 8, 16)
    model = b.model({"x": ["N", 3, "H", "W"]}, [b.conv(b.op("Add", [y, z]), 16, 4, k=1)])
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1,
                                     input_shapes={"x": (2, 3, 12, 20)})
    assert report["check"]["ok"]
    dims = pruned.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, "H", "W"]
    assert_oracle(model, shapes={"x": (3, 3, 16, 8)})


def newest_runnable_opset() -> int:
    """The newest opset that both onnx and ONNX Runtime (officially) support."""
    import numpy as np
    import onnxruntime as ort

    for opset in range(onnx.defs.onnx_opset_version(), 20, -1):
        graph = onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        model.ir_version = 10
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, {"x": np.zeros(1, np.float32)})
            return opset
        except Exception:  # noqa: BLE001 - not supported yet: try the previous one
            continue
    return 21


@pytest.mark.parametrize("opset", [9, 13, 18, newest_runnable_opset()])
def test_opsets_from_9_to_newest(opset):
    b = GraphBuilder(opset)
    y = stem(b)
    a, c = (b.op("Split", [y], outputs=2, axis=1, split=[8, 8]) if opset < 13 else
            b.op("Split", [y, b.const(__import__("numpy").array([8, 8], "int64"))], outputs=2,
                 axis=1))
    s = b.op("Add", [b.conv(a, 8, 8, k=1), b.conv(c, 8, 8, k=1)])
    assert_oracle(b.model({"x": [1, 3, 8, 8]}, [b.conv(s, 8, 4, k=1)]))


def test_external_data_in_and_out(tmp_path):
    src = tmp_path / "ext.onnx"
    onnx.save_model(residual(), src, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    pruned, report = onnxprune.prune(str(src), ratio=0.5, round_to=1)
    assert report["check"]["ok"]
    out = save_model(pruned, tmp_path / "out.onnx")
    onnx.checker.check_model(onnx.load(out), full_check=True)
    copy = save_model(load_model(str(src)), tmp_path / "copy.onnx")   # weights in a file
    assert (tmp_path / "copy.onnx.data").exists()
    remove_saved(copy)
    assert not copy.exists() and not (tmp_path / "copy.onnx.data").exists()


def test_load_model_returns_a_private_copy():
    model = residual()
    copy = load_model(model)
    copy.graph.node[0].name = "changed"
    assert model.graph.node[0].name != "changed"


def test_a_models_size_comes_with_it_from_one_serialization(tmp_path, monkeypatch):
    """The 2 GB check serializes an in-memory model (``ByteSize`` walks every tensor); the
    size it found is handed on, so a benchmark of a sweep's copies does not serialize each
    one again to report its size."""
    model = residual()
    counted = []
    real = model_io.in_memory_bytes
    monkeypatch.setattr(model_io, "in_memory_bytes", lambda m: counted.append(1) or real(m))
    copy, size = load_with_size(model)
    assert size == model.ByteSize() and len(counted) == 1
    assert copy.graph.node[0].name == model.graph.node[0].name
    path = tmp_path / "r.onnx"
    onnx.save_model(model, path)
    assert load_with_size(str(path))[1] == path.stat().st_size
