"""An index over a ModelProto that the rest of the tool works on.

The ModelProto stays the single source of truth (so names, metadata, doc strings and node order
survive untouched); this class adds what analysis needs: constants from initializers *and*
``Constant`` nodes, producers and consumers (including outer-scope reads from subgraphs), static
shapes from ONNX shape inference, and a NetworkX DAG of ops and tensors for ordering.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from dataclasses import dataclass

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import UserError
from ..io.normalize import subgraphs
from ..io.weights import WeightStore, is_mapped, new_tensor, tensor_value
from .stand_ins import with_computable_products, with_stand_ins

Dim = int | str | None
_NOT_FOLDED = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
               "Multinomial", "Bernoulli", "Constant", "If", "Loop", "Scan"}
_FOLD_LIMIT = 1 << 22  # elements; bigger computed weights are left as they are
_LONG_VECTOR = 1 << 20  # elements of a 1-D weight that shape inference sees by name only
# integer types a quantized weight may be stored in and still be cut (numpy keeps them as is)
_STORED_INTEGERS = {np.dtype(t) for t in ("int8", "uint8", "int16", "uint16", "int32")}


@dataclass(frozen=True)
class NodeRef:
    """A node and its position in ``graph.node`` (names may be empty or duplicated)."""

    index: int
    proto: onnx.NodeProto

    @property
    def op(self) -> str:
        return self.proto.op_type

    @property
    def label(self) -> str:
        return self.proto.name or f"{self.proto.op_type}#{self.index}"

    def attr(self, name: str, default=None):
        for a in self.proto.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def set_attr(self, name: str, value) -> None:
        for i, a in enumerate(self.proto.attribute):
            if a.name == name:
                del self.proto.attribute[i]
                break
        self.proto.attribute.append(onnx.helper.make_attribute(name, value))

    def has_attr(self, name: str) -> bool:
        return any(a.name == name for a in self.proto.attribute)

    def input(self, i: int) -> str:
        """Name of input ``i``, or '' when it is absent or omitted."""
        return self.proto.input[i] if i < len(self.proto.input) else ""


class ModelGraph:
    """Read-mostly view of a model; constants are edited through :meth:`set_const`."""

    def __init__(self, model: onnx.ModelProto, infer_shapes: bool = True):
        self.model = model
        self.store = WeightStore.of(model)   # where external weights live, if anywhere
        # the weights this graph writes go to one file, which a save can take whole
        self.pack = self.store.new_pack() if self.store is not None else None
        graph = model.graph
        self.opset = _default_opset(model)
        self.nodes = [NodeRef(i, n) for i, n in enumerate(graph.node)]
        self.initializers = {t.name: t for t in graph.initializer}
        self.copies: dict[str, str] = {}   # copy-on-write constants: copy -> what it copied
        self.constant_nodes = {n.output[0]: n for n in graph.node
                               if n.op_type == "Constant" and n.domain in ("", "ai.onnx")}
        self.graph_inputs = [i.name for i in graph.input if i.name not in self.initializers]
        self.graph_outputs = [o.name for o in graph.output]
        self.producer: dict[str, NodeRef] = {}
        self.consumers: dict[str, list[NodeRef]] = defaultdict(list)
        for ref in self.nodes:
            for out in ref.proto.output:
                if out:
                    self.producer[out] = ref
            for name in set(_all_inputs(ref.proto)):
                if name:
                    self.consumers[name].append(ref)
        self.dag = self._build_dag()
        self.order = self._topological_order()
        self._foldable = self._find_foldable()
        self.shapes: dict[str, tuple[Dim, ...]] = {}
        self.dtypes: dict[str, int] = {}   # TensorProto element types that inference found
        if infer_shapes:
            self.shapes = infer_static_shapes(model, self.dtypes)
        self._const_cache: dict[str, np.ndarray] = {}

    # -- structure -----------------------------------------------------------------------
    def _build_dag(self) -> nx.DiGraph:
        """Bipartite DAG: op nodes are node indices (int), tensor nodes are names (str)."""
        dag = nx.DiGraph()
        dag.add_nodes_from(ref.index for ref in self.nodes)
        for ref in self.nodes:
            for name in _all_inputs(ref.proto):
                if name:
                    dag.add_edge(name, ref.index)
            for name in ref.proto.output:
                if name:
                    dag.add_edge(ref.index, name)
        return dag

    def _topological_order(self) -> list[NodeRef]:
        try:
            order = nx.lexicographical_topological_sort(
                self.dag, key=lambda n: n if isinstance(n, int) else -1)
            return [self.nodes[i] for i in order if isinstance(i, int)]
        except nx.NetworkXUnfeasible:
            raise UserError("the graph has a cycle; ONNX graphs must be acyclic") from None

    def readers_through(self, name: str, through: tuple[str, ...]) -> list[tuple[NodeRef, str]]:
        """(node, the tensor it reads) for every node that reads ``name``, or a tensor made
        from it by ops in ``through`` alone (casts and reshapes: the same values), breadth
        first, each node once."""
        out, frontier, seen = [], [name], set()
        while frontier:
            tensor = frontier.pop(0)
            for reader in self.consumers.get(tensor, []):
                if reader.index in seen:
                    continue
                seen.add(reader.index)
                out.append((reader, tensor))
                if reader.op in through:
                    frontier.extend(o for o in reader.proto.output if o)
        return out

    def implicit_inputs(self, ref: NodeRef) -> list[str]:
        """Outer-scope tensors read inside the node's subgraphs (If/Loop/Scan bodies)."""
        explicit = set(ref.proto.input)
        return [n for n in _all_inputs(ref.proto) if n not in explicit]

    # -- constants -----------------------------------------------------------------------
    def const(self, name: str) -> np.ndarray | None:
        """Value of a constant tensor (initializer or Constant node), else None."""
        if not name:
            return None
        if name in self._const_cache:
            return self._const_cache[name]
        value = None
        if name in self.initializers:
            value = tensor_value(self.initializers[name], self.store)
        elif name in self.constant_nodes:
            value = _constant_node_value(self.constant_nodes[name], self.store)
        elif name in self._foldable:
            # Weights computed from constants: Identity aliases of deduplicated weights,
            # ConstantOfShape fills, BN scales built with Mul/Unsqueeze...
            value = self._fold(self.producer[name], name)
        self._remember(name, value)
        return value

    def in_weight_file(self, name: str) -> bool:
        """Is ``name`` an initializer whose data stays in one of the store's files?"""
        tensor = self.initializers.get(name)
        return (self.store is not None and tensor is not None
                and tensor.data_location == onnx.TensorProto.EXTERNAL)

    def _remember(self, name: str, value: np.ndarray | None) -> None:
        """Cache a value, unless it maps a file: mapping it again is free, and a cached map
        would keep its pages in memory (a model over 2 GB is read this way)."""
        if value is not None and not is_mapped(value):
            self._const_cache[name] = value
        else:
            self._const_cache.pop(name, None)

    def _find_foldable(self) -> set[str]:
        """Outputs of ops whose inputs are all constant (computed once, in topological order)."""
        known = set(self.initializers) | set(self.constant_nodes)
        foldable: set[str] = set()
        for ref in self.order:
            inputs = [i for i in ref.proto.input if i]
            if (not inputs or ref.op in _NOT_FOLDED or ref.proto.domain not in ("", "ai.onnx")
                    or self.implicit_inputs(ref) or not all(i in known for i in inputs)):
                continue
            outputs = [o for o in ref.proto.output if o]
            known.update(outputs)
            foldable.update(outputs)
        return foldable

    def _fold(self, ref: NodeRef, name: str) -> np.ndarray | None:
        if ref.op == "Identity":
            return self.const(ref.input(0))
        if ref.op == "DequantizeLinear" and self.quantized_source(name) is None:
            return None     # a stored-quantized weight is cut where it is stored, or not at all
        inputs = [self.const(i) if i else None for i in ref.proto.input]
        if any(v is None for v, i in zip(inputs, ref.proto.input) if i):
            return None
        if ref.op == "ConstantOfShape":
            return _constant_of_shape(ref, inputs[0])
        if sum(v.size for v in inputs if v is not None) > _FOLD_LIMIT:
            return None
        try:
            outputs = _run_single_node(ref.proto, self.model.opset_import,
                                       {i: v for i, v in zip(ref.proto.input, inputs) if i})
        except Exception:  # noqa: BLE001 - not foldable: simply not a constant
            return None
        for out, value in zip(ref.proto.output, outputs):
            if out != name and out:
                self._const_cache[out] = np.asarray(value)
        return np.asarray(outputs[list(ref.proto.output).index(name)])

    def quantized_source(self, name: str) -> NodeRef | None:
        """The DequantizeLinear that makes the weight ``name`` from stored integers, when it
        can be cut where it is stored: constant integer data of a whole-byte type, scales and
        zero points per tensor or per axis (not blocked), and one reader (cutting it for one
        reader must not change another's)."""
        ref = self.producer.get(name)
        if ref is None or ref.op != "DequantizeLinear" or ref.proto.domain not in ("", "ai.onnx"):
            return None
        if ref.attr("block_size", 0) or len(self.consumers.get(name, [])) != 1:
            return None
        values = [self.const(i) for i in ref.proto.input if i]
        if any(v is None for v in values) or values[0].dtype not in _STORED_INTEGERS:
            return None
        return ref

    def slice_const(self, ref: NodeRef, input_index: int, keep: dict[int, np.ndarray]) -> None:
        """Keep only ``keep[axis]`` (a boolean vector) along each axis of the constant ``ref``
        reads at ``input_index``. A weight dequantized from stored integers is cut where it is
        stored (the integers, and per-axis scales and zero points along their axis), so a
        quantized model stays quantized."""
        name = ref.proto.input[input_index]
        source = self.quantized_source(name)
        value = self.const(source.input(0) if source is not None else name)
        for axis, vec in keep.items():
            value = np.compress(vec, value, axis=axis)
        if source is None:
            return self.set_const(ref, input_index, value)
        self.set_const(source, 0, value)
        axis = _dequantize_axis(source, value.ndim)
        for k in (1, 2):
            per_axis = self.const(source.input(k)) if source.input(k) else None
            if per_axis is not None and per_axis.size > 1 and axis in keep:
                self.set_const(source, k, np.compress(keep[axis], per_axis, axis=0))
        self._declare(name, value)
        self._const_cache.pop(name, None)

    def mask_const(self, ref: NodeRef, input_index: int, keep: np.ndarray,
                   zero: np.ndarray | None = None) -> None:
        """Zero the constant ``ref`` reads where ``keep`` (its shape) is False; a dequantized
        weight gets its zero point there, which dequantizes to exactly 0, and so does an
        integer weight whose op reads it with the zero point ``zero`` (broadcast to it)."""
        name = ref.proto.input[input_index]
        source = self.quantized_source(name)
        if source is None:
            value = self.const(name)
            fill = np.zeros((), dtype=value.dtype) if zero is None else zero
            return self.set_const(ref, input_index,
                                  np.where(keep, value, fill).astype(value.dtype, copy=False))
        stored = self.const(source.input(0))
        zero = self.const(source.input(2)) if source.input(2) else np.zeros((), stored.dtype)
        if zero.size > 1:
            shape = [1] * stored.ndim
            shape[_dequantize_axis(source, stored.ndim)] = zero.size
            zero = zero.reshape(shape)
        self.set_const(source, 0,
                       np.where(keep, stored, zero).astype(stored.dtype, copy=False))
        self._const_cache.pop(name, None)

    def set_const(self, ref: NodeRef, input_index: int, value: np.ndarray) -> None:
        """Replace the constant read by ``ref`` at ``input_index``.

        A constant shared with other readers or other inputs of this node (or exposed as a
        graph output, or reached through an alias) is copied under a new name first, so that
        editing it for one use never changes another. A constant-filled weight (``ConstantOfShape``) keeps that form: only
        its shape changes.
        """
        name = ref.proto.input[input_index]
        old = self.const(name)
        value = np.ascontiguousarray(value, dtype=old.dtype if old is not None else None)
        readers = {r.index for r in self.consumers.get(name, [])}
        # Another reader, a graph output, or another input of this very node (exporters that
        # deduplicate initializers hand a fresh BatchNorm the same tensor as scale and var).
        shared = (bool(readers - {ref.index}) or name in self.graph_outputs
                  or list(ref.proto.input).count(name) > 1)
        producer = self.producer.get(name)
        if (not shared and producer is not None and producer.op == "ConstantOfShape"
                and old is not None and value.size and np.all(value == old.flat[0])):
            shape = self.const(producer.input(0))
            self.set_const(producer, 0, np.array(value.shape, dtype=shape.dtype))
            self._declare(name, value)
            self._remember(name, value)
            return
        if (not shared and producer is not None and producer.op in _SAME_ELEMENTS
                and old is not None and value.shape == old.shape
                and len(self.consumers.get(name, [])) == 1):
            source = self.const(producer.input(0))
            if source is not None and source.size == value.size:
                # a value-keeping view of a stored constant (a bias reshaped to [1, C, 1, 1]):
                # the new values go where it is stored, and the graph stays as it was
                self.set_const(producer, 0, value.reshape(source.shape))
                self._const_cache.pop(name, None)
                return
        direct = name in self.initializers or name in self.constant_nodes
        if not direct or shared:
            new_name = self._fresh_name(f"{name}_pruned")
            tensor = self.add_initializer(new_name, value)
            if self.model.ir_version < 4:  # IR 3 wants every initializer among the inputs
                self.model.graph.input.append(onnx.helper.make_tensor_value_info(
                    new_name, tensor.data_type, list(value.shape)))
            ref.proto.input[input_index] = new_name
            if name not in ref.proto.input:    # it may still read the original elsewhere
                self.consumers[name] = [r for r in self.consumers[name] if r.index != ref.index]
            self.consumers[new_name].append(ref)
            self._remember(new_name, value if tensor.data_location != onnx.TensorProto.EXTERNAL
                           else None)
            self.copies[new_name] = name
            return
        if name in self.initializers:
            tensor = self.initializers[name]
            tensor.CopyFrom(new_tensor(name, value, self.store, self.pack))
            stored = tensor.data_location == onnx.TensorProto.EXTERNAL
        else:
            node = self.constant_nodes[name]
            del node.attribute[:]
            node.attribute.append(onnx.helper.make_attribute("value", numpy_helper.from_array(value)))
            stored = False
        self._declare(name, value)
        self._remember(name, None if stored else value)

    def merge_identical_copies(self) -> int:
        """Shared constants are copied on write (``set_const``), so that slicing one reader
        never changes another. When the readers end up with the same slice, the copies are
        equal: point their readers at one tensor and drop the others, so that a shared weight
        stays one weight. Returns how many copies went."""
        merged = 0
        for new, source in list(self.copies.items()):
            value = self.const(new)
            for other in [source, *(c for c, s in self.copies.items() if s == source)]:
                if (other == new or other not in self.initializers or other in self.graph_outputs
                        or not self.consumers.get(other)):
                    continue
                theirs = self.const(other)
                if theirs.dtype == value.dtype and np.array_equal(theirs, value):
                    for ref in self.consumers.pop(new, []):
                        for k, name in enumerate(ref.proto.input):
                            if name == new:
                                ref.proto.input[k] = other
                        self.consumers[other].append(ref)
                    self._remove_initializer(new)
                    merged += 1
                    break
        return merged

    def _remove_initializer(self, name: str) -> None:
        graph = self.model.graph
        graph.initializer.remove(self.initializers.pop(name))
        for info in [i for i in graph.input if i.name == name]:   # IR 3 lists it as an input
            graph.input.remove(info)
        self._const_cache.pop(name, None)
        self.copies.pop(name, None)

    def add_initializer(self, name: str, value: np.ndarray) -> onnx.TensorProto:
        """Append an initializer and index the stored message (``append`` would copy it); a
        big one joins the model's weight files when it has them."""
        tensor = self.model.graph.initializer.add()
        tensor.CopyFrom(new_tensor(name, value, self.store, self.pack))
        self.initializers[name] = tensor
        return tensor

    def _declare(self, name: str, value: np.ndarray) -> None:
        """Keep a declared input/value_info shape of a rewritten constant in step with it."""
        for info in list(self.model.graph.input) + list(self.model.graph.value_info):
            if info.name == name and info.type.tensor_type.HasField("shape"):
                dims = info.type.tensor_type.shape.dim
                del dims[:]
                for d in value.shape:
                    dims.add().dim_value = int(d)

    def _fresh_name(self, base: str) -> str:
        return fresh_name(base, set(self.initializers) | set(self.producer)
                          | set(self.graph_inputs))

    # -- shapes --------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[Dim, ...] | None:
        if name in self.shapes:
            return self.shapes[name]
        value = self.const(name)
        return tuple(value.shape) if value is not None else None

    def rank(self, name: str) -> int | None:
        shape = self.shape(name)
        return len(shape) if shape is not None else None


