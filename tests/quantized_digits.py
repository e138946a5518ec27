"""The bundled digits CNN quantized by ONNX Runtime's own quantizer (static, int8 weights,
uint8 activations, 8 random calibration batches): the quantized models the tests and
``benchmarks.quantized_rounding`` prune."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnxruntime import quantization

DEMO = str(resources.files("onnxprune").joinpath("data/demo_digits.onnx"))


class _Batches(quantization.CalibrationDataReader):
    def __init__(self):
        rng = np.random.default_rng(0)
        self.batches = iter([{"input": rng.standard_normal((1, 1, 8, 8)).astype(np.float32)}
                             for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


def prepare(folder: Path) -> Path:
    """The digits model after the quantizer's pre-processing, in ``folder``."""
    path = folder / "pre.onnx"
    if not path.exists():
        quantization.shape_inference.quant_pre_process(DEMO, str(path))
    return path


def quantized_digits(folder: Path, fmt: str = "QDQ", per_channel: bool = True
                     ) -> onnx.ModelProto:
    """The digits model statically quantized in ``fmt`` (QDQ or QOperator)."""
    out = folder / f"{fmt}_{per_channel}.onnx"
    quantization.quantize_static(
        str(prepare(folder)), str(out), _Batches(),
        quant_format=getattr(quantization.QuantFormat, fmt), per_channel=per_channel,
        weight_type=quantization.QuantType.QInt8,
        activation_type=quantization.QuantType.QUInt8)
    return onnx.load(str(out))
