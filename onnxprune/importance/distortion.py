"""``distortion``: how much the outputs move when one component alone is removed (LD-Pruner's
task-agnostic output distortion, per component rather than per group as in ``sensitivity``).

Score = Σ_batches ‖y_masked − y‖² / Σ_batches ‖y‖² on the calibration batches, where
``y_masked`` is the mask-mode oracle with that single component removed. There is one
measurement per component (thousands in a ResNet), so the model is not rebuilt for each one:
:class:`MaskingSession` holds one ONNX Runtime session of a copy of the model in which every
constant that masking edits is an initializer that is also a graph input (IR ≥ 4: the
initializer is then only a default, so ORT neither folds it nor fuses it away, and a feed
overrides it). Removing a component is then a feed of those few arrays with its slices
zeroed exactly as ``apply_plan(..., "mask")`` zeroes them.

Masking a hidden-size component rewrites ops (a norm's ``mask_rewrite`` hook) instead of
zeroing constants; such groups get their l2 magnitude instead, which is on another scale.
That is fine for uniform allocation (each group is ranked alone) but mixes scales under a
global ranking, so the fallback is reported in the notes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import UserError
from ..graph.model_graph import fresh_name
from ..groups import Analysis, ParamUse, masked_value
from ..parallel import Failed, InProcess
from ..rules import rule_for
from ..runtime import output_distortion, session
from .base import ScoringContext, criterion, score

Key = tuple[int, int]          # (node index, input index) of a constant that masking edits


@dataclass
class Override:
    """A constant of the model exposed as a feedable graph input."""

    name: str                  # the graph input (and initializer) that carries it
    value: np.ndarray          # its original value
    uses: list[ParamUse]       # the members that zero slices of it


def _masked_keys(analysis: Analysis) -> dict[Key, list[ParamUse]]:
    """The constants that mask mode may zero: those read by at least one consuming member."""
    uses: dict[Key, list[ParamUse]] = defaultdict(list)
    for use in analysis.params:
        uses[(use.node, use.input_index)].append(use)
    return {k: u for k, u in uses.items() if any(use.consume for use in u)}


def overridable_model(analysis: Analysis) -> tuple[onnx.ModelProto, dict[Key, Override]]:
    """A copy of the analysed model in which every constant that masking edits is an
    initializer declared as a graph input. A constant that is a Constant node, a folded
    subgraph, or shared with another reader gets a private initializer first, so overriding
    it changes that one reader, as ``set_const`` does in mask mode."""
    graph = analysis.graph
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    model.ir_version = max(model.ir_version, 4)      # IR 3 initializers cannot be overridden
    declared = {i.name for i in model.graph.input}
    taken = declared | set(graph.initializers) | set(graph.producer)
    overrides: dict[Key, Override] = {}
    for key, uses in _masked_keys(analysis).items():
        node = graph.nodes[key[0]]
        name = node.input(key[1])
        value = graph.const(name)
        if value is None:
            continue
        if not _private_initializer(graph, node, name):
            name = fresh_name(f"{name}_override", taken)
            model.graph.initializer.append(numpy_helper.from_array(value, name))
            model.graph.node[key[0]].input[key[1]] = name
        if name not in declared:
            model.graph.input.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(value.dtype), list(value.shape)))
            declared.add(name)
        overrides[key] = Override(name, value, uses)
    return model, overrides


def _private_initializer(graph, node, name: str) -> bool:
    """An initializer that only this node reads, once: safe to expose in place."""
    readers = graph.consumers.get(name, [])
    return (name in graph.initializers and name not in graph.graph_outputs
            and [r.index for r in readers] == [node.index]
            and list(node.proto.input).count(name) == 1)


class MaskingSession:
    """One ORT session that runs the model with any set of components masked, by feeding
    the edited constants instead of building a masked model."""

    def __init__(self, analysis: Analysis, roots: np.ndarray):
        self.roots = roots
        self.model, self.overrides = overridable_model(analysis)
        self.session = session(self.model)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.keys_of: dict[int, set[Key]] = defaultdict(set)   # component → constants it reads
        for key, override in self.overrides.items():
            for use in override.uses:
                if use.consume:
                    for comp in np.unique(roots[use.labels]):
                        self.keys_of[int(comp)].add(key)

    def __getstate__(self) -> dict:
        """What a worker receives: everything but the ONNX Runtime session, which it opens
        anew on arrival (``__setstate__``)."""
        return {k: v for k, v in self.__dict__.items() if k != "session"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.session = session(self.model)

    def feeds(self, removed_atom: np.ndarray, keys=None) -> dict[str, np.ndarray]:
        """The constants that change when ``removed_atom`` is masked, masked as mode "mask"
        masks them (only ``keys`` are looked at when given)."""
        out = {}
        for key in self.overrides if keys is None else keys:
            override = self.overrides[key]
            new = masked_value(override.value, override.uses, removed_atom)
            if new is not None:
                out[override.name] = new
        return out

    def run(self, batches, removed_atom: np.ndarray | None = None, keys=None) -> list[dict]:
        """Outputs on every batch, with ``removed_atom`` masked (dense when None)."""
        extra = {} if removed_atom is None else self.feeds(removed_atom, keys)
        return [dict(zip(self.outputs, self.session.run(self.outputs, {**feeds, **extra})))
                for feeds in batches]

    def component_distortion(self, comp: int, batches, dense, weights=None) -> float:
        removed = self.roots == comp
        got = self.run(batches, removed, self.keys_of.get(comp, ()))
        return output_distortion(got, dense, weights)


def rewritten_components(analysis: Analysis, roots: np.ndarray) -> set[int]:
    """Components whose masking rewrites ops (a ``mask_rewrite`` hook on a hidden-size
    norm or reduction) rather than only zeroing constants: overrides cannot express it."""
    atoms = set(analysis.hidden_atoms)
    for index, note in analysis.notes.items():
        node = analysis.graph.nodes[index]
        cmap = analysis.map(node.input(0))
        if (note.get("hidden") and getattr(rule_for(node), "mask_rewrite", None)
                and cmap is not None):
            atoms.update(cmap.labels.ravel().tolist())
    return {int(r) for r in roots[sorted(atoms)]} if atoms else set()


@criterion("distortion", needs="calibration")
def distortion(ctx: ScoringContext) -> np.ndarray:
    """Output distortion ‖y_masked − y‖²/‖y‖² when the component alone is masked."""
    batches = getattr(ctx.calibration, "batches", None)
    if not batches:
        raise UserError("the distortion criterion needs calibration batches")
    weights = getattr(ctx.calibration, "batch_weights", None)
    groups = [g for g in ctx.groups if g.prunable and g.size > 1]
    rewritten = rewritten_components(ctx.analysis, ctx.roots)
    fallback = [g for g in groups if g.kind == "hidden" or rewritten & set(g.components.tolist())]
    scores = np.zeros(len(ctx.roots), dtype=np.float64)
    if fallback:
        l2 = score("l2", ctx)
        for g in fallback:
            scores[g.components] = l2[g.components]
        ctx.notes.append(f"distortion: {len(fallback)} group(s) need a structural mask "
                         "(hidden size) and were scored by l2 instead")
    measured = [g for g in groups if g.id not in {f.id for f in fallback}]
    if measured:
        masking = MaskingSession(ctx.analysis, ctx.roots)
        dense = masking.run(batches)
        components = [c for g in measured for c in g.components.tolist()]
        values = (ctx.executor or InProcess()).map(
            (masking, batches, dense, weights), _component_distortion, components,
            progress=ctx.progress, description="distortion: masking each component")
        for comp, value in zip(components, values):
            if isinstance(value, Failed):
                raise UserError(f"distortion: masking component {comp} failed twice: "
                                f"{value.error}")
            scores[comp] = value
    return scores


def _component_distortion(state, comp: int) -> float:
    """One component's distortion, where ``state`` is what every worker received once."""
    masking, batches, dense, weights = state
    return masking.component_distortion(comp, batches, dense, weights)
