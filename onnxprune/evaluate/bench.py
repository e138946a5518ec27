"""Side-by-side latency of several models on ONNX Runtime, with what each one costs.

Users prune to get speed, and MACs are not latency (field notes §1), so the speed has to be
measured, and measured the way a deployment runs: graph optimizations at ALL, a fixed thread
count, warm-up before timing, many timed runs summarized by median / p90 / min. On CUDA the
inputs live on the device (IOBinding), so host-to-device copies are not what gets timed, and the
warm-up covers cuDNN's algorithm search. Every model is compared with the FIRST one at the same
batch size: its speedup, the MAC ratio (the ideal speedup), and their quotient, the efficiency.
"""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper

from ..errors import UserError, one_line
from ..io import load_with_size
from ..io.external import external_bytes
from ..io.weights import WeightStore, configure_session, inline_weights
from ..progress import task
from ..runtime import count_cost, input_shapes, make_inputs
from ..runtime.device_timer import bound_runner, gpu_model
from ..runtime.hardware import cpu_model
from ..runtime.timing import MAX_RUNS, MIN_RUNS, Timing, latency_session, timed_calls

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
PROVIDERS = {"cpu": CPU, "cuda": CUDA}
ALGO_SEARCH = ("EXHAUSTIVE", "HEURISTIC", "DEFAULT")
CUDA_MIN_WARMUP = 10   # cuDNN's EXHAUSTIVE search runs on the first calls at each shape
ROUNDS = 5             # timed runs are split into this many turns through all the models


@dataclass(frozen=True)
class BenchOptions:
    """How every model is timed. ``runs`` None means: as many timed runs as fit ``budget_s``
    seconds per model and batch, judged from the warm-up (``MIN_RUNS`` to ``MAX_RUNS``). The CUDA
    fields are provider
    options: ``tf32`` is ``use_tf32``, ``nhwc`` is ``prefer_nhwc``, ``algo_search`` is
    ``cudnn_conv_algo_search``."""

    provider: str = "cpu"
    threads: int = 1
    runs: int | None = None
    budget_s: float = 1.0
    warmup: int = 5
    fp16: bool = False
    nhwc: bool = False
    tf32: bool = True
    algo_search: str = "EXHAUSTIVE"
    device_id: int = 0

    def check(self) -> None:
        """One-line errors for settings that cannot be timed."""
        if self.provider not in PROVIDERS:
            raise UserError(f"--provider must be one of {', '.join(PROVIDERS)}, "
                            f"got {self.provider!r}")
        if self.threads < 1:
            raise UserError(f"--threads must be at least 1, got {self.threads}")
        if self.runs is not None and self.runs < 1:
            raise UserError(f"--runs must be at least 1, got {self.runs}")
        if not self.budget_s > 0:
            raise UserError(f"--budget must be a positive number of seconds, got {self.budget_s}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.algo_search.upper() not in ALGO_SEARCH:
            raise UserError(f"--algo-search must be one of {', '.join(ALGO_SEARCH).lower()}")
        if self.provider != "cuda" and self.nhwc:
            raise UserError("--nhwc is a CUDA provider option: use it with --provider cuda")

    @property
    def effective_warmup(self) -> int:
        return max(self.warmup, CUDA_MIN_WARMUP) if self.provider == "cuda" else self.warmup

    def cuda_provider_options(self) -> dict[str, str]:
        """The options the CUDA EP is created with (ORT takes them as strings)."""
        return {"device_id": str(self.device_id),
                "cudnn_conv_algo_search": self.algo_search.upper(),
                "use_tf32": "1" if self.tf32 else "0",
                "prefer_nhwc": "1" if self.nhwc else "0"}


# --- the CUDA provider: is it really there? -------------------------------------------------

@lru_cache(maxsize=1)
def cuda_unavailable_reason() -> str | None:
    """None when a session really runs on the CUDA EP here, else why not, in one line.

    ``get_available_providers`` only says the EP was built in: a session silently falls back to
    CPU when the CUDA or cuDNN libraries are missing (ORT logs why on stderr). So a tiny model
    is loaded with the EP (again after ``preload_dlls`` when that fails), the native log is
    captured for the reason, and the session's own provider list decides."""
    if CUDA not in ort.get_available_providers():
        return (f"onnxruntime {ort.__version__} is built without it "
                f"({', '.join(ort.get_available_providers())}); pip install onnxruntime-gpu")
    log: list[str] = []
    with _native_stderr_into(log), contextlib.redirect_stdout(io.StringIO()):
        try:
            if CUDA in _probe_session().get_providers():
                return None
            ort.preload_dlls()   # CUDA/cuDNN from NVIDIA's pip packages, then try once more
            if CUDA in _probe_session().get_providers():
                return None
        except Exception as exc:  # noqa: BLE001 - any failure means: not usable
            return f"creating a CUDA session failed: {_first_line(str(exc))}"
    return f"a session fell back to the CPU: {_log_reason(''.join(log))}"


def _probe_session() -> ort.InferenceSession:
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "probe",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=[CUDA, CPU])


