"""LSTM, GRU and RNN: they consume their input features and create hidden units.

A hidden unit owns one row in every gate block of W and R (4 gates for LSTM, 3 for GRU, 1 for
RNN), one entry in each block of B (input and recurrent biases: twice the gates), its peephole
entries (LSTM), its entries in the initial states, and one column of R: the recurrence reads
every unit. Y, Y_h and Y_c carry the units on their last axis, in either ``layout``. A
bidirectional layer's two directions share that axis of Y, so unit j goes from both.

Why the pruned op equals the masked original: masking zeroes the column of R that reads a
removed unit (and every later reader of it), so the unit no longer reaches any kept unit or
anything downstream; the kept units then compute exactly what the smaller op computes.

Initial states are often made at run time, as exporters write ``zeros(layers × directions,
batch, hidden)``: a ``ConstantOfShape`` of zeros, sliced per layer. A state that is provably
zero is dropped from the pruned op instead of resized: ONNX defines a missing initial state as
zeros. Any other state or peephole that is not a constant cannot be sliced, so the units stay
(the input features can still go).
"""

from __future__ import annotations

import numpy as np
from onnx import numpy_helper

from ..graph import ChannelMap
from .base import Rule, elements, known, register

# ops that keep a tensor of zeros all zeros (an initial state seen through them is still zero)
ZERO_PRESERVING = {"Slice", "Identity", "Squeeze", "Unsqueeze", "Reshape", "Expand", "Cast",
                   "Transpose"}
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# optional inputs sliced per unit: (input index, blocks of units along the sliced axis, axis)
PER_UNIT = {"LSTM": ((3, 8, 1), (5, 1, 2), (6, 1, 2), (7, 3, 1)),
            "GRU": ((3, 6, 1), (5, 1, 2)),
            "RNN": ((3, 2, 1), (5, 1, 2))}


@register("LSTM", "GRU", "RNN")
class RecurrentRule(Rule):
    def propagate(self, node, ctx):
        gates = GATES[node.op]
        w, r = ctx.const(node.input(1)), ctx.const(node.input(2))
        if w is None or r is None or w.ndim != 3 or r.ndim != 3:
            return ctx.barrier(node, "W and R are not constants")
        x = ctx.map(node.input(0))
        if x is not None and x.axes != (2,):
            return ctx.barrier(node, "input is tracked on an axis other than the features")
        units = ctx.new_map(node, 4, (3,), (r.shape[2],))
        if x is not None:
            ctx.param(node, 1, {2: 0}, x.labels, consume=True)
        zeros = [i for i in (5, 6) if node.input(i) and ctx.const(node.input(i)) is None
                 and _is_zero_fill(ctx, node.input(i))]     # dropped when pruned
        fixed = [i for i, _, _ in PER_UNIT[node.op]
                 if node.input(i) and ctx.const(node.input(i)) is None and i not in zeros]
        if fixed:
            ctx.freeze(units, f"{node.label} ({node.op}): input {fixed[0]} is not a constant")
        ctx.param(node, 1, {1: 0}, np.tile(units.labels, gates))
        ctx.param(node, 2, {1: 0}, np.tile(units.labels, gates))
        ctx.param(node, 2, {2: 0}, units.labels, consume=True)
        for index, blocks, axis in PER_UNIT[node.op]:
            if node.input(index) and index not in fixed and index not in zeros:
                ctx.param(node, index, {axis: 0}, np.tile(units.labels, blocks), score=False)
        outputs = list(node.proto.output) + ["", "", ""]
        ctx.set_map(outputs[0], units)
        for name in outputs[1:3]:       # Y_h, Y_c: [directions, batch, units] in either layout
            ctx.set_map(name, ChannelMap(3, (2,), units.labels))
        ctx.note(node, units=units.labels, zeros=zeros)

    def macs(self, node, shape):
        """Every step, for every sequence in the batch, each direction multiplies its input by
        W and its previous hidden state by R: steps × batch × (|W| + |R|) in either layout."""
        x, w, r = (shape(node.input(k)) for k in range(3))
        if not (known(x) and known(w) and known(r)):
            return None
        return elements(x[:2]) * (elements(w) + elements(r))

    def rewrite(self, node, ctx):
        note = ctx.note_of(node)
        kept = int((~ctx.removed_atom[note["units"]]).sum())
        node.set_attr("hidden_size", kept)
        for index in note["zeros"]:
            node.proto.input[index] = ""     # a missing initial state is zeros


def _is_zero_fill(ctx, name: str) -> bool:
    """Is ``name`` all zeros whatever the input: a ConstantOfShape of 0 (its default), seen
    through ops that only move, cut or repeat values?"""
    producer = ctx.graph.producer.get(name)
    while producer is not None and producer.op in ZERO_PRESERVING:
        producer = ctx.graph.producer.get(producer.input(0))
    if producer is None or producer.op != "ConstantOfShape":
        return False
    value = producer.attr("value")
    return value is None or not np.any(numpy_helper.to_array(value))
