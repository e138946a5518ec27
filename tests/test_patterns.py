"""One hand-made graph per coupled-channel pattern; each must pass the full oracle."""

from __future__ import annotations

import numpy as np
import pytest

import onnxprune
from onnxprune.pipeline import analyze_model

from .builder import GraphBuilder
from .oracle import assert_oracle

X = {"x": [1, 3, 8, 8]}


def stem(b, c=16):
    return b.op("Relu", [b.bn(b.conv("x", 3, c), c)])


def head(b, y, c=16):
    return b.conv(y, c, 4, k=1)


def residual():
    b = GraphBuilder()
    y = stem(b)
    z = b.conv(b.op("Relu", [b.conv(y, 16, 8)]), 8, 16)
    return b.model(X, [head(b, b.op("Add", [y, z]))])


def concat():
    b = GraphBuilder()
    y1, y2 = stem(b, 8), b.conv("x", 3, 12)
    return b.model(X, [head(b, b.op("Concat", [y1, y2], axis=1), 20)])


def split_input(opset=17):
    b = GraphBuilder(opset)
    y = stem(b)
    a, c = b.op("Split", [y, b.const(np.array([6, 10], dtype=np.int64))], outputs=2, axis=1)
    return b.model(X, [b.conv(a, 6, 4, k=1), b.conv(c, 10, 4, k=1)])


def split_num_outputs():
    b = GraphBuilder(18)
    y = stem(b)
    a, c = b.op("Split", [y], outputs=2, axis=1, num_outputs=2)
    return b.model(X, [b.op("Add", [b.conv(a, 8, 4, k=1), b.conv(c, 8, 4, k=1)])])


def split_attribute_opset11():
    b = GraphBuilder(11)
    y = stem(b)
    a, c = b.op("Split", [y], outputs=2, axis=1, split=[4, 12])
    return b.model(X, [b.conv(a, 4, 4, k=1), b.conv(c, 12, 4, k=1)])


def slice_channels():
    b = GraphBuilder()
    y = stem(b)
    s = b.op("Slice", [y, b.const(np.array([4], np.int64)), b.const(np.array([12], np.int64)),
                       b.const(np.array([1], np.int64))])
    return b.model(X, [b.conv(s, 8, 4, k=1)])


def depthwise():
    b = GraphBuilder()
    y = stem(b)
    d = b.op("Relu", [b.conv(y, 16, 16, group=16)])
    return b.model(X, [head(b, d)])


def depthwise_multiplier():
    b = GraphBuilder()
    y = stem(b, 8)
    d = b.conv(y, 8, 16, group=8)
    return b.model(X, [head(b, d)])


def grouped():
    b = GraphBuilder()
    y = stem(b)
    g = b.op("Relu", [b.conv(y, 16, 24, group=4)])
    return b.model(X, [b.conv(g, 24, 4, k=1)])


def conv_transpose():
    b = GraphBuilder()
    y = stem(b)
    t = b.op("ConvTranspose", [y, b.weight(16, 12, 2, 2), b.weight(12)], kernel_shape=[2, 2],
             strides=[2, 2])
    return b.model(X, [b.conv(b.op("Relu", [t]), 12, 4, k=1)])


def squeeze_excitation():
    b = GraphBuilder()
    y = stem(b)
    s = b.op("GlobalAveragePool", [y])
    s = b.op("Sigmoid", [b.conv(b.op("Relu", [b.conv(s, 16, 4, k=1)]), 4, 16, k=1)])
    return b.model(X, [head(b, b.op("Mul", [y, s]))])


def squeeze_excitation_gemm():
    """SE written with Linear layers: pool → Flatten → Gemm → Gemm → Reshape → Mul."""
    b = GraphBuilder()
    y = stem(b)
    s = b.op("Flatten", [b.op("GlobalAveragePool", [y])], axis=1)
    s = b.op("Relu", [b.op("Gemm", [s, b.weight(4, 16), b.weight(4)], transB=1)])
    s = b.op("HardSigmoid", [b.op("Gemm", [s, b.weight(16, 4), b.weight(16)], transB=1)])
    s = b.op("Reshape", [s, b.const(np.array([-1, 16, 1, 1], np.int64))])
    return b.model(X, [head(b, b.op("Mul", [y, s]))])


def flatten_gemm():
    b = GraphBuilder()
    y = b.op("MaxPool", [stem(b)], kernel_shape=[2, 2], strides=[2, 2])
    f = b.op("Flatten", [y], axis=1)
    return b.model(X, [b.op("Gemm", [f, b.weight(10, 16 * 16), b.weight(10)], transB=1)])


