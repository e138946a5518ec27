"""Proof that a rewritten model is right: it passes the full ONNX checker, runs on ONNX
Runtime with the original's inputs and outputs, and matches the masked original."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from ..errors import UserError, one_line
from ..io.weights import WeightStore, configure_session, new_tensor, tensor_value

DEFAULT_DIM = 64   # used for a dynamic dim other than the batch when no shape is given


@dataclass
class CheckResult:
    checker: bool
    runs: bool
    same_io: bool
    max_rel_error: float | None
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.checker and self.runs and self.same_io and (
            self.max_rel_error is not None and self.max_rel_error <= self.tolerance)


def check_model(model: onnx.ModelProto) -> None:
    """Full check: structure, types and strict shape inference. A model whose weights are in
    files is checked from a file (see ``WeightStore.checkable``)."""
    store = WeightStore.of(model)
    if store is None:
        return onnx.checker.check_model(model, full_check=True)
    with store.checkable(model) as path:
        onnx.checker.check_model(str(path), full_check=True)


def input_problem(model: onnx.ModelProto, runtime: bool = True) -> str | None:
    """Why the *input* model is itself unusable, or None: an opset newer than the installed
    onnx knows, a failed full check, or (with ``runtime``) a model ONNX Runtime cannot load
    (an op from a domain it does not implement, say). ``prune`` asks only after something
    went wrong, so that a broken input is reported as the user's problem rather than as a
    failed rewrite; ``inspect``, which runs nothing, asks first."""
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            return (f"the model imports ONNX opset {opset.version}, newer than this onnx "
                    f"{onnx.__version__} knows (up to {newest})")
    try:
        check_model(model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        return f"the input model fails onnx.checker: {one_line(str(exc), 200)}"
    if not runtime:
        return None
    try:
        session(model)
    except Exception as exc:  # noqa: BLE001 - whatever ORT refuses, it refuses the input
        return f"ONNX Runtime cannot load the input model: {one_line(str(exc), 200)}"
    return None


def input_shapes(model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]] | None = None
                 ) -> dict[str, tuple[int, ...]]:
    """Concrete shapes for the graph inputs: given ones, else 1 for a dynamic batch and
    ``DEFAULT_DIM`` for other dynamic dims."""
    overrides = overrides or {}
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        if inp.name in overrides:
            shapes[inp.name] = tuple(overrides[inp.name])
            continue
        dims = inp.type.tensor_type.shape.dim
        shapes[inp.name] = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0
            else (1 if k == 0 else DEFAULT_DIM) for k, d in enumerate(dims))
    unknown = set(overrides) - set(shapes)
    if unknown:
        raise UserError(f"no model input named {sorted(unknown)[0]!r}")
    return shapes


def make_inputs(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]] | None = None,
                seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic random inputs of the right dtype for every graph input. Integers are 0
    or 1 (masks, ids), except a Loop's trip count, which is 2: a check must run the body."""
    rng = np.random.default_rng(seed)
    concrete = input_shapes(model, shapes)
    trip_counts = {n.input[0] for n in model.graph.node if n.op_type == "Loop" and n.input}
    feeds = {}
    for inp in model.graph.input:
        if inp.name not in concrete:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        shape = concrete[inp.name]
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        elif inp.name in trip_counts:
            feeds[inp.name] = np.full(shape, 2, dtype)
        else:
            feeds[inp.name] = rng.integers(0, 2, shape).astype(dtype)
    return feeds


QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def _threads_from_environment() -> int:
    value = os.environ.get("ONNXPRUNE_THREADS", "")
    return int(value) if value.isdigit() else 0