@contextlib.contextmanager
def _native_stderr_into(log: list[str]):
    """Send file descriptor 2 (where ORT's C++ logger writes) to a temporary file for the
    duration, then append what was written to ``log``. Without a usable fd 2, does nothing."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            log.append(tmp.read().decode("utf-8", "replace"))


def _log_reason(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    found = re.findall(r"with error: ([^\n]+)", text)
    if found:
        return found[-1].strip()   # the last attempt's
    found = re.search(r"(Require [^\n.]*\.?[^\n.]*)", text)
    if found:
        return found.group(1).strip().rstrip(".")
    return "onnxruntime gave no reason (no GPU, or no CUDA/cuDNN libraries)"


def _first_line(text: str) -> str:
    return one_line(text) or "no message"


# --- preparing one model --------------------------------------------------------------------

def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy for timing; inputs and outputs stay float32 (``keep_io_types``) so the
    same feeds work and the outputs compare with the original's. Weights kept in files are
    read in first: the converter rewrites tensors in memory."""
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise UserError("--fp16 needs onnxconverter-common: pip install 'onnxprune[fp16]'") \
            from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if WeightStore.of(model) is not None:
                copy = onnx.ModelProto()
                copy.CopyFrom(model)
                inline_weights(copy)
                model = copy
            half = float16.convert_float_to_float16(model, keep_io_types=True)
        except Exception as exc:  # noqa: BLE001 - the converter's limits, said in one line
            raise UserError(f"cannot convert the model to float16: "
                            f"{_first_line(str(exc) or type(exc).__name__)}") from None
    return _casts_to_half(half)


def _casts_to_half(model: onnx.ModelProto) -> onnx.ModelProto:
    """Cast nodes that make a float32 value the converter has already typed float16 now cast
    to float16. onnxconverter-common 1.16 retypes every float value but leaves a Cast's
    ``to``: ViT-B/16 exported with a symbolic batch computes its attention scale from a
    shape cast to float, and its float16 copy was rejected by ONNX Runtime and the checker."""
    half = {v.name for v in model.graph.value_info
            if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16}
    for node in model.graph.node:
        if node.op_type == "Cast" and node.output[0] in half:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT:
                    attr.i = onnx.TensorProto.FLOAT16
    return model


