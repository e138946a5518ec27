"""Apply a plan to a private copy of the model.

``mode="prune"`` slices every declared constant and lets each rule update its attributes and
shape constants. ``mode="mask"`` builds the oracle for verification: the original model in which
the weights that *read* removed channels are zeroed, so it computes exactly what the pruned model
should compute. Ops that read *across* the channels (a LayerNorm or a ReduceMean over the
hidden size) get their rule's ``mask_rewrite``: they are rewritten to read only the kept
channels, so the oracle holds for hidden-size pruning too.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx

from ..graph import ModelGraph
from ..groups import Analysis, ParamUse
from ..groups.masks import RewriteError, all_of, kept_pieces, project
from ..rules import rule_for
from ..io.orphans import drop_orphaned_constants, read_names


# a masked weight from this size on, held in a weight file, is read through a Where node
# rather than written zeroed (``_mask_in_place``)
IN_PLACE_BYTES = 1 << 20


class RewriteContext:
    """What rules see during ``rewrite``: the copy's graph, keep masks, their notes."""

    def __init__(self, model: onnx.ModelProto, analysis: Analysis, removed_atom: np.ndarray,
                 mode: str):
        self.graph = ModelGraph(model, infer_shapes=False)
        self.analysis = analysis
        self.removed_atom = removed_atom
        self.mode = mode
        self._before: dict[int, list[onnx.NodeProto]] = defaultdict(list)
        self._dropped: set[int] = set()

    def keep(self, name: str) -> np.ndarray:
        return ~self.removed_atom[self.analysis.maps[name].labels]

    def axis_keep(self, name: str) -> dict[int, np.ndarray]:
        cmap = self.analysis.maps[name]
        return dict(zip(cmap.axes, project(self.keep(name))))

    def note_of(self, node) -> dict:
        return self.analysis.notes[node.index]

    def const(self, name: str):
        return self.graph.const(name)

    # -- building the masked oracle (mask_rewrite hooks) -------------------------------------
    def add_const(self, value: np.ndarray, hint: str) -> str:
        """A new initializer; returns its name."""
        name = self.graph._fresh_name(hint)
        self.graph.add_initializer(name, value)
        return name

    def add_node(self, before, op: str, inputs: list[str], hint: str, output: str = "",
                 **attrs) -> str:
        """A node placed just before ``before`` (so the order stays topological), writing
        ``output`` or a fresh name; returns that name. Nodes enter the model in :meth:`finish`."""
        out = output or self.graph._fresh_name(hint)
        self.graph.producer[out] = before  # reserves the name
        self._before[before.index].append(
            onnx.helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def drop_node(self, node) -> None:
        """Remove ``node`` (its outputs are now written by nodes from :meth:`add_node`)."""
        self._dropped.add(node.index)

    def finish(self) -> None:
        if not self._before and not self._dropped:
            return
        nodes = []
        for ref in self.graph.nodes:
            nodes.extend(self._before.get(ref.index, []))
            if ref.index not in self._dropped:
                nodes.append(ref.proto)
        copies = [onnx.NodeProto() for _ in nodes]
        for copy, node in zip(copies, nodes):
            copy.CopyFrom(node)
        del self.graph.model.graph.node[:]
        self.graph.model.graph.node.extend(copies)

    def add_const_input(self, node, index: int, value: np.ndarray, suffix: str) -> None:
        name = self.graph._fresh_name(f"{node.label}_{suffix}")
        self.graph.add_initializer(name, value)
        while len(node.proto.input) < index:
            node.proto.input.append("")
        node.proto.input.insert(index, name)
        self.graph.consumers[name].append(node)


def apply_plan(model: onnx.ModelProto, analysis: Analysis, removed_atom: np.ndarray,
               mode: str = "prune") -> onnx.ModelProto:
    if mode not in ("prune", "mask"):
        raise ValueError(mode)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    ctx = RewriteContext(out, analysis, removed_atom, mode)
    where_allowed = ctx.graph.opset >= 9      # Where came with opset 9
    uses: dict[tuple[int, int], list[ParamUse]] = defaultdict(list)
    for use in analysis.params:
        uses[(use.node, use.input_index)].append(use)
    for (index, input_index), group in uses.items():
        node = ctx.graph.nodes[index]
        value = ctx.graph.const(node.input(input_index))
        if mode == "prune":
            keep = _kept_along_axes(value, group, removed_atom)
            if keep is not None:
                ctx.graph.slice_const(node, input_index, keep)
        else:
            pieces = kept_pieces(value, group, removed_atom)
            if pieces is None:
                continue
            zero = _zero_point(ctx.graph, node, input_index, group)
            if (zero is None and value.nbytes >= IN_PLACE_BYTES and where_allowed
                    and ctx.graph.in_weight_file(node.input(input_index))):
                _mask_in_place(ctx, node, input_index, value.dtype, pieces)
            else:
                ctx.graph.mask_const(node, input_index, all_of(pieces, value.shape), zero)
    if mode == "prune":
        for index in analysis.notes:
            node = ctx.graph.nodes[index]
            rule_for(node).rewrite(node, ctx)
        _resize_io(out, changed_io(analysis, removed_atom))
        ctx.graph.merge_identical_copies()
        # what the analyzed model read (compensation may have replaced a computed bias)
        drop_orphaned_constants(out, read_names(model.graph)
                                | read_names(analysis.graph.model.graph))
        _refresh_value_info(out, analysis, removed_atom)
    else:
        for index in analysis.notes:
            node = ctx.graph.nodes[index]
            hook = getattr(rule_for(node), "mask_rewrite", None)
            if hook is not None:
                hook(node, ctx)
        ctx.finish()
    return out


def _mask_in_place(ctx: RewriteContext, node, input_index: int, dtype, pieces) -> None:
    """The node reads the weight through ``Where(kept, weight, 0)``: the masked original of a
    model whose weights stay in files computes the same, from the original's own files, and
    none of its weights is written (for a 1B decoder, gigabytes the disk need not take).
    ``kept`` is the AND of the small per-use pieces, so nothing of the weight's size is
    stored."""
    kept = ctx.add_const(pieces[0], f"{node.label}_kept")
    for piece in pieces[1:]:
        kept = ctx.add_node(node, "And", [kept, ctx.add_const(piece, f"{node.label}_kept")],
                            f"{node.label}_kept")
    zero = ctx.add_const(np.zeros((), dtype=dtype), f"{node.label}_zero")
    name = node.input(input_index)
    node.proto.input[input_index] = ctx.add_node(node, "Where", [kept, name, zero],
                                                 f"{name}_masked")


def _zero_point(graph: ModelGraph, node, input_index: int, uses) -> np.ndarray | None:
    """What stands for 0 in an integer weight read with a zero point (see ``ParamUse.zero``),
    shaped to broadcast against the weight; None for other constants."""
    spec = next((u.zero for u in uses if u.zero is not None), None)
    if spec is None:
        return None
    index, axis = spec
    weight = graph.const(node.input(input_index))
    zero = graph.const(node.input(index)) if node.input(index) else None
    if zero is None:
        return np.zeros((), dtype=weight.dtype)
    if zero.size == 1:
        return zero.reshape(())
    shape = [1] * weight.ndim
    shape[axis] = zero.size
    return zero.reshape(shape)


def changed_io(analysis: Analysis, removed_atom: np.ndarray) -> dict[str, dict]:
    """Graph inputs and outputs that lose positions: {name: {axis: kept positions}}, from
    the ``io`` a rule notes, {name: (axes, labels)}, where axes of a graph input or output
    follow channels (a KV cache's heads: ``rules.gqa``, ``rules.concat_split``)."""
    out = {}
    for note in analysis.notes.values():
        for name, (axes, labels) in note.get("io", {}).items():
            keeps = dict(zip(axes, project(~removed_atom[labels])))
            changed = {axis: keep for axis, keep in keeps.items() if not keep.all()}
            if changed:
                out[name] = changed
    return out


def _resize_io(model: onnx.ModelProto, changed: dict[str, dict]) -> None:
    """Give the resized graph inputs and outputs their new sizes (where they are numbers)."""
    for info in list(model.graph.input) + list(model.graph.output):
        for axis, keep in changed.get(info.name, {}).items():
            dim = info.type.tensor_type.shape.dim[axis]
            if dim.HasField("dim_value"):
                dim.dim_value = int(keep.sum())


def _kept_along_axes(value, uses, removed_atom) -> dict[int, np.ndarray] | None:
    """What each sliced axis of ``value`` keeps (what every use keeps), or None when nothing
    goes."""
    keep_axes: dict[int, np.ndarray] = {}
    for use in uses:
        vectors = project(~removed_atom[use.labels])
        for param_axis, label_axis in use.axes.items():
            vec = vectors[label_axis]
            if vec.size != value.shape[param_axis]:
                raise RewriteError(f"constant axis {param_axis} has {value.shape[param_axis]} "
                                   f"entries but {vec.size} channel labels")
            keep_axes[param_axis] = keep_axes.get(param_axis, vec) & vec
    if all(v.all() for v in keep_axes.values()):
        return None
    if not all(v.any() for v in keep_axes.values()):
        raise RewriteError("a constant would lose every channel")
    return keep_axes


def _refresh_value_info(model: onnx.ModelProto, analysis: Analysis,
                        removed_atom: np.ndarray) -> None:
    """Stale intermediate shapes break shape inference, so the entries are inferred again;
    but an entry the new shapes agree with stays as the exporter wrote it (symbolic dims and
    all): ONNX Runtime optimizes by them, and a model that loses nothing must come out as it
    went in. No entry is added that the model did not have."""
    original = list(model.graph.value_info)
    if not original:
        return
    del model.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        fresh = {info.name: info for info in inferred.graph.value_info}
    except Exception:  # noqa: BLE001 - keep what the plan cannot have changed
        fresh = {}
    changed = {name for name, cmap in analysis.maps.items()
               if removed_atom[cmap.labels].any()}
    for info in original:
        new = fresh.get(info.name)
        if info.name in changed:        # its channels went: only what inference says now
            if new is not None:
                model.graph.value_info.append(new)
        elif new is None:
            if fresh:
                model.graph.value_info.append(info)
        else:
            model.graph.value_info.append(info if _agree(info, new) else new)


def _agree(old: onnx.ValueInfoProto, new: onnx.ValueInfoProto) -> bool:
    """Same element type and rank, and no dim that both know differs."""
    a, b = old.type.tensor_type, new.type.tensor_type
    if a.elem_type != b.elem_type or a.HasField("shape") != b.HasField("shape"):
        return False
    if not a.HasField("shape"):
        return True
    if len(a.shape.dim) != len(b.shape.dim):
        return False
    return all(not (x.HasField("dim_value") and y.HasField("dim_value"))
               or x.dim_value == y.dim_value for x, y in zip(a.shape.dim, b.shape.dim))