def session(model, threads: int = 0, level=None) -> ort.InferenceSession:
    """A CPU session for a ModelProto or a path (``level``: graph optimizations, default
    ONNX Runtime's own, all of them). ``threads`` 0: ``ONNXPRUNE_THREADS`` when set (a
    pipeline that runs several jobs side by side), else ONNX Runtime's default, every core."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    threads = threads or _threads_from_environment()
    if threads:
        opts.intra_op_num_threads = threads
    if level is not None:
        opts.graph_optimization_level = level
    configure_session(opts, model)
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray],
              exact: bool = False) -> dict[str, np.ndarray]:
    """Outputs on ONNX Runtime CPU. ``exact`` asks for outputs fit to compare two models that
    should compute the same function:

    * a QDQ model's quantize and dequantize ops run as written (basic optimizations only). At
      higher levels ORT fuses DequantizeLinear → Conv → QuantizeLinear into int8 kernels whose
      rounding depends on the channel layout (on AVX2 the u8s8 kernels saturate pairs of
      products), so a model and its pruned copy round differently there;
    * a float16 or bfloat16 model runs as its float32 twin (``float32_twin``: the same values,
      widened exactly) on the same inputs widened, because half-precision sums of different
      lengths round differently although every kept product is the same."""
    if exact and low_precision(model):
        model = float32_twin(model)
        feeds = {k: v.astype(np.float32) if v.dtype.name in ("float16", "bfloat16") else v
                 for k, v in feeds.items()}
    level = (ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
             if exact and any(n.op_type in QDQ_OPS for n in model.graph.node) else None)
    sess = session(model, level=level)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


HALF = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def needs_exact_run(model: onnx.ModelProto) -> bool:
    """Does ``run_model(model, feeds, exact=True)`` differ from a plain run?"""
    return low_precision(model) or any(n.op_type in QDQ_OPS for n in model.graph.node)


def low_precision(model: onnx.ModelProto) -> bool:
    """Does the model compute in float16 or bfloat16 anywhere (weights, inputs, outputs)?"""
    return (any(t.data_type in HALF for t in model.graph.initializer) or
            any(v.type.tensor_type.elem_type in HALF
                for v in list(model.graph.input) + list(model.graph.output)))


def float32_twin(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy computing in float32 with exactly the same values: float16/bfloat16 weights,
    constants and declared types widened (exact), and every Cast to half precision made a
    Cast to float32. Two models that compute the same function in half precision compute it
    in their twins too, without half-precision rounding."""
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    _widen_graph(twin.graph, WeightStore.of(model))
    return twin


def _widen_graph(graph: onnx.GraphProto, store: WeightStore | None) -> None:
    for tensor in graph.initializer:
        _widen_tensor(tensor, store)
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.tensor_type.elem_type in HALF:
            info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    for node in graph.node:
        for attr in node.attribute:
            if attr.name in ("to", "dtype", "output_dtype") and attr.i in HALF:
                attr.i = onnx.TensorProto.FLOAT
            if attr.type == onnx.AttributeProto.TENSOR:
                _widen_tensor(attr.t, None)
            if attr.type == onnx.AttributeProto.GRAPH:
                _widen_graph(attr.g, store)
            for sub in attr.graphs:
                _widen_graph(sub, store)


def _widen_tensor(tensor: onnx.TensorProto, store: WeightStore | None) -> None:
    if tensor.data_type in HALF:
        wide = tensor_value(tensor, store).astype(np.float32)
        tensor.CopyFrom(new_tensor(tensor.name, wide, store))


def user_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs a caller feeds (IR 3 also lists every initializer as an input)."""
    inits = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    """max |got − want| relative to the largest |want| (0 for identical arrays)."""
    if got.shape != want.shape:
        return float("inf")
    if not np.issubdtype(want.dtype, np.floating):
        return 0.0 if np.array_equal(got, want) else float("inf")
    diff = np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0.0)
    scale = np.max(np.abs(want.astype(np.float64)), initial=0.0)
    return float(diff / scale) if scale > 0 else float(diff)


def compare_outputs(pruned: onnx.ModelProto, reference: onnx.ModelProto,
                    feeds: dict[str, np.ndarray], tolerance: float = 1e-4) -> CheckResult:
    """Checker + ORT run of ``pruned`` and comparison with ``reference`` on the same inputs."""
    try:
        check_model(pruned)
        checker = True
    except Exception:  # noqa: BLE001 - reported as a failed check
        checker = False
    same_io = (user_inputs(pruned) == user_inputs(reference)
               and [o.name for o in pruned.graph.output] == [o.name for o in reference.graph.output])
    try:
        got = run_model(pruned, feeds)      # it must run as users will run it
        runs = True
    except Exception:  # noqa: BLE001
        return CheckResult(checker, False, same_io, None, tolerance)
    if needs_exact_run(pruned):
        got = run_model(pruned, feeds, exact=True)
    want = run_model(reference, feeds, exact=True)
    error = max((relative_error(got[k], want[k]) for k in want), default=0.0)
    return CheckResult(checker, runs, same_io, error, tolerance)
