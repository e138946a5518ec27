"""The Optimum form of a KV cache (issue 16, item 3): the past key/value, a graph input, is
joined to the new tokens' keys and values by a Concat on the sequence axis, and that Concat's
output is the present cache, a graph output. The heads stay unless the cache may change;
with ``allow_cache_change`` they go, the past inputs and present outputs lose them, and the
pruned model runs with a past and without one (length 0).

Two models: one written here in the shape ``optimum-cli export onnx --task
text-generation-with-past`` gives a decoder (projections, Reshape/Transpose to heads, the
Concat with the past, attention, output projection, a residual MLP), and the real thing: a
tiny Llama (grouped-query attention, rotary, RMSNorm, SwiGLU) exported by optimum-onnx 0.1.0
(``models/optimum_exports.py`` made the fixture: optimum-onnx cannot be installed beside the
transformers 5 the genai builder needs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import onnxprune
from onnxprune.runtime import run_model

from .builder import GraphBuilder


def optimum_style(H=2, D=4, layers=2):
    E = H * D
    b = GraphBuilder(seed=3)
    shape = b.const(np.array([1, -1, H, D], np.int64))
    back = b.const(np.array([1, -1, E], np.int64))
    x = b.op("Gather", [b.weight(32, E), "input_ids"], axis=0)
    outputs = []
    for l in range(layers):
        def heads(w):
            return b.op("Transpose", [b.op("Reshape", [b.op("MatMul", [x, w]), shape])],
                        perm=[0, 2, 1, 3])
        q, k, v = heads(b.weight(E, E)), heads(b.weight(E, E)), heads(b.weight(E, E))
        k_all = b.op("Concat", [f"past_key_values.{l}.key", k], axis=2)
        v_all = b.op("Concat", [f"past_key_values.{l}.value", v], axis=2)
        b.nodes[-2].output[0], b.nodes[-1].output[0] = f"present.{l}.key", f"present.{l}.value"
        k_all, v_all = f"present.{l}.key", f"present.{l}.value"
        outputs += [k_all, v_all]
        scores = b.op("MatMul", [q, b.op("Transpose", [k_all], perm=[0, 1, 3, 2])])
        probs = b.op("Softmax", [b.op("Mul", [scores, b.const(np.array(0.5, np.float32))])], axis=-1)
        ctx = b.op("Reshape", [b.op("Transpose", [b.op("MatMul", [probs, v_all])], perm=[0, 2, 1, 3]), back])
        x = b.op("Add", [x, b.op("MatMul", [ctx, b.weight(E, E)])])
        x = b.op("Add", [x, b.op("MatMul", [b.op("Relu", [b.op("MatMul", [x, b.weight(E, 16)])]), b.weight(16, E)])])
    logits = b.op("MatMul", [x, b.weight(E, 32)])
    inputs = {"input_ids": ["batch_size", "sequence_length"]}
    for l in range(layers):
        for kv in ("key", "value"):
            inputs[f"past_key_values.{l}.{kv}"] = ["batch_size", H, "past_sequence_length", D]
    graph = helper.make_graph(
        b.nodes, "optimum_style",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, inputs["input_ids"])] +
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items() if n != "input_ids"],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch_size", "sequence_length", 32])] +
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch_size", H, "past_sequence_length + sequence_length", D]) for o in outputs],
        b.initializers)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(m, full_check=True)
    return m



def _dims(model, prefix):
    return {tuple(d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim)
            for v in list(model.graph.input) + list(model.graph.output)
            if v.name.startswith(prefix)}


def test_the_cache_keeps_its_heads_unless_it_may_change():
    model = optimum_style()
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert not [g for g in report["groups"] if g["kind"] == "heads" and g["removed"]]
    assert any("--allow-cache-change" in b["reason"] for b in report["barriers"])


def test_with_allow_cache_change_heads_go_and_the_cache_io_shrinks():
    model = optimum_style()
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1, allow_cache_change=True)
    assert report["check"]["ok"] and report["check"]["max_rel_error"] == 0.0
    assert len([g for g in report["groups"] if g["kind"] == "heads" and g["removed"]]) == 2
    assert _dims(pruned, "past_key_values") == {("batch_size", 1, "past_sequence_length", 4)}
    assert _dims(pruned, "present") == {
        ("batch_size", 1, "past_sequence_length + sequence_length", 4)}
    assert [i.name for i in pruned.graph.input] == [i.name for i in model.graph.input]
    for past in (0, 5):                  # the first step has no past; later ones do
        feeds = {"input_ids": np.array([[1, 2, 3]], np.int64)}
        feeds |= {i.name: np.ones((1, 1, past, 4), np.float32)
                  for i in pruned.graph.input if i.name.startswith("past")}
        out = run_model(pruned, feeds)
        assert out["present.0.key"].shape == (1, 1, past + 3, 4)


OPTIMUM_LLAMA = Path(__file__).parent / "fixtures" / "optimum_tiny_llama.onnx"


def _decode(model, ids, past=None, kv_heads=2):
    """One step of greedy decoding as Optimum's ORTModelForCausalLM feeds it: the mask covers
    past + new tokens, positions continue after the past."""
    past_len = 0 if past is None else past["present.0.key"].shape[2]
    feeds = {"input_ids": ids, "attention_mask": np.ones((1, past_len + ids.shape[1]), np.int64),
             "position_ids": np.arange(past_len, past_len + ids.shape[1])[None]}
    for layer in range(2):
        for kv in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kv}"] = (
                np.zeros((1, kv_heads, 0, 8), np.float32) if past is None
                else past[f"present.{layer}.{kv}"])
    return run_model(model, feeds)


def _removed(report):
    """Units removed per kind of group, summed over the layers."""
    counts = {}
    for g in report["groups"]:
        if g["removed"]:
            counts[g["kind"]] = counts.get(g["kind"], 0) + len(g["removed"])
    return counts


def test_a_real_optimum_llama_prunes_its_mlp_and_keeps_the_cache():
    model = onnx.load(str(OPTIMUM_LLAMA))
    assert {"past_key_values.0.key", "attention_mask", "position_ids"} <= {
        i.name for i in model.graph.input}
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and report["check"]["max_rel_error"] == 0.0
    assert _removed(report) == {"mlp": 64}  # 2 layers × 32
    assert any("--allow-cache-change" in b["reason"] for b in report["barriers"])
    assert _dims(pruned, "present") == _dims(model, "present")


def test_a_real_optimum_llama_loses_kv_heads_and_decodes_with_its_cache():
    model = onnx.load(str(OPTIMUM_LLAMA))
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1, allow_cache_change=True)
    check = report["check"]
    assert check["ok"] and check["max_rel_error"] == 0.0
    assert check["inputs"]["past_key_values.0.key"][2] > 0      # checked with a past
    assert check["inputs"]["attention_mask"][1] == (
        check["inputs"]["past_key_values.0.key"][2] + check["inputs"]["input_ids"][1])
    assert _removed(report) == {"heads": 2, "mlp": 64}
    assert _dims(pruned, "past_key_values") == {
        ("batch_size", 1, "past_sequence_length", 8)}        # one of two KV heads per layer
    ids = np.array([[5, 17, 42, 9]], np.int64)
    whole = _decode(pruned, ids, kv_heads=1)              # no past
    first = _decode(pruned, ids[:, :3], kv_heads=1)
    step = _decode(pruned, ids[:, 3:], past=first, kv_heads=1)   # a past of 3
    np.testing.assert_allclose(step["logits"][0, -1], whole["logits"][0, -1], atol=1e-5)
    assert step["present.1.value"].shape == (1, 1, 4, 8)
