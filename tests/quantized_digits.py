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


def quantized_digits(folder: Path, fmt: str = "QDQ", per_channel: bool = True,
                     reduce_range: bool = False) -> onnx.ModelProto:
    """The digits model statically quantized in ``fmt`` (QDQ or QOperator). ``reduce_range``
    (7-bit weights) is what ORT asks for on CPUs without VNNI, whose u8s8 kernels otherwise
    saturate pairs of products, so that a model and its pruned copy (other pairs) round
    alike there."""
    out = folder / f"{fmt}_{per_channel}_{reduce_range}.onnx"
    quantization.quantize_static(
        str(prepare(folder)), str(out), _Batches(),
        quant_format=getattr(quantization.QuantFormat, fmt), per_channel=per_channel,
        reduce_range=reduce_range, weight_type=quantization.QuantType.QInt8,
        activation_type=quantization.QuantType.QUInt8)
    return onnx.load(str(out))


def dynamic_digits(folder: Path, per_channel: bool = False, reduce_range: bool = True
                   ) -> onnx.ModelProto:
    """The digits model dynamically quantized (DynamicQuantizeLinear, ConvInteger,
    MatMulInteger; int8 weights, 7-bit by default, see ``quantized_digits``)."""
    out = folder / f"dynamic_{per_channel}_{reduce_range}.onnx"
    quantization.quantize_dynamic(str(prepare(folder)), str(out), per_channel=per_channel,
                                  reduce_range=reduce_range,
                                  weight_type=quantization.QuantType.QInt8)
    return onnx.load(str(out))
