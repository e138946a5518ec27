"""The per-layer latency table: each compute layer timed alone at chosen channel widths, so a
caller can predict how a width change moves the latency. Which ops are timed, and how a
narrower copy of one is built, is asked of the op's rule (``timed_widths``, ``widths_after``,
``narrowed``). Ops without weights whose time follows what they read (activations, pools,
concats, norms, attention's products: the rule's ``streams``) are timed alone too, at the
shapes a plan gives their inputs, except where ONNX Runtime folds them into a neighbour (the
rule's ``fuses_after`` / ``fuses_before``). From a table a deployment device timed
(``device_timer``), nothing is timed: signatures off its grid are read between grid points.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..graph import ModelGraph
from ..graph.model_graph import NodeRef
from ..progress import task
from ..errors import UserError
from ..rules import RULES, rule_for
from ..rules.base import Rule, TimedLayer, known
from .cost import measure_node_shapes, value_shapes
from .latency_store import signature_key
from .timing import measure_latency


STALE_SHARE = 0.25      # an empty run this much faster or slower than beside the store's
PROBE_WINDOWS, PROBE_WINDOW_S = 5, 0.01     # ... timed as the fastest of 5 medians of 10 ms


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
    a layer's share; ``cost`` and ``stream_latency`` subtract what an empty run costs (a node
    inside a model pays no ``session.run`` of its own). Each measurement is the fastest run
    of its window (``device_timer.TABLE_MEASURE``). Measurements are cached by signature (op,
    attributes, input shape, weight shape, bias shape), so repeated blocks are timed once;
    with a ``store``
    (``latency_store.LatencyStore``) they are kept on disk for the next run on this machine.
    """

    def __init__(self, model: onnx.ModelProto, input_shapes=None, threads: int = 1,
                 budget_s: float = 0.05, warmup: int = 3, store=None, streams: bool = False):
        self.threads = threads
        self.budget_s = budget_s
        self.warmup = warmup
        self.opset = _default_opset(model)
        shape = value_shapes(model, input_shapes) or {}
        graph = ModelGraph(model) if streams else None
        stream_nodes = _stream_candidates(model, graph) if streams else []
        self._layers = _find_layers(model, shape, input_shapes, stream_nodes)
        self._streams = _find_streams(model, graph, shape, stream_nodes, set(self._layers))
        self._cache: dict[tuple, float] = {}
        self.store = store          # a LatencyStore: timings read from and kept on disk
        self.reused = 0             # timings read from the store
        self.timed = 0              # ... and timed in this run
        self.untimed: dict[int, str] = {}   # stream nodes ONNX Runtime would not run alone
        self.stale: dict | None = None      # the store's timings were doubted, and how
        if store is not None and store.grids is None:
            self._check_store()

    def _check_store(self) -> None:
        """Compare an empty run's time here (``_probe``) with the one the store's section
        was timed beside. Faster here by more than ``STALE_SHARE``: the stored timings were
        taken slower (under load, or on another machine of this name) and are dropped, not
        mixed with this run's. Slower here: this run is the loaded one, so the stored
        timings are read and this run's are not added. On a model of microsecond layers a
        mixed table misleads: one whose empty run read 6.9 us (this machine's 4.8 us, but
        6.9 us while a NumPy matrix product runs beside it) made latency-aware allocation cut
        the digits CNN's residual stream from 32 channels to 8 (accuracy 0.99 -> 0.64)
        where a fresh table kept it whole."""
        key = ("empty-run probe", 1)
        stored, here = self.store.get(key), self._probe()
        if stored is None:
            self.store.put(key, here)
            return
        if here * (1.0 + STALE_SHARE) < stored:
            dropped = self.store.forget()
            self.store.put(key, here)
            self.stale = {"empty_run_stored_s": stored, "empty_run_here_s": here,
                          "dropped": dropped}
        elif here > stored * (1.0 + STALE_SHARE):
            self.store.read_only = True
            self.stale = {"empty_run_stored_s": stored, "empty_run_here_s": here,
                          "dropped": 0}

    def _probe(self) -> float:
        """The fastest of a few short medians of an empty run: load that comes in bursts
        (a test beside it) lifts some of them, not all; steady load lifts every one."""
        model = _empty_model(1)
        return min(measure_latency(model, threads=self.threads, warmup=self.warmup,
                                   budget_s=PROBE_WINDOW_S).median
                   for _ in range(PROBE_WINDOWS))

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
        if c_in < 1 or c_out < 1:
            raise ValueError(f"widths must be positive, got c_in={c_in}, c_out={c_out}")
        key, build = self.layer_entry(node_index, c_in, c_out)
        return self._timed(key, build, (node_index, (c_in, c_out)))

    def layer_entry(self, node_index: int, c_in: int, c_out: int) -> tuple[tuple, object]:
        """The signature of the layer at these widths, and what builds its one-node model."""
        layer = self._layers[node_index]
        shapes = RULES[layer.op].narrowed(layer, c_in, c_out)
        return _signature(layer, *shapes), lambda: _single_node_model(layer, *shapes,
                                                                      self.opset)

    def stream_entry(self, node_index: int, shapes) -> tuple[tuple, object]:
        """The same for a stream node with its inputs at ``shapes``."""
        layer = self._streams[node_index]
        shapes = tuple(tuple(s) if s is not None else None for s in shapes)
        return (("stream", layer.op, layer.attrs_key, shapes, layer.elem_types),
                lambda: layer.model(shapes, self.opset))

    @staticmethod
    def floor_entry(inputs: int) -> tuple[tuple, object]:
        return ("floor", inputs), lambda: _empty_model(inputs)

    def dense_key(self, node_index: int) -> tuple:
        """The signature of a timed layer or stream node at its dense shapes: what a device
        table's grids are keyed by."""
        if node_index in self._layers:
            return self.layer_entry(node_index, *self.layers()[node_index])[0]
        return self.stream_entry(node_index, self._streams[node_index].shapes)[0]

    def _timed(self, key: tuple, build, grid_point=None) -> float:
        """The seconds of the one-node model ``build()`` makes (its fastest run of a short
        window: ``device_timer.TABLE_MEASURE``), cached under ``key`` (and kept in the
        store). From a device's table (``store.grids``) nothing is timed:
        a signature it lacks is read between the grid points of the node's dense signature
        (``grid_point``: node index and its coordinates there)."""
        if key not in self._cache:
            stored = self.store.get(key) if self.store is not None else None
            if stored is not None:
                self.reused += 1
                self._cache[key] = stored
                return stored
            if self.store is not None and self.store.grids is not None:
                self._cache[key] = self._between(key, grid_point)
                return self._cache[key]
            timing = measure_latency(build(), threads=self.threads, warmup=self.warmup,
                                     budget_s=self.budget_s)
            self.timed += 1
            self._cache[key] = timing.min
            if self.store is not None:
                self.store.put(key, timing.min)
        return self._cache[key]

    def _between(self, key: tuple, grid_point) -> float:
        """Seconds read between a device table's grid points (see ``grid_between``)."""
        points = []
        if grid_point is not None:
            grid = self.store.grids.get(signature_key(self.dense_key(grid_point[0]))) or []
            points = [(tuple(p[:-1]), self.store.timings[p[-1]]) for p in grid
                      if p[-1] in self.store.timings]   # the device may not run them all
        if not points:
            raise UserError(
                f"the device table {self.store.path} has no timing for {key[0]} "
                f"{'' if grid_point is None else f'node {grid_point[0]} '}at these shapes: "
                "build the bundle from this model with these --input-shape")
        return grid_between(points, tuple(grid_point[1]))

    def streams(self) -> dict[int, "StreamLayer"]:
        """Node index → the weightless node the table times at its inputs' shapes."""
        return dict(self._streams)

    def stream_latency(self, node_index: int, shapes) -> float:
        """Median seconds of the stream node alone with its inputs at ``shapes`` (one entry
        per input, None where absent; constants sliced to their first entries), less what an
        empty run costs (``floor``): inside a model the node pays no ``session.run`` of its
        own."""
        layer = self._streams[node_index]
        key, build = self.stream_entry(node_index, shapes)
        seconds = self._timed(key, build, (node_index, (layer.size(shapes),)))
        return max(0.0, seconds - self.floor_of(layer.data_inputs))

    @property
    def floor(self) -> float:
        """Seconds of a run that does nothing with one input: ORT's own cost per
        ``session.run``, which a node inside a model does not pay."""
        return self.floor_of(1)

    def floor_of(self, inputs: int) -> float:
        """The same with ``inputs`` graph inputs, each of which a run binds (a lone Concat of
        48 DenseNet features pays that 48 times; inside the model it pays nothing)."""
        return self._timed(*self.floor_entry(inputs))

    def widths(self, node_index: int, weight_shape) -> tuple[int, int]:
        """(c_in, c_out) of the layer when its weight has ``weight_shape`` (after slicing)."""
        layer = self._layers[node_index]
        return RULES[layer.op].widths_after(layer, tuple(weight_shape))

    def cost(self, node_index: int, c_in: int, c_out: int) -> float:
        """``latency`` less what an empty run costs (``floor``): the layer's share of a whole
        model's run, which pays one ``session.run`` for all its nodes."""
        return max(0.0, self.latency(node_index, c_in, c_out) - self.floor)

    def dense_total(self, progress=None) -> float:
        """Sum of every layer's ``cost`` at its dense widths, stream nodes included (those
        ONNX Runtime will not run alone are dropped, in ``untimed``); ``progress``: one part a
        layer."""
        total = 0.0
        with task(progress, "timing each layer alone",
                  len(self._layers) + len(self._streams)) as step:
            for i, dense in self.layers().items():
                total += self.cost(i, *dense)
                step()
            for i, layer in list(self._streams.items()):
                try:
                    total += self.stream_latency(i, layer.shapes)
                except Exception as exc:  # noqa: BLE001 - ORT refuses the node alone
                    self.untimed[i] = str(exc).splitlines()[0][:200]
                    del self._streams[i]
                step()
        return total

    @property
    def measurements(self) -> int:
        """How many distinct signatures have been timed so far."""
        return len(self._cache)


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def _find_layers(model: onnx.ModelProto, shape: dict, shapes, streams: list[int]
                 ) -> dict[int, TimedLayer]:
    """Every node whose rule can time it, with fully known shapes (``shape``: from
    inference; completed by one ORT run where it left them unknown, for the ``streams``
    candidates too)."""
    consts = _constant_shapes(model)
    candidates = [i for i, n in enumerate(model.graph.node)
                  if _timeable(n) and n.input[1] in consts]
    unknown = [i for i in candidates if not _known(shape.get(model.graph.node[i].input[0]))]
    unknown += [i for i in streams if i not in candidates and any(
        name and name not in consts and not _known(shape.get(name))
        for name in model.graph.node[i].input)]
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


