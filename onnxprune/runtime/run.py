"""Running a model on ONNX Runtime: as users run it, or *exactly* (for comparing two models
that should compute the same function), and over batches of feeds."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ..io.weights import WeightStore, new_tensor, tensor_value
from .session import session

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
HALF = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


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


def sliced(values: dict[str, np.ndarray], io: dict | None) -> dict[str, np.ndarray]:
    """``values`` with each array that ``io`` names ({name: {axis: kept positions}}) cut to
    its kept positions: the feeds a model whose KV cache lost heads takes, and the outputs of
    its dense or masked original that its own outputs compare with."""
    if not io:
        return values
    out = dict(values)
    for name, axes in io.items():
        if name in out:
            for axis, keep in axes.items():
                out[name] = np.compress(keep, out[name], axis=axis)
    return out


def exposing(model: onnx.ModelProto, names) -> onnx.ModelProto:
    """A copy of ``model`` that also outputs the tensors ``names`` (to watch them run)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    declared = {o.name for o in probe.graph.output}
    for name in dict.fromkeys(names):
        if name not in declared:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    return probe


def batch_outputs(model, batches) -> list[dict]:
    """The model's outputs on each feed dict of ``batches`` (one session for all)."""
    sess = session(model)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feeds))) for feeds in batches]


def output_distortion(got, want, weights=None) -> float:
    """Σ‖y_masked − y‖² / Σ‖y‖² over batches (each weighted by its calibration set's share
    when several sets were fused): LD-Pruner's task-agnostic output distortion."""
    num = den = 0.0
    for k, (g, w) in enumerate(zip(got, want)):
        share = weights[k] if weights else 1.0
        for name in w:
            if not np.issubdtype(w[name].dtype, np.floating):
                continue
            num += share * float(np.sum(np.square(g[name].astype(np.float64) - w[name])))
            den += share * float(np.sum(np.square(w[name].astype(np.float64))))
    return num / den if den > 0 else num


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