_SAME_ELEMENTS = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity")


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``… : the first not in ``taken``, which it joins."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def skeleton(model: onnx.ModelProto, keep_elements: int = 4096) -> onnx.ModelProto:
    """The model without large weight data, for fast shape inference.

    Big initializers become graph inputs of the same type and shape, so inference sees their
    shapes without serializing their bytes; small ones (shape constants) stay for data
    propagation. A 1-D one of millions of elements gets a named length instead
    (``_long_vectors`` puts its real one back): ONNX's data propagation spends some 70 bytes per
    element of a 1-D input, which it takes for a possible shape.
    """
    light = onnx.ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    inputs = {i.name for i in src.input}
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    long = _long_vectors(model)
    for t in src.initializer:
        if int(np.prod(t.dims, dtype=np.int64)) <= keep_elements:
            g.initializer.append(t)
        elif t.name not in inputs:
            dims = list(t.dims) if t.name not in long else [f"{t.name}__length"]
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, dims))
    return light


def _long_vectors(model: onnx.ModelProto) -> dict[str, tuple[int]]:
    """1-D initializers too long for ONNX's data propagation, with their shapes."""
    return {t.name: tuple(t.dims) for t in model.graph.initializer
            if len(t.dims) == 1 and t.dims[0] > _LONG_VECTOR}


