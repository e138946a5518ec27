"""TensorFlow/Keras and JAX exports (issue 16, item 5): two small Keras models converted by
tf2onnx 1.17 from TensorFlow 2.21 (``models/tf_exports.py`` made the fixtures; TensorFlow
does not install beside the dev extras), and two pure-JAX models through jax2tf (jax 0.7.1,
its last version with the plain-TF lowering tf2onnx converts) and tf2onnx
(``models/jax_exports.py``). The CNN prunes every group it has. In the
transformer block, the MLP of Dense layers on 3-D inputs (tf2onnx's Tensordot: a Reshape whose
target is computed from Shape through casts) prunes, and so, when asked, does the hidden size
through Keras's LayerNormalization as tf2onnx decomposes it (its mean written as
GlobalAveragePool over the last axis, its scale computed as rsqrt(var + ε) · γ). The attention
heads prune too: tf2onnx lowers Keras's einsums to batched MatMuls over [batch·heads, S, d],
with Reshape targets computed as ReduceProd(Shape[0:2]) and Max of two operands' shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

import onnxprune

from .oracle import assert_oracle

FIXTURES = Path(__file__).parent / "fixtures"


def _removed(report) -> dict[str, int]:
    return {g["kind"]: len(g["removed"]) for g in report["groups"] if g["removed"]}


def test_a_keras_cnn_prunes_every_group():
    model = onnx.load(str(FIXTURES / "tf2onnx_keras_cnn.onnx"))
    assert {"Transpose", "Conv"} <= {n.op_type for n in model.graph.node}   # NHWC ↔ NCHW
    assert_oracle(model, ratio=0.5, round_to=1)
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and not report["barriers"]
    assert sum(1 for g in report["groups"] if g["removed"]) == 4


def test_a_keras_transformer_prunes_its_mlp_heads_and_hidden_size():
    model = onnx.load(str(FIXTURES / "tf2onnx_keras_transformer.onnx"))
    assert_oracle(model, ratio=0.5, round_to=1)
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and _removed(report) == {"mlp": 32, "heads": 2}
    _, report = onnxprune.prune(model, ratio=0.5, hidden=0.25, round_to=1)
    assert report["check"]["ok"] and _removed(report) == {"mlp": 32, "heads": 2, "hidden": 8}
    assert report["changes_function"]


def test_keras_attention_heads_prune_through_the_einsum_lowering():
    model = onnx.load(str(FIXTURES / "tf2onnx_keras_transformer.onnx"))
    heads = [g for g in onnxprune.inspect(model)["groups"] if g["kind"] == "heads"]
    assert len(heads) == 1 and heads[0]["prunable"] and heads[0]["units"] == 4
    # batch 3: heads sit merged with the batch ([3·4, S, d]), so the tiling is exercised
    assert_oracle(model, ratio=0.5, shapes={"tokens": (3, 8, 12)},
                  by_kind={"heads": 0.5, "mlp": 0.5})
    pruned, report = onnxprune.prune(model, ratio=0.0, heads=0.5, round_to=1,
                                     input_shapes={"tokens": (3, 8, 12)})
    assert report["check"]["ok"] and _removed(report) == {"heads": 2}
    feeds = {"tokens": np.random.default_rng(0).random((5, 8, 12), dtype=np.float32)}
    out = ort.InferenceSession(pruned.SerializeToString()).run(None, feeds)[0]
    assert out.shape == (5, 5)          # any batch: the merged dims are computed at run time


def test_a_jax_cnn_prunes_every_group():
    """NHWC convolutions transposed once, ReLU as Max(x, 0), biases as broadcast Adds, global
    pooling as ReduceSum · 1/(H·W), einsum and dot Dense layers."""
    model = onnx.load(str(FIXTURES / "jax2tf_cnn.onnx"))
    assert_oracle(model, ratio=0.5, shapes={"image": (3, 16, 16, 3)})
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and not report["barriers"]
    assert sum(1 for g in report["groups"] if g["removed"]) == 3


def test_a_jax_transformer_prunes_heads_mlp_and_hidden_size():
    """jax2tf's einsums as tf2onnx writes them: Gemm projections reshaped by targets read
    from the weights' shapes, [batch·heads, S, d] batched MatMuls (the context computed as
    Vᵀ·Pᵀ), a softmax decomposed into ReduceMax/Exp/ReduceSum broadcast back by Expand to a
    target cast from a Concat, LayerNorm as ReduceSum/Sqrt/Reciprocal."""
    model = onnx.load(str(FIXTURES / "jax2tf_transformer.onnx"))
    shapes = {"tokens": (3, 8, 12)}
    assert_oracle(model, ratio=0.5, shapes=shapes, by_kind={"heads": 0.5, "mlp": 0.5})
    pruned, report = onnxprune.prune(model, ratio=0.5, hidden=0.25, round_to=1,
                                     input_shapes=shapes)
    assert report["check"]["ok"] and not report["barriers"]
    assert _removed(report) == {"heads": 2, "mlp": 32, "hidden": 8}
    assert report["params"]["after"] == report["params"]["planned_after"]
    feeds = {"tokens": np.random.default_rng(0).random((5, 8, 12), dtype=np.float32)}
    assert ort.InferenceSession(pruned.SerializeToString()).run(None, feeds)[0].shape == (5, 5)