@dataclass
class StreamLayer:
    """A weightless node the table times alone: its op and attributes, its inputs' dense
    shapes and element types (None where absent), and the value of each constant input (a
    narrower copy takes its first entries)."""

    op: str
    domain: str
    attrs: tuple
    names: tuple[str, ...]
    shapes: tuple
    elem_types: tuple
    constants: dict
    outputs: int

    @property
    def data_inputs(self) -> int:
        """How many inputs a one-node copy takes as graph inputs (not constants)."""
        return sum(1 for k, s in enumerate(self.shapes) if s is not None and k not in self.constants)

    def size(self, shapes) -> int:
        """Elements of the data inputs (not the constants) at ``shapes``: what a stream
        node's time follows, and its coordinate on a device table's grid."""
        return sum(int(np.prod(s)) for k, s in enumerate(shapes)
                   if s is not None and k not in self.constants)

    @property
    def attrs_key(self) -> tuple:
        return (self.domain,) + tuple(sorted(a.SerializeToString(deterministic=True)
                                             for a in self.attrs))

    def model(self, shapes, opset: int) -> onnx.ModelProto:
        """A one-node model with the inputs at ``shapes``: data inputs become graph inputs
        (random feeds), constants initializers cut to size."""
        inputs, weights, names = [], [], []
        for i, (shape, elem) in enumerate(zip(shapes, self.elem_types)):
            if shape is None:
                names.append("")
                continue
            names.append(f"x{i}")
            if i in self.constants:
                value = self.constants[i][tuple(slice(0, d) for d in shape)]
                weights.append(numpy_helper.from_array(np.ascontiguousarray(value), f"x{i}"))
            else:
                inputs.append(helper.make_tensor_value_info(f"x{i}", elem, shape))
        node = helper.make_node(self.op, names, [f"y{k}" for k in range(self.outputs)],
                                domain=self.domain)
        node.attribute.extend(self.attrs)
        graph = helper.make_graph(
            [node], f"{self.op}_alone", inputs,
            [helper.make_empty_tensor_value_info(f"y{k}") for k in range(self.outputs)],
            weights)
        opsets = [helper.make_opsetid("", opset)]
        if self.domain not in ("", "ai.onnx"):
            opsets.append(helper.make_opsetid(self.domain, 1))
        return helper.make_model_gen_version(graph, opset_imports=opsets)