def reshape_matmul_dynamic_batch():
    b = GraphBuilder()
    y = b.op("AveragePool", [stem(b)], kernel_shape=[4, 4], strides=[4, 4])
    batch = b.op("Unsqueeze", [b.op("Gather", [b.op("Shape", [y]), b.const(np.array(0))], axis=0),
                               b.const(np.array([0], np.int64))])
    target = b.op("Concat", [batch, b.const(np.array([-1], np.int64))], axis=0)
    f = b.op("Reshape", [y, target])
    out = b.op("Add", [b.op("MatMul", [f, b.weight(64, 10)]), b.weight(10)])
    return b.model({"x": ["N", 3, 8, 8]}, [out])


def channel_shuffle():
    b = GraphBuilder()
    y = b.op("Concat", [stem(b, 8), b.op("Relu", [b.conv("x", 3, 8)])], axis=1)
    r = b.op("Reshape", [y, b.const(np.array([1, 2, 8, 8, 8], np.int64))])
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    s = b.op("Reshape", [t, b.const(np.array([1, 16, 8, 8], np.int64))])
    a, c = b.op("Split", [s, b.const(np.array([8, 8], np.int64))], outputs=2, axis=1)
    return b.model(X, [b.op("Concat", [a, b.conv(c, 8, 8, k=1)], axis=1)])


def runtime_chunk_and_shuffle():
    """TorchScript's channel_shuffle and chunk: shapes and bounds computed from Shape(x)."""
    b = GraphBuilder()
    y = b.op("Concat", [stem(b, 8), b.op("Relu", [b.conv("x", 3, 8)])], axis=1)

    def dim(t, axis):
        return b.op("Gather", [b.op("Shape", [t]), b.const(np.array(axis, np.int64))], axis=0)

    def one(v):
        return b.op("Unsqueeze", [v, b.const(np.array([0], np.int64))])

    per_group = b.op("Div", [dim(y, 1), b.const(np.array(2, np.int64))])
    grid = b.op("Concat", [one(dim(y, 0)), b.const(np.array([2], np.int64)), one(per_group),
                           one(dim(y, 2)), one(dim(y, 3))], axis=0)
    t = b.op("Transpose", [b.op("Reshape", [y, grid])], perm=[0, 2, 1, 3, 4])
    flat = b.op("Concat", [one(dim(y, 0)), one(dim(y, 1)), one(dim(y, 2)), one(dim(y, 3))], axis=0)
    s = b.op("Reshape", [t, flat])
    half = b.op("Div", [b.op("Add", [dim(s, 1), b.const(np.array(1, np.int64))]),
                        b.const(np.array(2, np.int64))])
    end_a = one(b.op("Mul", [half, b.const(np.array(1, np.int64))]))
    end_b = one(b.op("Mul", [half, b.const(np.array(2, np.int64))]))
    axes = b.const(np.array([1], np.int64))
    a = b.op("Slice", [s, b.const(np.array([0], np.int64)), end_a, axes])
    c = b.op("Slice", [s, end_a, end_b, axes])
    out = b.op("Concat", [a, b.op("Relu", [b.conv(c, 8, 8, k=1)])], axis=1)
    return b.model({"x": ["N", 3, 8, 8]}, [b.conv(out, 16, 4, k=1)])


def group_norm(opset):
    b = GraphBuilder(opset)
    y = b.conv("x", 3, 16)
    per = 16 if opset >= 21 else 4
    g = b.op("GroupNormalization", [y, b.weight(per), b.weight(per)], num_groups=4)
    out = head(b, b.op("Relu", [g]))
    return b.model(X, [out], shapes={out: [1, 4, 8, 8]})


def instance_norm_prelu():
    b = GraphBuilder()
    y = b.conv("x", 3, 16)
    y = b.op("InstanceNormalization", [y, b.weight(16), b.weight(16)])
    y = b.op("PRelu", [y, b.weight(16, 1, 1)])
    return b.model(X, [head(b, y)])


def per_channel_constants():
    b = GraphBuilder()
    y = b.conv("x", 3, 16, bias=False)
    y = b.op("Add", [b.op("Mul", [y, b.weight(1, 16, 1, 1)]), b.weight(16, 1, 1)])
    y = b.op("Div", [b.op("Sub", [y, b.weight(16, 1, 1)]), b.const(np.float32(2.0))])
    return b.model(X, [head(b, y)])


