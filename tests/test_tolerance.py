"""The oracle's tolerance cannot hide an error in a small channel beside large ones: the
relative error is taken per channel of each output (``verify.relative_error``)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune.verify import compare_outputs, relative_error
from onnxprune.verify.checks import CHANNEL_FLOOR

TOLERANCE = 1e-4
ANCHORS = 300


def yolo_like(rng) -> np.ndarray:
    """A detection head's output [1, 4 + 80, anchors]: pixel boxes, then 0-1 class scores."""
    boxes = rng.uniform(0.0, 640.0, (1, 4, ANCHORS))
    scores = rng.uniform(0.0, 1.0, (1, 80, ANCHORS))
    return np.concatenate([boxes, scores], axis=1).astype(np.float32)


def test_a_score_off_by_005_beside_pixel_boxes_is_caught():
    want = yolo_like(np.random.default_rng(0))
    got = want.copy()
    got[0, 10, 5] += 0.05
    whole_output_scale = np.abs(got - want).max() / np.abs(want).max()
    assert whole_output_scale < TOLERANCE            # one scale for the output would pass it
    assert relative_error(got, want) > 50 * TOLERANCE      # held to 1% of the boxes' scale


def test_float_noise_in_every_channel_passes():
    rng = np.random.default_rng(1)
    want = yolo_like(rng)
    got = want * (1 + rng.uniform(-1e-6, 1e-6, want.shape)).astype(np.float32)
    assert relative_error(got, want) < TOLERANCE


def test_a_channel_of_cancelled_terms_is_held_to_the_floor():
    """Values near zero made by cancelling large terms round like the terms, not like the
    result: below CHANNEL_FLOOR of the output's largest value the floor is the scale."""
    want = np.stack([np.full(50, 5.0), np.full(50, 3e-9)])[None].astype(np.float32)
    got = want.copy()
    got[0, 1] += 2e-8                # the tiny channel 7x off, but 4e-9 of the output's scale
    assert np.abs(got - want)[0, 1].max() / np.abs(want)[0, 1].max() > 1
    assert relative_error(got, want) == pytest.approx(2e-8 / (CHANNEL_FLOOR * 5.0), rel=0.05)


def _head(score_bias: float) -> onnx.ModelProto:
    """x [1, 8, A] → Concat(640·x[:, :4], Sigmoid(x[:, 4:] + bias)) along axis 1."""
    nodes = [
        helper.make_node("Split", ["x", "sizes"], ["b", "s"], axis=1),
        helper.make_node("Mul", ["b", "scale"], ["boxes"]),
        helper.make_node("Add", ["s", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1),
    ]
    bias = np.zeros((1, 4, 1), np.float32)
    bias[0, 2, 0] = score_bias
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 8, 50])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8, 50])],
        [numpy_helper.from_array(np.array([4, 4], np.int64), "sizes"),
         numpy_helper.from_array(np.array(640.0, np.float32), "scale"),
         numpy_helper.from_array(bias, "bias")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_the_check_fails_a_model_whose_small_channel_drifted():
    x = {"x": np.random.default_rng(2).uniform(0, 1, (1, 8, 50)).astype(np.float32)}
    assert compare_outputs(_head(0.0), _head(0.0), x, TOLERANCE).ok
    result = compare_outputs(_head(0.2), _head(0.0), x, TOLERANCE)   # scores move by ~0.05
    assert result.runs and result.checker and not result.ok
    assert result.max_rel_error > 10 * TOLERANCE