def _empty_model(inputs: int) -> onnx.ModelProto:
    """A model of ``inputs`` one-value inputs that does next to nothing with them."""
    names = [f"x{k}" for k in range(inputs)]
    node = (helper.make_node("Concat", names, ["y"], axis=0) if inputs > 1
            else helper.make_node("Identity", names, ["y"]))
    graph = helper.make_graph(
        [node], "empty", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1])
                          for n in names],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [inputs])])
    return helper.make_model_gen_version(graph, opset_imports=[helper.make_opsetid("", 17)])


def _stream_candidates(model: onnx.ModelProto, graph: ModelGraph) -> list[int]:
    """Top-level nodes whose rule ``streams``, reading at least one computed value, that ONNX
    Runtime would not fold into the node before or after them."""
    readers: dict[str, int] = {}
    for n in model.graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    made_by = {out: n.op_type for n in model.graph.node for out in n.output}
    read_by = {name: n for n in model.graph.node for name in n.input}
    found = []
    for i, proto in enumerate(model.graph.node):
        rule = rule_for(proto)
        if rule is None or not rule.streams or not proto.input:
            continue
        constant = {k for k, name in enumerate(proto.input)
                    if name and graph.const(name) is not None}
        if len(constant) == sum(1 for name in proto.input if name):
            continue                    # constant folding's, not the runtime's
        first = proto.input[0]
        if first and readers.get(first) == 1 and first in made_by and rule.fuses_after(
                NodeRef(i, proto), made_by[first], constant):
            continue
        out = proto.output[0] if proto.output else ""
        if readers.get(out) == 1 and rule.fuses_before(
                NodeRef(i, proto), read_by[out].op_type, first in read_by[out].input):
            continue
        found.append(i)
    return found


