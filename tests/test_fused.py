"""ONNX Runtime's fused transformer ops (``com.microsoft`` domain): Attention and
MultiHeadAttention prune whole heads, BiasGelu/FastGelu/Gelu pass channels through, the other
fused ops are barriers that say why. Graphs are made by hand and by running
``onnxruntime.transformers.optimizer`` on a small random BERT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

import onnxprune
from onnxprune.graph.model_graph import NodeRef
from onnxprune.rules import rule_for

from .builder import GraphBuilder
from .oracle import assert_oracle

S, E, H = 6, 32, 4
D = E // H
MS = "com.microsoft"
OUT_SHAPES = {1: [2, 1, H, S, D]}  # a second output: an Attention's present cache


def fused_model(b: GraphBuilder, inputs: dict, outputs: list[str]) -> onnx.ModelProto:
    """Like ``GraphBuilder.model`` with the com.microsoft opset imported. ONNX shape inference
    knows nothing of contrib ops, so the intermediate shapes are written into value_info by
    ONNX Runtime's symbolic shape inference (as the transformer optimizer's models have)."""
    graph = helper.make_graph(
        b.nodes, "fused",
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, OUT_SHAPES.get(k, [1, S, E]))
         for k, o in enumerate(outputs)],
        b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(MS, 1)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - graphs that only test barriers need no shapes
        return model


def ms(b: GraphBuilder, op: str, inputs: list[str], outputs: int = 1, **attrs):
    out = b.op(op, inputs, outputs, **attrs)
    b.nodes[-1].domain = MS
    return out


X = {"x": (TensorProto.FLOAT, [1, S, E])}


def attention_block(v_hidden=E, mask=False, head_bias=False, tracked_input=False, causal=False):
    """Attention (packed QKV) → output projection → MLPs with BiasGelu, FastGelu and Gelu."""
    b = GraphBuilder(seed=1)
    inputs = dict(X)
    x = b.op("MatMul", ["x", b.weight(E, E)]) if tracked_input else "x"
    qkv = [x, b.weight(E, 2 * E + v_hidden), b.weight(2 * E + v_hidden)]
    attrs = {"num_heads": H, "unidirectional": int(causal)}
    if v_hidden != E:
        attrs["qkv_hidden_sizes"] = [E, E, v_hidden]
    if mask:
        inputs["mask"] = (TensorProto.INT32, [1, S])
    qkv.append("mask" if mask else "")
    if head_bias:
        qkv += ["", b.weight(1, H, S, S)]
    a = ms(b, "Attention", qkv, **attrs)
    h = b.op("Add", [b.op("MatMul", [a, b.weight(v_hidden, E)]), b.weight(E)])
    h = b.op("LayerNormalization", [b.op("Add", ["x", h]), b.weight(E), b.weight(E)], axis=-1)
    m1 = ms(b, "BiasGelu", [b.op("MatMul", [h, b.weight(E, 4 * E)]), b.weight(4 * E)])
    m2 = ms(b, "FastGelu", [b.op("MatMul", [h, b.weight(E, 2 * E)]), b.weight(2 * E)])
    m3 = ms(b, "Gelu", [b.op("Add", [b.op("MatMul", [h, b.weight(E, E)]), b.weight(E)])])
    out = b.op("Sum", [b.op("MatMul", [m1, b.weight(4 * E, E)]),
                       b.op("MatMul", [m2, b.weight(2 * E, E)]),
                       b.op("MatMul", [m3, b.weight(E, E)])])
    return fused_model(b, inputs, [out])


def mha_block(bias=True):
    """Q, K, V projected by MatMuls, attention in MultiHeadAttention, output projection."""
    b = GraphBuilder(seed=2)
    q, k, v = (b.op("MatMul", ["x", b.weight(E, E)]) for _ in range(3))
    a = ms(b, "MultiHeadAttention", [q, k, v] + ([b.weight(3 * E)] if bias else []),
           num_heads=H)
    out = b.op("Add", [b.op("MatMul", [a, b.weight(E, E)]), b.weight(E)])
    return fused_model(b, X, [out])


def heads_of(model, op="Attention"):
    return [NodeRef(i, n).attr("num_heads") for i, n in enumerate(model.graph.node)
            if n.op_type == op and n.domain == MS]


def groups(model, kind):
    return [g for g in onnxprune.inspect(model)["groups"] if g["kind"] == kind]


def barrier_reasons(model) -> dict[str, str]:
    return {b["op"]: b["reason"] for b in onnxprune.inspect(model)["barriers"]}


# -- rule lookup -------------------------------------------------------------------------

def test_domain_keyed_rule_lookup():
    def rule(op, domain):
        return rule_for(NodeRef(0, helper.make_node(op, ["a"], ["b"], domain=domain)))

    assert rule("Attention", MS) is not None and rule("Attention", "") is None
    assert rule("Relu", "") is not None and rule("Relu", "ai.onnx") is rule("Relu", "")
    assert rule("Relu", MS) is None and rule("Relu", "com.example") is None


# -- hand-made fused graphs ----------------------------------------------------------------

@pytest.mark.parametrize("variant", [
    {}, {"mask": True}, {"v_hidden": 2 * E}, {"head_bias": True}, {"tracked_input": True},
    {"causal": True}])
def test_fused_attention_matches_masked_original(variant):
    model = attention_block(**variant)
    shapes = {"x": (1, S, E), "mask": (1, S)} if variant.get("mask") else None
    assert_oracle(model, ratio=0.5, shapes=shapes)


def test_fused_attention_heads_are_a_group_and_num_heads_shrinks():
    model = attention_block(v_hidden=2 * E)
    heads = groups(model, "heads")
    assert len(heads) == 1 and heads[0]["prunable"] and heads[0]["units"] == H
    assert heads[0]["width"] == 2 * D              # a head spans its V columns
    assert {g["channels"] for g in groups(model, "mlp") if g["prunable"]} == {4 * E, 2 * E, E}
    pruned, report = onnxprune.prune(model, ratio=0.0, heads=0.5, round_to=1)
    assert report["check"]["ok"]
    assert heads_of(pruned) == [H // 2]
    node = next(n for n in pruned.graph.node if n.op_type == "Attention")
    assert NodeRef(0, node).attr("qkv_hidden_sizes") == [E // 2, E // 2, E]
    weight = next(t for t in pruned.graph.initializer if t.name == node.input[1])
    assert list(weight.dims) == [E, 2 * E]


def test_fused_mlp_activations_slice_their_bias():
    pruned, report = onnxprune.prune(attention_block(), ratio=0.0, mlp=0.5, round_to=1)
    assert report["check"]["ok"]
    inits = {t.name: list(t.dims) for t in pruned.graph.initializer}
    biases = {n.op_type: inits[n.input[1]] for n in pruned.graph.node
              if n.op_type in ("BiasGelu", "FastGelu")}
    assert biases == {"BiasGelu": [2 * E], "FastGelu": [E]}


def test_multi_head_attention_prunes_heads():
    for bias in (True, False):
        model = mha_block(bias)
        assert_oracle(model, ratio=0.5)
        heads = groups(model, "heads")
        assert len(heads) == 1 and heads[0]["prunable"] and heads[0]["units"] == H
        pruned, report = onnxprune.prune(model, ratio=0.0, heads=0.25, round_to=1)
        assert report["check"]["ok"] and heads_of(pruned, "MultiHeadAttention") == [H - 1]


# -- unsupported configurations are barriers that say why ---------------------------------

def _attention_with(extra_inputs=(), outputs=1, inputs=X, **attrs):
    """An Attention reading a tracked input (a MatMul's channels), so a barrier shows."""
    b = GraphBuilder()
    x = b.op("MatMul", ["x", b.weight(E, E)])
    outs = ms(b, "Attention", [x, b.weight(E, 3 * E), b.weight(3 * E), *extra_inputs],
              outputs=outputs, num_heads=H, **attrs)
    outs = [outs] if outputs == 1 else outs
    return fused_model(b, inputs, [b.op("MatMul", [outs[0], b.weight(E, E)])] + outs[1:])


def test_attention_barriers_name_the_reason():
    cases = [
        (_attention_with(outputs=2), "past/present key-value cache"),
        (_attention_with(do_rotary=1), "rotary embedding"),
        (_attention_with(["", "", "y"], inputs={**X, "y": (TensorProto.FLOAT, [1, H, S, S])}),
         "attention bias is computed per head"),
    ]
    for model, words in cases:
        reason = barrier_reasons(model)["Attention"]
        assert words in reason, reason
        assert not groups(model, "heads")


def test_multi_head_attention_packed_qkv_is_a_barrier():
    b = GraphBuilder()
    qkv = b.op("Reshape", [b.op("MatMul", ["x", b.weight(E, 3 * E)]),
                           b.const(np.array([1, S, H, 3, D], np.int64))])
    a = ms(b, "MultiHeadAttention", [qkv], num_heads=H)
    model = fused_model(b, X, [b.op("MatMul", [a, b.weight(E, E)])])
    assert "packed QKV" in barrier_reasons(model)["MultiHeadAttention"]


def test_other_fused_ops_are_barriers_with_a_clear_reason():
    b = GraphBuilder()
    h = b.op("MatMul", ["x", b.weight(E, E)])
    y = ms(b, "SkipLayerNormalization", [h, "x", b.weight(E), b.weight(E)])
    q, k, v = (b.op("MatMul", [y, b.weight(E, E)]) for _ in range(3))
    g = ms(b, "GroupQueryAttention", [q, k, v], num_heads=H, kv_num_heads=H)
    model = fused_model(b, X, [b.op("MatMul", [g, b.weight(E, E)])])
    reasons = barrier_reasons(model)
    assert reasons["GroupQueryAttention"].startswith("separate key and value inputs (only the "
                                                     "packed QKV form is supported)")
    assert not any(g["prunable"] for g in onnxprune.inspect(model)["groups"])


def skip_layer_norm_block(bias=True, used_sum=False):
    """x = x0·W → SkipLayerNormalization(x·W1, x, γ, β[, bias]) → a linear head; with
    ``used_sum`` its fourth output (the residual sum) feeds the head too."""
    b = GraphBuilder(seed=2)
    x = b.op("MatMul", ["x", b.weight(E, E)])
    h = b.op("MatMul", [x, b.weight(E, E)])
    inputs = [h, x, b.weight(E), b.weight(E)] + ([b.weight(E)] if bias else [])
    y, _, _, total = ms(b, "SkipLayerNormalization", inputs, outputs=4, epsilon=1e-5)
    if not used_sum:
        b.nodes[-1].output[3] = ""
    out = b.op("MatMul", [y, b.weight(E, 10)])
    if used_sum:
        out = b.op("Add", [out, b.op("MatMul", [total, b.weight(E, 10)])])
    return fused_model(b, X, [out])


@pytest.mark.parametrize("bias, used_sum", [(True, False), (False, False), (True, True)])
def test_skip_layer_norm_prunes_the_hidden_size_when_asked(bias, used_sum):
    """ONNX Runtime's SkipLayerNormalization ties input and skip like a residual Add; the
    hidden size through it is opt-in (the norm then averages over the kept channels), and
    γ, β and the bias are sliced."""
    model = skip_layer_norm_block(bias, used_sum)
    hidden = groups(model, "hidden")
    assert len(hidden) == 1 and hidden[0]["prunable"]
    assert_oracle(model, ratio=0.5, by_kind={"hidden": 0.25})
    pruned, report = onnxprune.prune(model, ratio=0.0, hidden=0.25, round_to=1)
    assert report["check"]["ok"] and report["changes_function"]
    norm = next(n for n in pruned.graph.node if n.op_type == "SkipLayerNormalization")
    sizes = {t.name: list(t.dims) for t in pruned.graph.initializer}
    assert all(sizes[name] == [E * 3 // 4] for name in norm.input[2:])


# -- a BERT exported from transformers and fused by ORT's optimizer -------------------------

@pytest.fixture(scope="module")
def fused_bert(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    optimizer = pytest.importorskip("onnxruntime.transformers.optimizer")
    import warnings

    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=64, num_attention_heads=4,
                                     intermediate_size=128, num_hidden_layers=2, vocab_size=100,
                                     max_position_embeddings=32, type_vocab_size=1)
    config._attn_implementation = "eager"  # the SDPA graph is not fused into Attention
    bert = transformers.BertModel(config).eval()
    with torch.no_grad():  # random weights of a useful size (the default init is tiny)
        for p in bert.parameters():
            p.normal_(0.0, 0.3 if p.ndim > 1 else 0.1)

    class LastHidden(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    raw = tmp_path_factory.mktemp("bert") / "bert.onnx"
    ids, mask = torch.randint(0, 100, (1, 8)), torch.ones(1, 8, dtype=torch.long)
    names = ["input_ids", "attention_mask", "hidden"]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(LastHidden().eval(), (ids, mask), str(raw), dynamo=False,
                          opset_version=17, input_names=names[:2], output_names=names[2:],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names})
    fused = optimizer.optimize_model(str(raw), model_type="bert", num_heads=4, hidden_size=64,
                                     opt_level=0, use_gpu=False)
    path = raw.with_name("bert_fused.onnx")
    fused.save_model_to_file(str(path))  # saving adds the com.microsoft opset import
    return onnx.load(path)


BERT_SHAPES = {"input_ids": (2, 8), "attention_mask": (2, 8)}


def test_optimizer_writes_fused_ops(fused_bert):
    ops = {(n.domain, n.op_type) for n in fused_bert.graph.node}
    assert {(MS, "Attention"), (MS, "SkipLayerNormalization"), (MS, "BiasGelu"),
            (MS, "EmbedLayerNormalization")} <= ops


def test_fused_bert_matches_masked_original(fused_bert):
    assert_oracle(fused_bert, ratio=0.5, shapes=BERT_SHAPES)


def test_fused_bert_heads_and_mlp_groups(fused_bert):
    info = onnxprune.inspect(fused_bert)
    heads = [g for g in info["groups"] if g["kind"] == "heads"]
    assert len(heads) == 2 and all(g["prunable"] and g["units"] == 4 for g in heads)
    assert sum(g["kind"] == "mlp" and g["prunable"] for g in info["groups"]) == 2
    reasons = [b["reason"] for b in info["barriers"]]
    assert {b["op"] for b in info["barriers"]} == {"SkipLayerNormalization"}
    assert reasons[0] == ("skip is not tracked (made by EmbedLayerNormalization_0, "
                          "EmbedLayerNormalization)")   # the embeddings' fused op: a barrier

    pruned, report = onnxprune.prune(fused_bert, ratio=0.0, heads=0.5, mlp=0.25, round_to=1,
                                     input_shapes=BERT_SHAPES)
    assert report["check"]["ok"]
    assert heads_of(pruned) == [2, 2]
    kept = [len(g["kept"]) for g in report["groups"] if g["kind"] == "heads"]
    assert kept == [2, 2]


def test_fused_attention_counts_its_macs():
    """The packed projection and the attention inside the op: --target-macs on an
    ORT-optimized transformer must see them (they were counted as 0)."""
    from onnxprune.runtime import node_macs

    model = attention_block()
    index = next(i for i, n in enumerate(model.graph.node) if n.op_type == "Attention")
    assert node_macs(model)[index] == S * E * 3 * E + S * S * (E + E)
    pruned, report = onnxprune.prune(model, ratio=0.0, heads=0.5, round_to=1)
    kept = next(i for i, n in enumerate(pruned.graph.node) if n.op_type == "Attention")
    assert node_macs(pruned)[kept] == S * E * 3 * E // 2 + S * S * (E // 2 + E // 2)
    assert report["macs"]["after"] == report["macs"]["planned_after"] < report["macs"]["before"]
    _, report = onnxprune.prune(model, target_macs=0.6, round_to=1)
    assert report["macs"]["after"] <= 0.6 * report["macs"]["before"]


def test_multi_head_attention_counts_its_macs():
    from onnxprune.runtime import node_macs

    model = mha_block()
    index = next(i for i, n in enumerate(model.graph.node) if n.op_type == "MultiHeadAttention")
    assert node_macs(model)[index] == S * S * (E + E)


def test_fused_bert_loses_a_block_through_its_skip_layer_norms(fused_bert):
    pruned, report = onnxprune.prune(fused_bert, ratio=0.0, blocks=1, input_shapes=BERT_SHAPES)
    depth = report["depth"]
    assert len(depth["removed"]) == 1 and depth["check"]["ok"] and report["check"]["ok"]
    norms = [n for n in pruned.graph.node if n.op_type == "SkipLayerNormalization"]
    assert len(norms) == 3 and any(n.op_type == "LayerNormalization" and n.domain == ""
                                   for n in pruned.graph.node)
