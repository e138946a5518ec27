"""Latency on the ONNX Runtime CPU EP: a whole model, and each prunable layer alone.

MACs are not latency (field notes §1: blocked layouts, memory-bound ops, padding to 16
channels), so a latency-aware pruner needs measured costs. ``measure_latency`` times a model the
way a deployment runs it: graph optimizations at ALL (the NCHWc rewrite only happens there), a
fixed intra-op thread count, warm-up first. ``LayerLatencyTable`` times one Conv/Gemm/MatMul at a
time at chosen channel widths, so a caller can predict how a width change moves the latency.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ..io.weights import configure_session
from .checks import make_inputs
from .cost import measure_node_shapes, value_shapes

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
    """A CPU session set up for timing: optimizations ALL, ``threads`` intra-op threads, one
    inter-op thread, sequential execution (so the thread count is the one that is measured)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    configure_session(opts, model, lean=False)
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


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


@dataclass
class _Layer:
    """What a one-node copy of a layer needs: the op, its attributes, the shapes around it."""

    op: str
    attrs: tuple[onnx.AttributeProto, ...]
    x_shape: tuple[int, ...]      # the activation input
    w_shape: tuple[int, ...]      # the constant weight
    b_shape: tuple[int, ...] | None  # the bias (Conv B, Gemm C), when present
    elem_type: int
    c_in: int
    c_out: int

    def attr(self, name: str, default=0):
        return next((helper.get_attribute_value(a) for a in self.attrs if a.name == name),
                    default)


class LayerLatencyTable:
    """Latency of every Conv (2-D, any group), Gemm and MatMul node with a constant weight, each
    measured alone in a one-node model with random weights at chosen (c_in, c_out).

    The numbers are relative costs only: a lone op on ORT misses the fusions (Conv+Relu,
    Conv+Add) the whole model gets, and pays the NCHWc reorders of its own input and output that
    neighbouring convs in a model share; each measurement also has a small budget. So the sum
    is not the model's latency (ResNet-50: the layers' sum came out 0.99-1.26x the model's
    median). Compare
    ``latency(i, c_in, c_out)`` with ``latency(i, *dense)`` to predict how a width change moves
    a layer's share. Measurements are cached by signature (op, attributes, input shape, weight
    shape, bias shape), so repeated blocks are timed once.
    """

    def __init__(self, model: onnx.ModelProto, input_shapes=None, threads: int = 1,
                 budget_s: float = 0.05, warmup: int = 3):
        self.threads = threads
        self.budget_s = budget_s
        self.warmup = warmup
        self.opset = _default_opset(model)
        self._layers = _find_layers(model, input_shapes)
        self._cache: dict[tuple, float] = {}

    def layers(self) -> dict[int, tuple[int, int]]:
        """Node index → dense (c_in, c_out) for every node this table can time."""
        return {i: (layer.c_in, layer.c_out) for i, layer in self._layers.items()}

    def latency(self, node_index: int, c_in: int, c_out: int) -> float:
        """Median seconds of the node alone with ``c_in`` input and ``c_out`` output channels.

        Raises KeyError for a node the table does not time and ValueError for widths the
        node's group structure cannot take.
        """
        if node_index not in self._layers:
            raise KeyError(f"node {node_index} is not a timed layer (see layers())")
        layer = self._layers[node_index]
        shapes = _narrowed_shapes(layer, c_in, c_out)
        key = _signature(layer, *shapes)
        if key not in self._cache:
            model = _single_node_model(layer, *shapes, self.opset)
            timing = measure_latency(model, threads=self.threads, warmup=self.warmup,
                                     budget_s=self.budget_s)
            self._cache[key] = timing.median
        return self._cache[key]

    def widths(self, node_index: int, weight_shape) -> tuple[int, int]:
        """(c_in, c_out) of the layer when its weight has ``weight_shape`` (after slicing)."""
        layer = self._layers[node_index]
        w = tuple(weight_shape)
        if layer.op == "Conv":
            group = layer.attr("group", 1)
            if group > 1 and group == layer.c_in:       # depthwise: c_in follows c_out
                return w[0] * layer.c_in // layer.c_out, w[0]
            return w[1] * group, w[0]
        if layer.op == "Gemm" and layer.attr("transB"):
            return w[1], w[0]
        return w[0], w[1]

    def dense_total(self) -> float:
        """Sum of every layer's latency at its dense widths."""
        return sum(self.latency(i, *dense) for i, dense in self.layers().items())

    @property
    def measurements(self) -> int:
        """How many distinct signatures have been timed so far."""
        return len(self._cache)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _find_layers(model: onnx.ModelProto, shapes) -> dict[int, _Layer]:
    """Every timeable node with fully known shapes (measured by one ORT run where inference
    leaves them unknown)."""
    consts = _constant_shapes(model)
    candidates = [i for i, n in enumerate(model.graph.node) if _weight_name(n) in consts]
    shape = value_shapes(model, shapes) or {}
    unknown = [i for i in candidates if not _known(shape.get(model.graph.node[i].input[0]))]
    if unknown:
        measure_node_shapes(model, shape, unknown, shapes)
    layers = {}
    for i in candidates:
        layer = _layer(model.graph.node[i], shape, consts)
        if layer is not None:
            layers[i] = layer
    return layers


