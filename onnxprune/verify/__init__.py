"""Verification and cost: onnx.checker, ONNX Runtime runs, mask equivalence, params and MACs;
side-by-side latency (``bench``), the fidelity a pruned model paid (``compare``), and both across
a range of ratios (``sweep``)."""

from .bench import BenchOptions, benchmark, cuda_unavailable_reason, parse_batches
from .checks import CheckResult, check_model, compare_outputs, make_inputs, run_model
from .compare import (Reference, compare_models, compare_with_reference, recall_distortion,
                      reference_run)
from .cost import Cost, count_cost
from .latency import LayerLatencyTable, Timing, measure_latency
from .sweep import CSV_COLUMNS, parse_ratios, plot_sweep, sweep, write_csv

__all__ = ["BenchOptions", "CSV_COLUMNS", "CheckResult", "Cost", "LayerLatencyTable", "Reference",
           "Timing", "benchmark", "check_model", "compare_models", "compare_outputs",
           "compare_with_reference", "count_cost", "cuda_unavailable_reason", "make_inputs",
           "measure_latency", "parse_batches", "parse_ratios", "plot_sweep", "recall_distortion",
           "reference_run", "run_model", "sweep", "write_csv"]
