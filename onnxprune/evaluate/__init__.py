"""Evaluation: what pruning bought and cost, measured. Side-by-side latency on ONNX Runtime
(``bench``), the fidelity a pruned model paid (``compare``), and both across a range of ratios,
criteria and models (``sweep``)."""

from .bench import BenchOptions, benchmark, cuda_unavailable_reason
from .compare import (Reference, compare_models, compare_with_reference, recall_distortion,
                      reference_run)
from .sweep import parse_ratios, sweep
from .sweep_files import CSV_COLUMNS, plot_sweep, write_csv

__all__ = ["BenchOptions", "CSV_COLUMNS", "Reference", "benchmark", "compare_models",
           "compare_with_reference", "cuda_unavailable_reason", "parse_ratios", "plot_sweep",
           "recall_distortion", "reference_run", "sweep", "write_csv"]