def _constant_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """Name → (dims, element type) of every constant a Conv/Gemm/MatMul could use as weight
    or bias: initializers, Constant nodes, and tensors computed from constants only (Identity
    aliases of shared weights, ConstantOfShape fills of structure-only models)."""
    from ..graph.model_graph import ModelGraph

    found = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    graph = None
    for node in model.graph.node:
        for name in node.input[1:3] if _weight_name(node) else ():
            if name and name not in found:
                graph = graph or ModelGraph(model, infer_shapes=False)
                value = graph.const(name)
                if value is not None:
                    found[name] = (value.shape, helper.np_dtype_to_tensor_dtype(value.dtype))
    return found


def _weight_name(node: onnx.NodeProto) -> str:
    """The weight input of a Conv, Gemm or MatMul; '' for any other node."""
    if node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return ""
    return node.input[1] if node.op_type in ("Conv", "Gemm", "MatMul") else ""


def _known(dims) -> bool:
    return dims is not None and len(dims) > 0 and all(isinstance(d, int) and d > 0 for d in dims)


def _layer(node: onnx.NodeProto, shape: dict, consts: dict) -> _Layer | None:
    """The layer description, or None when the node is outside what the table handles."""
    x = shape.get(node.input[0])
    w, elem_type = consts[node.input[1]]
    if not _known(x) or not _known(w):
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    b = (consts[bias][0] if bias in consts else shape.get(bias)) if bias else None
    if bias and b is None:
        return None
    widths = _dense_widths(node, tuple(x), w)
    if widths is None:
        return None
    return _Layer(node.op_type, tuple(node.attribute), tuple(x), w,
                  tuple(b) if b is not None else None, elem_type, *widths)


def _dense_widths(node: onnx.NodeProto, x: tuple, w: tuple) -> tuple[int, int] | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        group = attrs.get("group", 1)
        ok = len(x) == 4 and len(w) == 4 and x[1] == w[1] * group
        return (x[1], w[0]) if ok else None
    if len(w) != 2:
        return None
    if node.op_type == "Gemm":
        k_in = x[0] if attrs.get("transA", 0) else x[1]
        k_w, n = (w[1], w[0]) if attrs.get("transB", 0) else w
        return (k_in, n) if len(x) == 2 and k_in == k_w else None
    return (x[-1], w[1]) if x[-1] == w[0] else None   # MatMul


def conv_group(dense_group: int, dense_c_in: int, c_in: int, c_out: int) -> int:
    """The group count of a conv narrowed to (c_in, c_out).

    A depthwise conv (one input channel per group) stays depthwise: group = c_in. Any other
    grouped conv keeps its group count, which must divide both widths. ValueError otherwise.
    """
    if dense_group == 1:
        return 1
    group = c_in if dense_group == dense_c_in else dense_group
    if c_in % group or c_out % group:
        raise ValueError(f"a conv with group={group} cannot take c_in={c_in}, c_out={c_out}: "
                         "both must be multiples of the group count")
    return group


def _narrowed_shapes(layer: _Layer, c_in: int, c_out: int):
    """(input shape, weight shape, bias shape, attributes) of the layer at (c_in, c_out)."""
    if c_in < 1 or c_out < 1:
        raise ValueError(f"widths must be positive, got c_in={c_in}, c_out={c_out}")
    x, attrs = list(layer.x_shape), list(layer.attrs)
    if layer.op == "Conv":
        group = conv_group(layer.attr("group", 1), layer.c_in, c_in, c_out)
        x[1] = c_in
        w = [c_out, c_in // group, *layer.w_shape[2:]]
        attrs = [a for a in attrs if a.name != "group"] + [helper.make_attribute("group", group)]
    elif layer.op == "Gemm":
        x[0 if layer.attr("transA") else 1] = c_in
        w = [c_out, c_in] if layer.attr("transB") else [c_in, c_out]
    else:
        x[-1] = c_in
        w = [c_in, c_out]
    b = list(layer.b_shape) if layer.b_shape is not None else None
    if b and b[-1] == layer.c_out:
        b[-1] = c_out
    return x, w, b, attrs


def _single_node_model(layer: _Layer, x, w, b, attrs, opset: int) -> onnx.ModelProto:
    """A one-node model of ``layer`` at the narrowed shapes, with random weights."""
    rng = np.random.default_rng(0)
    dtype = helper.tensor_dtype_to_np_dtype(layer.elem_type)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(dtype), name)
               for name, s in (("w", w), ("b", b)) if s is not None]
    node = helper.make_node(layer.op, ["x"] + [t.name for t in weights], ["y"])
    node.attribute.extend(attrs)
    graph = helper.make_graph(
        [node], f"{layer.op}_alone",
        [helper.make_tensor_value_info("x", layer.elem_type, x)],
        [helper.make_tensor_value_info("y", layer.elem_type, None)], weights)
    return helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", opset)])


def _signature(layer: _Layer, x, w, b, attrs) -> tuple:
    """Cache key: op, attributes, input shape, weight and bias shapes (and element type)."""
    encoded = tuple(sorted(a.SerializeToString(deterministic=True) for a in attrs))
    return (layer.op, encoded, tuple(x), tuple(w), tuple(b) if b is not None else None,
            layer.elem_type)