def infer_static_shapes(model: onnx.ModelProto, dtypes: dict[str, int] | None = None
                        ) -> dict[str, tuple[Dim, ...]]:
    """Shapes of every value: ints, symbol names, or None where nothing is known (element
    types go into ``dtypes`` when given).

    ONNX shape inference runs first; where it leaves dims open (shapes computed at run time
    from Shape → Gather → Div → Concat, as exporters write them) or values unshaped (after
    ONNX Runtime's contrib ops), ONNX Runtime's symbolic shape inference fills them in.
    """
    light = skeleton(model)
    with_stand_ins(light)
    with_computable_products(light)
    inferred = _onnx_inference(light)
    shapes = _read_shapes(inferred)
    shapes.update(_long_vectors(model))
    if dtypes is not None:
        graph = inferred.graph
        dtypes.update({info.name: info.type.tensor_type.elem_type for info in
                       list(graph.input) + list(graph.value_info) + list(graph.output)
                       if info.type.tensor_type.elem_type})
    unshaped = any(name and name not in shapes for node in model.graph.node
                   for name in node.output)     # after ops ONNX does not know (contrib ops)
    if unshaped or any(_open(d) for dims in shapes.values() for d in dims):
        symbolic = _symbolic_shapes(light)
        for name, dims in symbolic.items():
            known = shapes.get(name)
            if known is None or len(known) != len(dims):
                shapes[name] = dims
            else:
                shapes[name] = tuple(b if _open(a) and not _open(b) else a
                                     for a, b in zip(known, dims))
    return shapes


