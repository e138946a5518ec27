"""Calibration data: loading it (``data``; image folders in ``images``) and the per-channel
statistics that data-driven criteria and compensation read, captured through ONNX Runtime
(``capture``); several weighted sets are fused by ``sources``."""

from .capture import ChannelStats, capture_stats
from .data import load_calibration
from .images import Preprocess, load_images, parse_preprocess
from .sources import CalibSource, as_sources, mix, parse_source
from .synthetic import match_batchnorm_statistics

__all__ = ["CalibSource", "ChannelStats", "Preprocess", "as_sources", "capture_stats",
           "load_calibration", "load_images", "match_batchnorm_statistics", "mix",
           "parse_preprocess", "parse_source"]
