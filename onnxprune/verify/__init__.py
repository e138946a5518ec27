"""Verification and cost: onnx.checker, ONNX Runtime runs, mask equivalence, params and MACs;
side-by-side latency (``bench``) and the fidelity a pruned model paid (``compare``)."""

from .bench import BenchOptions, benchmark, cuda_unavailable_reason, parse_batches
from .checks import CheckResult, check_model, compare_outputs, make_inputs, run_model
from .compare import compare_models, recall_distortion
from .cost import Cost, count_cost
from .latency import LayerLatencyTable, Timing, measure_latency

__all__ = ["BenchOptions", "CheckResult", "Cost", "LayerLatencyTable", "Timing", "benchmark",
           "check_model", "compare_models", "compare_outputs", "count_cost",
           "cuda_unavailable_reason", "make_inputs", "measure_latency", "parse_batches",
           "recall_distortion", "run_model"]
