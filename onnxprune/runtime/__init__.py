"""Runtime: what every later layer needs to run a model on ONNX Runtime. Sessions, feeds
(concrete shapes for dynamic dims, seeded random inputs), running a model as users run it or
exactly, params and MACs (counted by each op's rule), and latency (a whole model, or each layer
alone in the per-layer table)."""

from .cost import Cost, count_cost, count_macs, count_params, node_macs, value_shapes
from .feeds import DEFAULT_DIM, input_shapes, make_inputs, user_inputs
from .layer_table import LayerLatencyTable
from .run import (batch_outputs, float32_twin, low_precision, needs_exact_run,
                  output_distortion, run_model, sliced)
from .session import session
from .timing import Timing, latency_session, measure_latency, timed_calls

__all__ = ["Cost", "DEFAULT_DIM", "LayerLatencyTable", "Timing", "batch_outputs",
           "count_cost", "count_macs", "count_params", "float32_twin", "input_shapes",
           "latency_session", "low_precision", "make_inputs", "measure_latency",
           "needs_exact_run", "node_macs", "output_distortion", "run_model", "session",
           "sliced", "timed_calls", "user_inputs", "value_shapes"]
