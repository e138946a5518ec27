"""Verification and cost: onnx.checker, ONNX Runtime runs, mask equivalence, params and MACs."""

from .checks import CheckResult, check_model, compare_outputs, make_inputs, run_model
from .cost import Cost, count_cost

__all__ = ["CheckResult", "Cost", "check_model", "compare_outputs", "count_cost", "make_inputs",
           "run_model"]
