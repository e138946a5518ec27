"""``benchmarks/conv_width_rate.py``: the conv it times is a valid model, and the MACs it
divides by are the ones onnxprune counts for that model."""

from __future__ import annotations

import numpy as np
import onnx

from benchmarks.conv_width_rate import conv_model, conv_macs
from onnxprune.runtime import count_cost, latency_session


def test_the_timed_conv_is_valid_and_its_macs_are_counted_alike():
    model = conv_model(3, 10, 8, 24)
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 8, 10, 10)).astype(np.float32)
    (y,) = latency_session(model, 1).run(None, {"x": x})
    assert y.shape == (1, 24, 10, 10) and (y >= 0).all()
    assert conv_macs(3, 10, 8, 24) == count_cost(model).macs
