"""ONNX Runtime CPU sessions for every stage that runs a model (checks, calibration, scoring)."""

from __future__ import annotations

import os

import onnx
import onnxruntime as ort

from ..io.weights import configure_session


def threads_from_environment() -> int:
    """``ONNXPRUNE_THREADS`` when set to a number (a pipeline running several jobs side by
    side gives each a few threads), else 0: ONNX Runtime's default, every core."""
    value = os.environ.get("ONNXPRUNE_THREADS", "")
    return int(value) if value.isdigit() else 0


def session(model, threads: int = 0, level=None) -> ort.InferenceSession:
    """A CPU session for a ModelProto or a path (``level``: graph optimizations, default
    ONNX Runtime's own, all of them). ``threads`` 0: see :func:`threads_from_environment`."""
    opts = ort.SessionOptions()
    # Fatal only: a failed run is caught and reported in one line, and ORT's own log lines on
    # stderr would bury it.
    opts.log_severity_level = 4
    threads = threads or threads_from_environment()
    if threads:
        opts.intra_op_num_threads = threads
    if level is not None:
        opts.graph_optimization_level = level
    configure_session(opts, model)
    if isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"],
                                    disabled_optimizers=cpu_disabled_optimizers(model))
    return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


def cpu_disabled_optimizers(model: onnx.ModelProto) -> list[str] | None:
    """ORT CPU graph rewrites a model must be loaded without. One that computes in float16
    goes without the NCHWc rewrite, which blocks float32 convs only: onnxruntime 1.31.1 crashed
    (a segmentation fault, not an error) creating a session for ViT-B/16's float16 copy with
    it on."""
    half = onnx.TensorProto.FLOAT16
    if any(t.data_type == half for t in model.graph.initializer) or any(
            v.type.tensor_type.elem_type == half for v in model.graph.value_info):
        return ["NchwcTransformer"]
    return None
