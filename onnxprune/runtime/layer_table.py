"""The per-layer latency table: each compute layer timed alone at chosen channel widths, so a
caller can predict how a width change moves the latency. Which ops are timed, and how a
narrower copy of one is built, is asked of the op's rule (``timed_widths``, ``widths_after``,
``narrowed``)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import ModelGraph
from ..graph.model_graph import NodeRef
from ..progress import task
from ..rules import RULES, rule_for
from ..rules.base import Rule, TimedLayer, known
from .cost import measure_node_shapes, value_shapes
from .timing import measure_latency


class LayerLatencyTable:
    """Latency of every layer whose rule can time it (Conv 2-D of any group, Gemm, MatMul with
    a constant weight), each measured alone in a one-node model with random weights at chosen
    (c_in, c_out).

    The numbers are relative costs only: a lone op on ORT misses the fusions (Conv+Relu,
    Conv+Add) the whole model gets, and pays the NCHWc reorders of its own input and output that
    neighbouring convs in a model share; each measurement also has a small budget. So the sum
    is not the model's latency (ResNet-50: the layers' sum came out 0.99-1.26x the model's
    median). Compare
    ``latency(i, c_in, c_out)`` with ``latency(i, *dense)`` to predict how a width change moves
    a layer's share. Measurements are cached by signature (op, attributes, input shape, weight
    shape, bias shape), so repeated blocks are timed once; with a ``store``
    (``latency_store.LatencyStore``) they are kept on disk for the next run on this machine.
    """

    def __init__(self, model: onnx.ModelProto, input_shapes=None, threads: int = 1,
                 budget_s: float = 0.05, warmup: int = 3, store=None):
        self.threads = threads
        self.budget_s = budget_s
        self.warmup = warmup
        self.opset = _default_opset(model)
        self._layers = _find_layers(model, input_shapes)
        self._cache: dict[tuple, float] = {}
        self.store = store          # a LatencyStore: timings read from and kept on disk
        self.reused = 0

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
        if c_in < 1 or c_out < 1:
            raise ValueError(f"widths must be positive, got c_in={c_in}, c_out={c_out}")
        shapes = RULES[layer.op].narrowed(layer, c_in, c_out)
        key = _signature(layer, *shapes)
        if key not in self._cache:
            stored = self.store.get(key) if self.store is not None else None
            if stored is not None:
                self.reused += 1
                self._cache[key] = stored
                return stored
            model = _single_node_model(layer, *shapes, self.opset)
            timing = measure_latency(model, threads=self.threads, warmup=self.warmup,
                                     budget_s=self.budget_s)
            self._cache[key] = timing.median
            if self.store is not None:
                self.store.put(key, timing.median)
        return self._cache[key]

    def widths(self, node_index: int, weight_shape) -> tuple[int, int]:
        """(c_in, c_out) of the layer when its weight has ``weight_shape`` (after slicing)."""
        layer = self._layers[node_index]
        return RULES[layer.op].widths_after(layer, tuple(weight_shape))

    def dense_total(self, progress=None) -> float:
        """Sum of every layer's latency at its dense widths (``progress``: one part a layer)."""
        total = 0.0
        with task(progress, "timing each layer alone", len(self._layers)) as step:
            for i, dense in self.layers().items():
                total += self.latency(i, *dense)
                step()
        return total

    @property
    def measurements(self) -> int:
        """How many distinct signatures have been timed so far."""
        return len(self._cache)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _find_layers(model: onnx.ModelProto, shapes) -> dict[int, TimedLayer]:
    """Every node whose rule can time it, with fully known shapes (measured by one ORT run
    where inference leaves them unknown)."""
    consts = _constant_shapes(model)
    candidates = [i for i, n in enumerate(model.graph.node)
                  if _timeable(n) and n.input[1] in consts]
    shape = value_shapes(model, shapes) or {}
    unknown = [i for i in candidates if not _known(shape.get(model.graph.node[i].input[0]))]
    if unknown:
        measure_node_shapes(model, shape, unknown, shapes)
    layers = {}
    for i in candidates:
        layer = _layer(NodeRef(i, model.graph.node[i]), shape, consts)
        if layer is not None:
            layers[i] = layer
    return layers


def _timeable(node: onnx.NodeProto) -> bool:
    """Does the node's rule time it (and has it a weight input)?"""
    rule = rule_for(node)
    return (rule is not None and type(rule).timed_widths is not Rule.timed_widths
            and len(node.input) >= 2)


def _constant_shapes(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """Name → (dims, element type) of every constant a timed layer could use as weight or
    bias: initializers, Constant nodes, and tensors computed from constants only (Identity
    aliases of shared weights, ConstantOfShape fills of structure-only models)."""
    found = {t.name: (tuple(t.dims), t.data_type) for t in model.graph.initializer}
    graph = None
    for node in model.graph.node:
        for name in node.input[1:3] if _timeable(node) else ():
            if name and name not in found:
                graph = graph or ModelGraph(model, infer_shapes=False)
                value = graph.const(name)
                if value is not None:
                    found[name] = (value.shape, helper.np_dtype_to_tensor_dtype(value.dtype))
    return found


def _known(dims) -> bool:
    return dims is not None and len(dims) > 0 and known(dims) and all(d > 0 for d in dims)


def _layer(node: NodeRef, shape: dict, consts: dict) -> TimedLayer | None:
    """The layer description, or None when the node is outside what the table handles."""
    proto = node.proto
    x = shape.get(proto.input[0])
    w, elem_type = consts[proto.input[1]]
    if not _known(x) or not _known(w):
        return None
    bias = proto.input[2] if len(proto.input) > 2 and proto.input[2] else ""
    b = (consts[bias][0] if bias in consts else shape.get(bias)) if bias else None
    if bias and b is None:
        return None
    widths = rule_for(proto).timed_widths(node, tuple(x), tuple(w))
    if widths is None:
        return None
    return TimedLayer(proto.op_type, tuple(proto.attribute), tuple(x), tuple(w),
                      tuple(b) if b is not None else None, elem_type, *widths)


def _single_node_model(layer: TimedLayer, x, w, b, attrs, opset: int) -> onnx.ModelProto:
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


def _signature(layer: TimedLayer, x, w, b, attrs) -> tuple:
    """Cache key: op, attributes, input shape, weight and bias shapes (and element type)."""
    encoded = tuple(sorted(a.SerializeToString(deterministic=True) for a in attrs))
    return (layer.op, encoded, tuple(x), tuple(w), tuple(b) if b is not None else None,
            layer.elem_type)
