"""Inputs that fail the checker only on ops ONNX does not define but ONNX Runtime runs (issue
16, item 1): onnxruntime-genai's builder writes contrib ops such as SimplifiedLayerNormalization
into ONNX's own domain. Such a model is accepted; the check is the checker on everything else,
ONNX Runtime, and mask equivalence, and the report says which ops the checker skipped. An op
ONNX Runtime cannot run either is still refused."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.errors import UserError
from onnxprune.verify import check_model, unknown_ops


def genai_style(op: str = "SimplifiedLayerNormalization") -> onnx.ModelProto:
    """An MLP whose output goes through an RMS norm written as the contrib op, in domain ''."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["b"]),
             helper.make_node(op, ["b", "g"], ["y"], axis=-1, epsilon=1e-5)]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.ones(8, np.float32), "g")]
    graph = helper.make_graph(nodes, "genai", [helper.make_tensor_value_info("x", 1, ["N", 8])],
                              [helper.make_tensor_value_info("y", 1, ["N", 8])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_the_plain_checker_refuses_it_and_ours_checks_the_rest():
    model = genai_style()
    with pytest.raises(onnx.checker.ValidationError, match="SimplifiedLayerNormalization"):
        onnx.checker.check_model(model, full_check=True)
    before = model.SerializeToString()
    assert unknown_ops(model) == ["SimplifiedLayerNormalization"]
    check_model(model)
    assert model.SerializeToString() == before          # the model is left as it was
    broken = genai_style()
    broken.graph.node[0].input[1] = "missing"            # a fault elsewhere is still caught
    with pytest.raises(onnx.checker.ValidationError):
        check_model(broken)
    assert broken.graph.node[3].domain == "" and len(broken.opset_import) == 1


def test_it_prunes_and_the_report_names_what_the_checker_skipped(tmp_path, capsys):
    path, out, report = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "r.json"
    onnx.save(genai_style(), path)
    before = path.read_bytes()
    assert main(["inspect", str(path)]) == 0
    assert main(["prune", str(path), "-o", str(out), "--round-to", "1",
                 "--report", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "onnx.checker(full, except SimplifiedLayerNormalization: ops ONNX does not define" in \
        printed
    assert json.loads(report.read_text())["check"]["unchecked_ops"] == [
        "SimplifiedLayerNormalization"]
    pruned = onnx.load(str(out))
    assert [n.domain for n in pruned.graph.node] == [""] * 4
    assert [(o.domain, o.version) for o in pruned.opset_import] == [("", 17)]
    assert path.read_bytes() == before


def test_an_op_onnx_runtime_cannot_run_either_is_refused():
    with pytest.raises(UserError, match="ONNX Runtime cannot load the input"):
        onnxprune.prune(genai_style("NoSuchOpAnywhere"), ratio=0.5)