def activations():
    b = GraphBuilder()
    y = stem(b)
    y = b.op("Clip", [y, b.const(np.float32(0)), b.const(np.float32(6))])
    y = b.op("Mul", [y, b.op("Sigmoid", [y])])
    y = b.op("HardSwish", [b.op("LeakyRelu", [y], alpha=0.1)])
    half = b.op("Mul", [y, b.const(np.float32(0.5))])
    erf = b.op("Erf", [b.op("Div", [y, b.const(np.float32(1.4142135))])])
    y = b.op("Mul", [half, b.op("Add", [erf, b.const(np.float32(1.0))])])
    y = b.op("Identity", [b.op("Cast", [b.op("Dropout", [y]), ], to=1)])
    y = b.op("Mish", [b.op("HardSigmoid", [y])]) if b.opset >= 18 else b.op("Tanh", [y])
    return b.model(X, [head(b, y)])


def pools_resize_pad():
    b = GraphBuilder()
    y = stem(b)
    y = b.op("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.op("Resize", [y, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = b.op("Pad", [y, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])
    y = b.op("LpPool", [y], kernel_shape=[3, 3], p=2)
    y = b.op("Resize", [y, "", "", b.const(np.array([1, 16, 8, 8], np.int64))], mode="linear")
    g = b.op("ReduceMean", [y], axes=[2, 3], keepdims=0)
    return b.model(X, [b.op("Gemm", [g, b.weight(16, 5), b.weight(5)])])


def channels_last_linear():
    b = GraphBuilder()
    y = stem(b)
    t = b.op("Transpose", [y], perm=[0, 2, 3, 1])
    m = b.op("Gelu", [b.op("MatMul", [t, b.weight(16, 32)])]) if b.opset >= 20 else b.op(
        "Relu", [b.op("MatMul", [t, b.weight(16, 32)])])
    m = b.op("MatMul", [m, b.weight(32, 16)])
    return b.model(X, [head(b, b.op("Transpose", [m], perm=[0, 3, 1, 2]))])


def constant_node_weights():
    """Paddle-style: weights in Constant nodes, not initializers."""
    b = GraphBuilder()
    w1 = b.op("Constant", [], value=onnx_tensor(b.rng.standard_normal((16, 3, 3, 3))))
    w2 = b.op("Constant", [], value=onnx_tensor(b.rng.standard_normal((4, 16, 1, 1))))
    y = b.op("Relu", [b.op("Conv", ["x", w1], kernel_shape=[3, 3], pads=[1] * 4)])
    return b.model(X, [b.op("Conv", [y, w2], kernel_shape=[1, 1])])


def shared_weight_through_identity():
    b = GraphBuilder()
    w = b.weight(16, 16, 1, 1)
    alias = b.op("Identity", [w])
    y = stem(b)
    y1 = b.op("Relu", [b.op("Conv", [y, w], kernel_shape=[1, 1])])
    y2 = b.op("Conv", [y1, alias], kernel_shape=[1, 1])
    return b.model(X, [head(b, y2)])


def onnx_tensor(array):
    from onnx import numpy_helper
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32))


