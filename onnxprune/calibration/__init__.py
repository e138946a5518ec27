"""Calibration data: loading it (``data``; image folders in ``images``) and the per-channel
statistics that data-driven criteria and compensation read, captured through ONNX Runtime
(``capture``); several weighted sets are fused by ``sources``; OBS's Hessians (``hessian``)."""

from .capture import ChannelStats, Moments, capture_stats
from .data import GENERATED, fixed_batch, load_calibration, load_check_data
from .hessian import (DAMPING, MAX_OBS_FEATURES, MAX_PATCH_FEATURES, damped,
                      dequantized_inputs, gram_inputs, input_gram, patch_inputs)
from .images import Preprocess, load_images, parse_preprocess
from .sources import CalibSource, as_sources, mix, parse_source, source_batches
from .synthetic import match_batchnorm_statistics

__all__ = ["CalibSource", "ChannelStats", "DAMPING", "GENERATED", "MAX_OBS_FEATURES", "MAX_PATCH_FEATURES",
           "Moments", "Preprocess", "as_sources", "capture_stats", "damped",
           "dequantized_inputs", "fixed_batch",
           "gram_inputs", "input_gram", "load_calibration", "load_check_data", "load_images",
           "match_batchnorm_statistics", "mix", "parse_preprocess", "parse_source",
           "patch_inputs", "source_batches"]