def batch_shapes(model: onnx.ModelProto, batch: int, overrides=None, label: str = "model"
                 ) -> dict[str, tuple[int, ...]]:
    """Concrete input shapes at ``batch``: the model's static dims, ``--input-shape`` for the
    dynamic ones, and ``batch`` on axis 0 of every input that has one. Shapes that contradict
    the model (rank, a static dim, a fixed batch) are one-line errors, not ORT tracebacks."""
    declared = {i.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                         for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    shapes = {}
    for name, shape in input_shapes(model, overrides).items():
        dims = declared[name]
        if len(shape) != len(dims):
            raise UserError(f"{label}: input {name!r} has {len(dims)} dims, the shape given "
                            f"has {len(shape)} ({'x'.join(map(str, shape)) or 'scalar'})")
        for k, (want, got) in enumerate(zip(dims[1:], shape[1:]), start=1):
            if want is not None and want != got:
                raise UserError(f"{label}: input {name!r} has size {want} on axis {k}, "
                                f"the shape given has {got}")
        if dims and dims[0] is not None and dims[0] != batch:
            raise UserError(f"{label}: input {name!r} has a fixed batch of {dims[0]}; "
                            f"--batch {batch} does not fit")
        shapes[name] = (batch, *shape[1:]) if shape else shape
    return shapes


def model_overrides(model: onnx.ModelProto, overrides) -> dict | None:
    """The ``--input-shape`` entries that name inputs of this model (others are for others)."""
    if not overrides:
        return None
    names = {i.name for i in model.graph.input}
    return {k: v for k, v in overrides.items() if k in names} or None


@dataclass
class _Model:
    label: str
    proto: onnx.ModelProto      # as given: params, MACs
    timed: onnx.ModelProto      # what runs: the fp16 copy with --fp16
    file_bytes: int


def _load(model, index: int, fp16: bool) -> _Model:
    proto, size = load_with_size(model)
    label = f"model{index}" if isinstance(model, onnx.ModelProto) else str(model)
    return _Model(label, proto, to_fp16(proto) if fp16 else proto, size + external_bytes(proto))


# --- sessions and runners -------------------------------------------------------------------

def _session(m: _Model, options: BenchOptions) -> ort.InferenceSession:
    """CPU: ``latency_session`` (ALL, fixed threads). CUDA: the same session options with the
    CUDA EP first; a session that did not get the EP is an error, never a silent CPU timing."""
    try:
        if options.provider == "cpu":
            return latency_session(m.timed, options.threads)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = options.threads
        opts.inter_op_num_threads = 1
        configure_session(opts, m.timed, lean=False)
        sess = ort.InferenceSession(m.timed.SerializeToString(), opts,
                                    providers=[(CUDA, options.cuda_provider_options()), CPU])
    except Exception as exc:  # noqa: BLE001 - a model ORT cannot load is the user's input
        raise UserError(f"onnxruntime cannot load {m.label}: {_first_line(str(exc))}") from None
    if CUDA not in sess.get_providers():
        raise UserError(f"the CUDA execution provider is not available here (a session for "
                        f"{m.label} fell back to {', '.join(sess.get_providers())})")
    return sess


def _runner(sess: ort.InferenceSession, feeds: dict, options: BenchOptions) -> Callable[[], None]:
    """One timed call: ``sess.run`` on CPU, a bound run on CUDA (``bound_runner``)."""
    if options.provider == "cpu":
        return lambda: sess.run(None, feeds)
    return bound_runner(sess, feeds, "cuda", options.device_id)


def _warm_up(call, m: _Model, batch: int, shapes: dict, options: BenchOptions) -> float:
    """The untimed runs before timing; returns an estimate of one call's seconds (the median of
    the later half of the warm-up, past allocations and cuDNN's search) to size a budget."""
    try:
        call()   # the first run: where a shape that does not fit the graph shows up
    except Exception as exc:  # noqa: BLE001
        shown = ", ".join(f"{k}:{'x'.join(map(str, v))}" for k, v in shapes.items())
        raise UserError(f"{m.label} does not run at batch {batch} ({shown}): "
                        f"{_first_line(str(exc))}") from None
    times = timed_calls(call, max(options.effective_warmup - 1, 1))
    return float(np.median(times[len(times) // 2:]))


def _runs_for(estimate: float, options: BenchOptions) -> int:
    """``--runs``, or as many runs as fit the budget (``MIN_RUNS`` to ``MAX_RUNS``)."""
    if options.runs is not None:
        return options.runs
    fit = int(options.budget_s / estimate) if estimate > 0 else MAX_RUNS
    return min(max(fit, MIN_RUNS), MAX_RUNS)


def interleaved(calls: Sequence[Callable[[], None]], runs: Sequence[int],
                rounds: int = ROUNDS) -> list[list[float]]:
    """Raw times of ``runs[i]`` calls of each ``calls[i]``, taken in ``rounds`` turns that go
    through every model: drift on a shared machine (other load, clock changes) then falls on
    all models alike instead of on whichever was timed last. Each turn starts with one untimed
    call, so a model's caches are warm again after the others ran."""
    samples: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        for i, (call, n) in enumerate(zip(calls, runs)):
            share = n // rounds + (r < n % rounds)
            if share:
                call()
                samples[i] += timed_calls(call, share)
    return samples


# --- the benchmark --------------------------------------------------------------------------

def benchmark(models: Sequence, batches: Sequence[int] = (1,), options: BenchOptions | None = None,
              input_shapes=None, progress=None, at_once: int | None = None) -> dict:
    """Time every model at every batch size and compare each with the first model.

    ``models``: paths or ModelProtos. ``input_shapes``: NAME → dims for dynamic dims (axis 0 is
    replaced by each batch size). ``progress``: see :mod:`onnxprune.progress` (one part per
    model warmed up and per batch timed). ``at_once``: at most this many models beside the
    first are loaded and timed together; each such group is its own interleaved benchmark
    with the first model timed again, and its speedups are against that timing (a sweep's
    200 ResNet-18 copies opened at once took 9.6 GiB; the first model's row is its first
    group's). Returns a JSON-ready dict: ``machine``, ``settings``, ``models`` and ``rows``
    (one per batch and model, in the order given, with the raw times in ``samples_s``)."""
    options = options or BenchOptions()
    options.check()
    if not models:
        raise UserError("give at least one model to time")
    batches = tuple(dict.fromkeys(batches))
    if not batches or min(batches) < 1:
        raise UserError(f"batch sizes must be at least 1, got {','.join(map(str, batches))}")
    if options.provider == "cuda":
        reason = cuda_unavailable_reason()
        if reason:
            raise UserError(f"the CUDA execution provider is not available here ({reason})")
    rest = list(range(1, len(models)))
    size = len(rest) if not at_once or at_once >= len(rest) else at_once
    groups = [[0] + rest[i:i + size] for i in range(0, len(rest), size)] if rest else [[0]]
    rows: dict[tuple[int, int], dict] = {}
    infos: dict[int, dict] = {}
    machine = None
    with task(progress, "warming up and timing",
              sum(len(batches) * (len(g) + 1) for g in groups)) as step:
        for group in groups:
            loaded = [_load(models[i], i, options.fp16) for i in group]
            _check_overrides(loaded, input_shapes)
            sessions = [_session(m, options) for m in loaded]
            machine = machine or machine_info(options, sessions[0])
            for batch in batches:
                timed = _measure_batch(loaded, sessions, batch, options, input_shapes, step)
                compare_with_first(timed)
                for i, row in zip(group, timed):
                    rows.setdefault((batch, i), row)
            for i, m in zip(group, loaded):
                infos.setdefault(i, {"model": m.label, "file_bytes": m.file_bytes})
            del loaded, sessions            # the next group's models replace them
    settings = bench_settings(options, batches)
    if len(groups) > 1:
        settings["at_once"] = size
    return {"machine": machine, "settings": settings,
            "models": [infos[i] for i in range(len(models))],
            "rows": [rows[batch, i] for batch in batches for i in range(len(models))]}


def _check_overrides(loaded: list[_Model], overrides) -> None:
    names = {i.name for m in loaded for i in m.proto.graph.input}
    unknown = sorted(set(overrides or {}) - names)
    if unknown:
        raise UserError(f"--input-shape: no model has an input named {unknown[0]!r}")


def _measure_batch(loaded: list[_Model], sessions, batch: int, options: BenchOptions, overrides,
                   step: Callable[..., None]) -> list[dict]:
    """Warm up every model at ``batch``, then time them in interleaved rounds."""
    prepared = []
    for m, sess in zip(loaded, sessions):
        shapes = batch_shapes(m.proto, batch, model_overrides(m.proto, overrides), m.label)
        call = _runner(sess, make_inputs(m.proto, shapes, seed=0), options)
        runs = _runs_for(_warm_up(call, m, batch, shapes, options), options)
        prepared.append((m, shapes, call, runs))
        step()
    samples = interleaved([p[2] for p in prepared], [p[3] for p in prepared])
    step()
    return [_row(m, batch, shapes, times, options)
            for (m, shapes, _, _), times in zip(prepared, samples)]


def _row(m: _Model, batch: int, shapes: dict, samples: list[float], options: BenchOptions) -> dict:
    timing = Timing.of(samples)
    cost = count_cost(m.proto, shapes)
    return {"model": m.label, "batch": batch, "precision": "fp16" if options.fp16 else "fp32",
            "median_s": timing.median, "p90_s": timing.p90, "min_s": timing.min,
            "runs": timing.runs, "throughput": batch / timing.median if timing.median else None,
            "params": cost.params, "macs": cost.macs, "file_bytes": m.file_bytes,
            "samples_s": samples}


def compare_with_first(rows: list[dict]) -> None:
    """Add ``speedup`` (first model's median / this median), ``mac_ratio`` (first model's MACs /
    these MACs: the speedup the MAC count promises) and ``efficiency`` (speedup / MAC ratio:
    1 means the MACs saved all turned into speed) to every row, against the first row of the
    same batch size. None where a number is unknown."""
    first: dict[int, dict] = {}
    for row in rows:
        base = first.setdefault(row["batch"], row)
        row["speedup"] = (base["median_s"] / row["median_s"]) if row["median_s"] else None
        row["mac_ratio"] = (base["macs"] / row["macs"]
                            if base["macs"] is not None and row["macs"] else None)
        row["efficiency"] = (row["speedup"] / row["mac_ratio"]
                             if row["speedup"] is not None and row["mac_ratio"] else None)


def bench_settings(options: BenchOptions, batches) -> dict:
    """How the timings were taken (the settings section of a benchmark's report)."""
    return {"provider": PROVIDERS[options.provider], "threads": options.threads,
            "batches": list(batches), "precision": "fp16" if options.fp16 else "fp32",
            "runs": options.runs, "budget_s": None if options.runs else options.budget_s,
            "warmup": options.effective_warmup, "graph_optimization": "ALL"}


def machine_info(options: BenchOptions, sess: ort.InferenceSession | None = None) -> dict:
    """What the numbers were measured on, so they can be compared honestly with others'."""
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "onnxruntime": ort.__version__,
            "provider": PROVIDERS[options.provider], "threads": options.threads}
    if options.provider == "cuda":
        used = (sess.get_provider_options().get(CUDA, {}) if sess is not None else {})
        asked = options.cuda_provider_options()
        value = {k: used.get(k, asked[k]) for k in asked}
        info["cuda"] = {"gpu": gpu_model(options.device_id), "tf32": value["use_tf32"] == "1",
                        "prefer_nhwc": value["prefer_nhwc"] == "1",
                        "cudnn_conv_algo_search": value["cudnn_conv_algo_search"],
                        "device_id": int(value["device_id"]), "io_binding": True}
    return info

