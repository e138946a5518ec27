"""What a per-op rule is, and the registry that maps op types to rules.

A rule is everything the tool knows about one op type. Two methods move channels:

* ``propagate(node, ctx)`` runs once per node in topological order. It reads the
  :class:`~onnxprune.graph.ChannelMap` of the node's inputs and sets those of its outputs, draws
  new atoms where the op creates channels from weights, unifies atoms that must be pruned
  together, and declares each constant it will slice with ``ctx.param``. A configuration it
  does not understand ends in ``ctx.barrier(node, reason)``: the channels reaching the node are
  frozen, which makes the tool prune less rather than guess.
* ``rewrite(node, ctx)`` runs after the plan is fixed, only for nodes whose ``propagate``
  called ``ctx.note``. Declared constants are sliced for it; ``rewrite`` only updates what is
  not a sliced constant: attributes such as ``group``, split sizes, shape constants.
  ``mask_rewrite(node, ctx)``, where defined, rewrites the op in the masked original (a norm
  that must average over the kept channels only).

The other layers ask a rule, never an op name, for the rest:

* ``macs(node, shape)``: multiply-accumulates at the shapes ``shape(name)`` gives (0 by
  default). The cost counter and the planned cost of a plan both call it.
* ``linear_view(node, graph)``: the layer as y = W·x + b over its input channels
  (:class:`LinearView`), for criteria that read what flows into linear layers and for
  compensation; None for ops that do not read channels linearly.
* ``timed_widths`` / ``widths_after`` / ``narrowed``: how the per-layer latency table builds a
  one-node copy of the op at other channel widths (see ``runtime.layer_table``).
* ``streams`` / ``fuses_after`` / ``fuses_before``: an op without weights whose time follows the tensors it reads
  (activations, pools, concats, norms): the latency table times it alone at the plan's shapes,
  unless ONNX Runtime folds it into the op before or after it (Conv+Relu, x·sigmoid(x)).
* ``fully_connected``: the op makes features that the next such op reads (an MLP's neurons).
* ``scale_input``: the input holding a per-channel scale γ (the BN-scale criterion).
* ``param_value(node, i, graph)``: the float value a sliced constant stands for (an integer
  weight dequantized), which magnitude criteria weigh.
* ``dim_sizes(node, graph)``: what the op implies for named input dims (a cache's head
  size, a mask as long as past plus new tokens), for generated check inputs.

To support a new op, add one small rule class in the module of its family and decorate it with
``@register("OpType", ...)``: no other part of the tool needs to change.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

RULES: dict[str, "Rule"] = {}


@dataclass
class LinearView:
    """A layer that reads its input channels linearly, seen as W [out, in, k] (k: kernel
    positions, 1 for a matrix) with ``groups`` blocks: output o reads input channels of block
    o // (out / groups) only, so W holds ``in / groups`` columns per output.

    ``write`` turns a [out, in/groups, k] weight back into the op's own layout. ``bias`` is
    (node index, input index, sign) of the constant that absorbs a correction of the outputs.
    ``window`` (a 2-D conv's kernel, strides, pads, dilations) says how inputs unfold into
    patches. ``exact`` is False where the view is a per-channel summary that OBS cannot re-fit
    (a transposed conv spreads each input over overlapping outputs). ``transposed``, for such
    a 2-D transposed conv: (kernel, strides, pads, dilations) of the plain conv that computes
    it on the input with ``strides − 1`` zeros inserted between pixels, padded by ``pads``
    (begin and end per axis), with stride 1 and the kernel flipped (``weight[:, :, ::-1]``);
    a regression on those patches re-fits it (sequential reconstruction).

    Integer layers (QLinearConv, ConvInteger, ...) are seen as the floats they stand for:
    ``weight`` dequantized, ``write`` quantizing back with the layer's own scales.
    ``weight_input`` says which input holds the weight; ``reads`` names the float tensor the
    layer's input was quantized from at run time (dynamic quantization), whose statistics
    stand for its input; ``input_dequantize`` (scale, zero point) says the input is stored
    integers x_q that stand for (x_q − zero)·scale, as statistics must see them;
    ``bias_unit`` (one per output) is what one step of an integer bias is worth.

    ``stored`` is the weight in that layout as the rule found it: a view of the model's
    (memory-mapped) constant in its own dtype where one will do. ``weight``, the float64 copy
    criteria and compensation compute with, is made on first use only: finding which layers
    read which channels must not copy a billion-parameter model's weights."""

    stored: np.ndarray
    write: Callable[[np.ndarray], np.ndarray] | None
    groups: int = 1
    bias: tuple[int, int, float] | None = None
    window: tuple | None = None
    exact: bool = True
    transposed: tuple | None = None
    weight_input: int = 1
    reads: str | None = None
    input_dequantize: tuple[float, float] | None = None
    bias_unit: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.stored.shape

    @functools.cached_property
    def weight(self) -> np.ndarray:
        return np.array(self.stored, dtype=np.float64)      # a copy: callers may edit it


@dataclass
class TimedLayer:
    """What a one-node copy of a layer needs for the latency table: the op, its attributes,
    the shapes around it and its dense widths."""

    op: str
    attrs: tuple
    x_shape: tuple[int, ...]
    w_shape: tuple[int, ...]
    b_shape: tuple[int, ...] | None
    elem_type: int
    c_in: int
    c_out: int

    def attr(self, name: str, default=0):
        from onnx import helper

        return next((helper.get_attribute_value(a) for a in self.attrs if a.name == name),
                    default)

    def bias_at(self, c_out: int) -> list[int] | None:
        """The bias shape when the layer makes ``c_out`` outputs."""
        b = list(self.b_shape) if self.b_shape is not None else None
        if b and b[-1] == self.c_out:
            b[-1] = c_out
        return b


class Rule:
    """Base class: the default rewrite changes nothing beyond the declared constants.

    ``follows_tiled``: the rule understands maps with tiled axes (heads merged with the batch,
    see ``ChannelMap``); for every other rule such an input is a barrier.
    """

    follows_tiled = False
    fully_connected = False
    opaque = False          # the rule only stops channels (a fused op not supported yet)
    scale_input: int | None = None
    streams = False         # its time follows what it reads: the latency table times it alone

    def propagate(self, node, ctx) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def rewrite(self, node, ctx) -> None:
        return None

    def macs(self, node, shape) -> int | None:
        """Multiply-accumulates of ``node`` when ``shape(name)`` gives each value's dims (None
        where unknown); None when they cannot be counted."""
        return 0

    def linear_view(self, node, graph) -> LinearView | None:
        return None

    def dim_sizes(self, node, graph) -> dict[str, int | str]:
        """Sizes the op needs for named dims of the graph inputs, so that generated inputs
        run: a number, or arithmetic over other names ("past + new"). Empty by default."""
        return {}

    def param_value(self, node, input_index: int, graph) -> np.ndarray | None:
        """The value the constant at ``input_index`` stands for, as criteria should weigh it:
        the constant itself, except where the op reads stored integers with a scale and a
        zero point (the rule then dequantizes them)."""
        return graph.const(node.input(input_index))

    def timed_widths(self, node, x_shape, w_shape) -> tuple[int, int] | None:
        """Dense (c_in, c_out) of a layer the latency table can time; None for the others."""
        return None

    def widths_after(self, layer: TimedLayer, weight_shape) -> tuple[int, int]:
        raise NotImplementedError

    def narrowed(self, layer: TimedLayer, c_in: int, c_out: int):
        """(input shape, weight shape, bias shape, attributes) at (c_in, c_out)."""
        raise NotImplementedError

    def fuses_after(self, node, producer: str, constant_inputs: set[int]) -> bool:
        """Does ONNX Runtime fold this node into the ``producer`` op that alone reads its
        input 0 (``constant_inputs``: which of its inputs are constants)? Such a node costs
        nothing of its own, and the latency table leaves it out."""
        return False

    def fuses_before(self, node, consumer: str, shares_input: bool) -> bool:
        """Does ONNX Runtime fold this node into the ``consumer`` op that alone reads its
        output (``shares_input``: the consumer also reads this node's input 0)?"""
        return False


class InputRule(Rule):
    """A rule for ops whose channels arrive through input 0: nothing moves when that input
    carries none, so ``follow(node, ctx, x)`` runs only with its ChannelMap ``x``."""

    def propagate(self, node, ctx) -> None:
        x = ctx.map(node.input(0))
        if x is not None:
            self.follow(node, ctx, x)

    def follow(self, node, ctx, x) -> None:  # pragma: no cover - abstract
        raise NotImplementedError


def register(*op_types: str) -> Callable[[type[Rule]], type[Rule]]:
    """Class decorator: one instance of the rule serves every listed op type."""

    def wrap(cls: type[Rule]) -> type[Rule]:
        instance = cls()
        for op in op_types:
            if op in RULES:
                raise ValueError(f"two rules for {op}")
            RULES[op] = instance
        return cls

    return wrap


RULE_DOMAINS = ("com.microsoft",)  # other domains with rules, keyed "domain:OpType"


def rule_for(node) -> Rule | None:
    """The rule of a node's op (a NodeRef or a NodeProto), or None (a barrier).
    Default-domain ops are keyed by their op type; ``com.microsoft`` ops by
    "com.microsoft:OpType" (see ``fused``)."""
    proto = getattr(node, "proto", node)
    domain = proto.domain
    if domain in ("", "ai.onnx"):
        return RULES.get(proto.op_type)
    if domain in RULE_DOMAINS:
        return RULES.get(f"{domain}:{proto.op_type}")
    return None


def counts_macs(node) -> bool:
    """Does the node's rule count multiply-accumulates (is it a compute op)?"""
    rule = rule_for(node)
    return rule is not None and type(rule).macs is not Rule.macs


def normalize_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def known(dims) -> bool:
    """Are all dims known (integers, not symbols or None)?"""
    return dims is not None and all(isinstance(d, int) and d >= 0 for d in dims)


def elements(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))
