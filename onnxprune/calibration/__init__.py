"""Calibration data: loading it (``data``) and the per-channel statistics that data-driven
criteria and compensation read, captured through ONNX Runtime (``capture``)."""

from .capture import ChannelStats, capture_stats
from .data import load_calibration
from .synthetic import match_batchnorm_statistics

__all__ = ["ChannelStats", "capture_stats", "load_calibration", "match_batchnorm_statistics"]
