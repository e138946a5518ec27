"""TensorFlow/Keras exports (issue 16, item 5, first part): two small Keras models converted
by tf2onnx 1.17 from TensorFlow 2.21 (``models/tf_exports.py`` made the fixtures; TensorFlow
does not install beside the dev extras). The CNN prunes every group it has. In the
transformer block, the MLP of Dense layers on 3-D inputs (tf2onnx's Tensordot: a Reshape whose
target is computed from Shape through casts) prunes, and so, when asked, does the hidden size
through Keras's LayerNormalization as tf2onnx decomposes it (its mean written as
GlobalAveragePool over the last axis, its scale computed as rsqrt(var + ε) · γ). The attention
heads (Keras's einsum, written as Unsqueeze/Transpose/ReduceProd-shaped Reshapes) stay."""

from __future__ import annotations

from pathlib import Path

import onnx

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


def test_a_keras_transformer_prunes_its_mlp_and_hidden_size():
    model = onnx.load(str(FIXTURES / "tf2onnx_keras_transformer.onnx"))
    assert_oracle(model, ratio=0.5, round_to=1)
    _, report = onnxprune.prune(model, ratio=0.5, round_to=1)
    assert report["check"]["ok"] and _removed(report) == {"mlp": 32}
    _, report = onnxprune.prune(model, ratio=0.5, hidden=0.25, round_to=1)
    assert report["check"]["ok"] and _removed(report) == {"mlp": 32, "hidden": 8}
    assert report["changes_function"]