def _is_data(dims, elem_type: int) -> bool:
    """A float tensor of more than one value: what a stream node's time follows."""
    return (int(np.prod(dims)) > 1 and elem_type != 0 and
            np.issubdtype(helper.tensor_dtype_to_np_dtype(elem_type), np.floating))


def _find_streams(model: onnx.ModelProto, graph: ModelGraph | None, shape: dict,
                  candidates: list[int], layers: set[int]) -> dict[int, StreamLayer]:
    """The ``candidates`` that are not timed layers and whose inputs' shapes and element
    types are all known."""
    streams = {}
    for i in candidates:
        proto = model.graph.node[i]
        if i in layers:
            continue
        values = {k: graph.const(name) for k, name in enumerate(proto.input) if name}
        shapes, types = [], []
        for k, name in enumerate(proto.input):
            value = values.get(k)
            dims = (list(value.shape) if value is not None else shape.get(name)) if name else None
            elem = (helper.np_dtype_to_tensor_dtype(value.dtype) if value is not None
                    else graph.dtypes.get(name)) if name else 0
            if name and (dims is None or not known(dims) or elem is None):
                break
            shapes.append(tuple(dims) if name else None)
            types.append(elem)
        else:
            if not any(values.get(k) is None and _is_data(dims, types[k])
                       for k, dims in enumerate(shapes) if dims is not None):
                continue        # shape arithmetic (integers, scalars), not a data stream
            streams[i] = StreamLayer(
                proto.op_type, proto.domain, tuple(proto.attribute), tuple(proto.input),
                tuple(shapes), tuple(types),
                {k: v for k, v in values.items() if v is not None}, len(proto.output))
    return streams


def grid_between(points: list[tuple[tuple, float]], at: tuple) -> float:
    """Seconds at ``at`` read between timed ``points`` ((coordinates, seconds)): bilinear on
    a full (c_in, c_out) grid; otherwise (a depthwise conv's widths move together, a stream
    node has one size) linear in the product of the coordinates, held at the ends."""
    if len(at) == 2:
        grid = dict(points)
        xs, ys = sorted({p[0] for p, _ in points}), sorted({p[1] for p, _ in points})
        x0, x1 = _bracket(xs, at[0])
        y0, y1 = _bracket(ys, at[1])
        corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)]
        if all(c in grid for c in corners):
            fx = 0.0 if x1 == x0 else (min(max(at[0], x0), x1) - x0) / (x1 - x0)
            fy = 0.0 if y1 == y0 else (min(max(at[1], y0), y1) - y0) / (y1 - y0)
            low = grid[(x0, y0)] * (1 - fx) + grid[(x1, y0)] * fx
            high = grid[(x0, y1)] * (1 - fx) + grid[(x1, y1)] * fx
            return float(low * (1 - fy) + high * fy)
    sizes: dict[int, list[float]] = {}
    for coords, seconds in points:
        sizes.setdefault(int(np.prod(coords)), []).append(seconds)
    xs = sorted(sizes)
    return float(np.interp(int(np.prod(at)), xs, [float(np.mean(sizes[x])) for x in xs]))


def _bracket(values: list[int], x: int) -> tuple[int, int]:
    """The grid values on either side of ``x`` (the end one twice beyond the grid)."""
    below = [v for v in values if v <= x]
    above = [v for v in values if v >= x]
    low = below[-1] if below else values[0]
    high = above[0] if above else values[-1]
    return low, high
