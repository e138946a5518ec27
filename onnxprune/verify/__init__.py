"""Verification and cost: onnx.checker, ONNX Runtime runs, mask equivalence, params and MACs."""

from .checks import CheckResult, check_model, compare_outputs, make_inputs, run_model
from .cost import Cost, count_cost
from .latency import LayerLatencyTable, Timing, measure_latency

__all__ = ["CheckResult", "Cost", "LayerLatencyTable", "Timing", "check_model", "compare_outputs",
           "count_cost", "make_inputs", "measure_latency", "run_model"]