def opset9_upsample():
    b = GraphBuilder(9)
    y = stem(b)
    y = b.op("Upsample", [y, b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = b.op("Pad", [y], pads=[0, 0, 1, 1, 0, 0, 1, 1])
    return b.model(X, [head(b, y)])


CASES = {
    "residual": residual, "concat": concat, "split": split_input,
    "split_num_outputs": split_num_outputs, "split_attr_opset11": split_attribute_opset11,
    "slice": slice_channels, "depthwise": depthwise, "depthwise_multiplier": depthwise_multiplier,
    "grouped": grouped, "conv_transpose": conv_transpose, "se": squeeze_excitation, "se_gemm": squeeze_excitation_gemm,
    "flatten_gemm": flatten_gemm, "reshape_matmul_dynamic_batch": reshape_matmul_dynamic_batch,
    "channel_shuffle": channel_shuffle, "runtime_chunk_and_shuffle": runtime_chunk_and_shuffle,
    "group_norm_21": lambda: group_norm(21),
    "instance_norm_prelu": instance_norm_prelu,
    "per_channel_constants": per_channel_constants, "activations": activations,
    "pools_resize_pad": pools_resize_pad, "channels_last_linear": channels_last_linear,
    "constant_nodes": constant_node_weights, "identity_alias": shared_weight_through_identity,
    "opset9_upsample": opset9_upsample,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pattern_prunes_and_matches_masked_original(name):
    model = CASES[name]()
    shapes = {"x": (2, 3, 8, 8)} if name.startswith(("reshape_matmul", "runtime")) else None
    assert_oracle(model, ratio=0.5, shapes=shapes)


def _group_sources(model):
    a = analyze_model(model)
    return [sorted(g.sources) for g in a.groups if g.prunable and g.size > 1]


def test_runtime_shapes_leave_no_barrier():
    info = onnxprune.inspect(runtime_chunk_and_shuffle(), input_shapes={"x": (1, 3, 8, 8)})
    assert info["barriers"] == []
    assert sum(g["prunable"] for g in info["groups"]) >= 2


def test_residual_couples_both_producers():
    groups = _group_sources(residual())
    assert any(len(s) == 2 for s in groups), groups


def test_concat_keeps_inputs_as_separate_groups():
    model = concat()
    pruned, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    widths = sorted(g["channels"] for g in report["groups"] if g["prunable"])
    assert widths == [8, 12]
    consumer = [n for n in pruned.graph.node if n.op_type == "Conv"][-1]
    w = next(t for t in pruned.graph.initializer if t.name == consumer.input[1])
    assert w.dims[1] == 4 + 6


def test_grouped_conv_keeps_group_count_and_depthwise_updates_it():
    for build, expect in ((grouped, 4), (depthwise, 8)):
        pruned, _ = onnxprune.prune(build(), ratio=0.5, round_to=1)
        groups = [a.i for n in pruned.graph.node if n.op_type == "Conv" for a in n.attribute
                  if a.name == "group" and a.i > 1]
        assert groups == [expect]


def test_unknown_op_is_a_barrier_and_the_rest_still_prunes():
    b = GraphBuilder()
    y = stem(b)
    weird = b.op("LpNormalization", [y], axis=1)  # mixes channels: no rule
    z = b.op("Relu", [b.conv(weird, 16, 16)])
    model = b.model(X, [head(b, z)])
    info = onnxprune.inspect(model)
    assert any(bar["op"] == "LpNormalization" for bar in info["barriers"])
    frozen = [g for g in info["groups"] if not g["prunable"]]
    assert any("LpNormalization" in (g.get("reason") or "") for g in frozen)
    stats = assert_oracle(model)
    assert stats["params"][1] < stats["params"][0]


def test_graph_output_channels_are_never_pruned():
    b = GraphBuilder()
    y = stem(b)
    model = b.model(X, [y, head(b, b.conv(y, 16, 16))])
    pruned, _ = onnxprune.prune(model, ratio=0.5, round_to=1)
    first = next(n for n in pruned.graph.node if n.op_type == "Conv")
    w = next(t for t in pruned.graph.initializer if t.name == first.input[1])
    assert w.dims[0] == 16


def test_exclude_protects_a_layer():
    model = residual()
    target = [n.name for n in model.graph.node if n.op_type == "Conv"][1]
    pruned, _ = onnxprune.prune(model, ratio=0.5, round_to=1, exclude=(target,))
    node = next(n for n in pruned.graph.node if n.name == target)
    w = next(t for t in pruned.graph.initializer if t.name == node.input[1])
    assert list(w.dims[:2]) == [8, 16]
    with pytest.raises(onnxprune.UserError):
        onnxprune.prune(model, exclude=("no-such-node",))


@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_round_to_and_at_least_one_channel(round_to):
    _, report = onnxprune.prune(residual(), ratio=0.9, round_to=round_to)
    for g in report["groups"]:
        kept = len(g["kept"]) * g["width"]
        assert kept >= 1
        if g["prunable"] and g["channels"] > round_to:
            assert kept % round_to == 0


def test_report_lists_kept_and_removed_indices():
    _, report = onnxprune.prune(residual(), ratio=0.5, round_to=1)
    for g in report["groups"]:
        assert sorted(g["kept"] + g["removed"]) == list(range(g["units"]))
        if g["prunable"]:
            assert len(g["removed"]) == g["units"] // 2
    assert report["check"]["ok"]
    assert report["macs"]["after"] == report["macs"]["planned_after"]
    assert report["params"]["after"] == report["params"]["planned_after"]


def test_input_model_object_is_not_modified():
    model = residual()
    before = model.SerializeToString()
    onnxprune.prune(model, ratio=0.5)
    assert model.SerializeToString() == before