def _symbolic_shapes(light: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    """ONNX Runtime's symbolic shape inference, best effort: what it found, also where it
    could not finish. Its ``infer_shapes`` would then raise and first save the model as
    ``sym_shape_infer_temp.onnx`` (with a data file) in the current folder, the user's; the
    same steps are run here without that."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
        # It prints its doubts ("Unable to determine if ...") to stdout: keep them out of
        # the CLI's output.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            inference._preprocess(light)
            while inference.run_:
                inference._infer_impl()
            inference._update_output_from_vi()
        return _read_shapes(inference.out_mp_)
    except Exception:  # noqa: BLE001 - best effort: keep what ONNX inference found
        return {}


def _open(dim: Dim) -> bool:
    return dim is None or (isinstance(dim, str) and dim.startswith("unk__"))


def _onnx_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False,
                                                 data_prop=True)
    except Exception:  # noqa: BLE001 - a model shape inference cannot handle still prunes
        return model


def _read_shapes(model: onnx.ModelProto) -> dict[str, tuple[Dim, ...]]:
    shapes: dict[str, tuple[Dim, ...]] = {}
    graph = model.graph
    for info in list(graph.input) + list(graph.value_info) + list(graph.output):
        tt = info.type.tensor_type
        if not tt.HasField("shape"):
            continue
        shapes[info.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in tt.shape.dim)
    return shapes


def _default_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 1


def _constant_node_value(node: onnx.NodeProto, store: WeightStore | None = None
                         ) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return tensor_value(a.t, store)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
    return None


def _run_single_node(node: onnx.NodeProto, opsets, feeds: dict[str, np.ndarray]) -> list:
    """Evaluate one node on constant inputs with ONNX Runtime (the model's own opset)."""
    import onnxruntime as ort

    graph = onnx.helper.make_graph(
        [node], "fold",
        [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                            list(v.shape)) for k, v in feeds.items()],
        [onnx.ValueInfoProto(name=o) for o in node.output if o])
    model = onnx.helper.make_model(graph, opset_imports=list(opsets))
    model.ir_version = 8
    opts = ort.SessionOptions()
    opts.log_severity_level = 4
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _constant_of_shape(ref: NodeRef, shape: np.ndarray | None) -> np.ndarray | None:
    """Weights filled from a constant shape (structure-only models are built this way)."""
    if shape is None:
        return None
    fill = ref.attr("value")
    fill = numpy_helper.to_array(fill) if fill is not None else np.zeros(1, dtype=np.float32)
    return np.full(tuple(int(d) for d in shape.ravel()), fill.ravel()[0], dtype=fill.dtype)


def _all_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus outer-scope names read inside subgraph attributes."""
    names = list(node.input)
    for g in subgraphs(node):
        names.extend(outer_names(g))
    return names


def outer_names(graph: onnx.GraphProto) -> list[str]:
    """Names ``graph`` (or a graph nested in it) reads from an enclosing scope."""
    local = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    for n in graph.node:
        local.update(n.output)
    outer = []
    for n in graph.node:
        for name in _all_inputs(n):
            if name and name not in local:
                outer.append(name)
    for o in graph.output:
        if o.name not in local:
            outer.append(o.name)
    return outer


def _dequantize_axis(ref: NodeRef, rank: int) -> int:
    """The axis a DequantizeLinear's per-axis scale runs along (attribute ``axis``, default 1)."""
    axis = int(ref.attr("axis", 1))
    return axis + rank if axis < 0 else axis
