"""Latency of a whole model on the ONNX Runtime CPU EP.

MACs are not latency (field notes §1: blocked layouts, memory-bound ops, padding to 16
channels), so a latency-aware pruner needs measured costs. ``measure_latency`` times a model the
way a deployment runs it: graph optimizations at ALL (the NCHWc rewrite only happens there), a
fixed intra-op thread count, warm-up first. ``layer_table`` times one layer at a time.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort

from ..io.weights import configure_session
from .device_timer import timing_options
from .feeds import make_inputs
from .session import cpu_disabled_optimizers

MIN_RUNS, MAX_RUNS = 10, 1000   # bounds on the timed runs of a budgeted measurement


@dataclass
class Timing:
    """Wall time of one ``session.run`` in seconds, over ``runs`` timed runs."""

    median: float
    p90: float
    min: float
    runs: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, samples) -> "Timing":
        """The summary of raw per-run times (seconds)."""
        return cls(median=float(np.median(samples)), p90=float(np.percentile(samples, 90)),
                   min=float(np.min(samples)), runs=len(samples))


def latency_session(model: onnx.ModelProto, threads: int = 1) -> ort.InferenceSession:
    """A CPU session set up for timing (``device_timer.timing_options``)."""
    opts = timing_options(threads)
    configure_session(opts, model, lean=False)
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"],
                                disabled_optimizers=cpu_disabled_optimizers(model))


def measure_latency(model: onnx.ModelProto, feeds: dict | None = None, threads: int = 1,
                    warmup: int = 5, runs: int | None = None, budget_s: float = 1.0,
                    input_shapes=None) -> Timing:
    """Median / p90 / min latency of ``model`` on ORT CPU.

    ``warmup`` untimed runs first (allocations, caches), then exactly ``runs`` timed runs, or,
    when ``runs`` is None, timed runs until ``budget_s`` seconds of them are spent (at least
    ``MIN_RUNS`` so the median means something, at most ``MAX_RUNS``). Feeds default to
    deterministic random inputs at ``input_shapes`` (or the model's static shapes).
    """
    if runs is not None and runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    sess = latency_session(model, threads)
    if feeds is None:
        feeds = make_inputs(model, input_shapes, seed=0)
    for _ in range(warmup):
        sess.run(None, feeds)
    return Timing.of(timed_calls(lambda: sess.run(None, feeds), runs, budget_s))


def timed_calls(call, runs: int | None = None, budget_s: float = 1.0) -> list[float]:
    """Wall seconds of each of ``runs`` calls of ``call()``, or, when ``runs`` is None, of calls
    until ``budget_s`` seconds of them are spent (``MIN_RUNS`` to ``MAX_RUNS`` calls). Raw times
    are returned so a caller can publish them beside the summary (``Timing.of``)."""
    samples: list[float] = []
    spent = 0.0
    while len(samples) < (runs or MAX_RUNS):
        if runs is None and spent >= budget_s and len(samples) >= MIN_RUNS:
            break
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
        spent += samples[-1]
    return samples
