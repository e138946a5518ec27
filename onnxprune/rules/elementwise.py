"""Element-wise ops: activations pass channels through; binary ops couple or broadcast them."""

from __future__ import annotations

import numpy as np

from ..graph import ChannelMap
from .base import InputRule, Rule, register

UNARY = (
    "Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Elu", "Selu",
    "Celu", "Softplus", "Softsign", "Gelu", "Erf", "Mish", "ThresholdedRelu", "Exp", "Log", "Abs",
    "Neg", "Sqrt", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity",
    "Dropout", "Cast", "Not", "IsNaN", "IsInf", "Shrink",
)

# Activations ONNX Runtime's ConvActivationFusion folds into the Conv before them.
CONV_ACTIVATIONS = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh")


@register(*UNARY)
class UnaryRule(InputRule):
    """Applied to each element alone: output 0 carries the input's channels unchanged."""

    streams = True

    def fuses_after(self, node, producer, constant_inputs):
        return producer == "Conv" and node.op in CONV_ACTIVATIONS

    def fuses_before(self, node, consumer, shares_input):
        return node.op == "Sigmoid" and consumer == "Mul" and shares_input   # QuickGelu

    def follow(self, node, ctx, x):
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node)


@register("Clip")
class ClipRule(InputRule):
    """Clip's min/max are scalars: a pass-through like any activation."""

    streams = True

    def fuses_after(self, node, producer, constant_inputs):
        return producer == "Conv"

    def follow(self, node, ctx, x):
        for i in (1, 2):
            name = node.input(i)
            if name and (ctx.map(name) is not None or _size(ctx, name) != 1):
                return ctx.barrier(node, "min/max are not scalars")
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node)


@register("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Where")
class BroadcastRule(Rule):
    """Numpy-style broadcasting between inputs.

    Tracked inputs whose channels meet on the same output positions are unified (a residual
    Add, the Mul of a squeeze-excitation gate). A constant with one value per channel is sliced
    with them. A computed input that varies along a tracked axis (rotary cos/sin tables along
    head_dim) cannot be sliced: it is allowed only where the units span that whole axis, so
    the axis never shrinks (checked once grouping is final); otherwise it is a barrier.

    ONNX Runtime folds an Add after a Conv into it (a constant into the bias, a tensor as the
    NCHWc kernel's sum input), and a per-channel constant Mul or Div into its weights.
    """

    streams = True

    def fuses_after(self, node, producer, constant_inputs):
        return producer == "Conv" and (node.op == "Add" or (
            node.op in ("Mul", "Div") and constant_inputs == {1}))

    def propagate(self, node, ctx):
        names = [n for n in node.proto.input]
        tracked = [(i, ctx.map(n)) for i, n in enumerate(names) if ctx.map(n) is not None]
        if not tracked:
            return
        ranks = [ctx.rank(n) for n in names]
        if any(r is None for r in ranks):
            return ctx.barrier(node, "an input rank is unknown")
        out_rank = max(ranks)
        # Express every tracked map in output axes (numpy aligns shapes on the right).
        aligned = [(i, m.with_axes(out_rank, tuple(a + out_rank - m.rank for a in m.axes)))
                   for i, m in tracked]
        full = [(i, m) for i, m in aligned if m.labels.size > 1]
        if not full:
            return ctx.barrier(node, "only single-channel inputs are tracked")
        base = full[0][1]
        for i, m in aligned:
            if m.axes != base.axes:
                return ctx.barrier(node, "inputs are tracked on different axes")
            if m.labels.shape != base.labels.shape:
                if m.labels.size == 1:
                    ctx.freeze(m, f"{node.label}: broadcast single channel")
                    continue
                return ctx.barrier(node, "tracked inputs have different channel counts")
        for i, m in full[1:]:
            ctx.space.unify(base.labels, m.labels)
        for i, name in enumerate(names):
            if not name or ctx.map(name) is not None:
                continue
            along = _dims_along(ctx, name, ranks[i], out_rank, base.axes)
            if along is None:
                return ctx.barrier(node, f"input {i} has unknown shape")
            if all(d == 1 for d in along.values()):
                continue
            if ctx.const(name) is None:
                if _slice_channel_factor(ctx, node, name, out_rank, base):
                    continue
                varying = [base.axes.index(o) for o, d in along.items() if d > 1]
                _require_whole(ctx, node, base.labels, varying, i,
                               [n for n in names if n and ctx.map(n) is not None])
                continue
            ctx.param(node, i, _const_axes(ranks[i], out_rank, base, along), base.labels,
                      score=False)
        ctx.set_map(node.proto.output[0], ChannelMap(out_rank, base.axes, base.labels))
        ctx.note(node)


def _const_axes(rank: int, out_rank: int, base: ChannelMap, along) -> dict[int, int]:
    """The axes of a rank-``rank`` constant that follow ``base``'s channels (where it has
    more than one value along them)."""
    return {p: base.axes.index(o) for p, o in ((p, p + out_rank - rank) for p in range(rank))
            if o in base.axes and along[o] > 1}


# Ops through which a computed per-channel factor is followed back to its constants.
_FACTOR_OPS = ("Mul", "Div", "Add", "Sub", "Neg", "Reciprocal", "Sqrt", "Cast", "Identity")


def _slice_channel_factor(ctx, node, name: str, out_rank: int, base: ChannelMap) -> bool:
    """A computed input that varies along the channels only through constants is sliced
    where those constants are: dynamic quantization's ``x_scale · w_scale`` (x_scale found at
    run time), a LayerNorm that tf2onnx decomposes into ``x · (rsqrt(var + ε) · γ)`` and
    ``−mean · (rsqrt(var + ε) · γ)``. Every other part must have one value along the
    channels. Each tensor of that computation must be read only by element-wise ops whose
    output follows the same channels (checked once all nodes are propagated; otherwise a
    barrier), so that slicing it changes nothing else. False (nothing declared) otherwise."""
    plan = _factor_plan(ctx, name, out_rank, base, 0)
    if not plan or not plan[0]:
        return False
    params, tensors = plan
    for producer, j, axes in params:
        ctx.param(producer, j, axes, base.labels, score=False)
    ctx.sliced_factors.update(tensors)
    tracked = [n for n in node.proto.input if n and ctx.map(n) is not None]

    def check(roots):
        for tensor in tensors:
            for reader in ctx.graph.consumers.get(tensor, []):
                out = reader.proto.output[0]
                if reader.op not in _FACTOR_OPS or not (
                        ctx.map(out) is not None or out in ctx.sliced_factors):
                    ctx.late_barrier(node, f"a per-channel factor it reads ({tensor}) is also "
                                           f"read by {reader.label}", tracked)
                    return

    ctx.defer(check)
    return True


def _factor_plan(ctx, name: str, out_rank: int, base: ChannelMap, depth: int):
    """(constants to slice as (node, input, axes), computed tensors on the way) for the
    computation of ``name``, or None when some part varies along the channels otherwise."""
    producer = ctx.graph.producer.get(name)
    if producer is None or producer.op not in _FACTOR_OPS or depth > 8:
        return None
    params, tensors = [], [name]
    for j, part in enumerate(producer.proto.input):
        rank = ctx.rank(part)
        if not part or ctx.map(part) is not None or rank is None:
            return None
        along = _dims_along(ctx, part, rank, out_rank, base.axes)
        if along is None:
            return None
        if all(d == 1 for d in along.values()):
            continue
        if ctx.const(part) is not None:
            params.append((producer, j, _const_axes(rank, out_rank, base, along)))
            continue
        inner = _factor_plan(ctx, part, out_rank, base, depth + 1)
        if inner is None:
            return None
        params += inner[0]
        tensors += inner[1]
    return params, tensors


def _require_whole(ctx, node, labels, varying, index, tracked_names) -> None:
    def check(roots):
        units = roots[labels]
        for j in varying:
            if not np.array_equal(units, np.broadcast_to(np.take(units, [0], axis=j),
                                                         units.shape)):
                ctx.late_barrier(node, f"input {index} varies along the channels but is not "
                                       f"tracked", tracked_names)
                return

    ctx.defer(check)


def _dims_along(ctx, name, rank, out_rank, out_axes) -> dict[int, int] | None:
    """An untracked input's sizes at the output's tracked axes (1 where it broadcasts)."""
    shape = ctx.shape(name)
    if shape is None:
        return None
    dims = {}
    for o in out_axes:
        p = o - (out_rank - rank)
        d = shape[p] if p >= 0 else 1
        if not isinstance(d, int):
            return None
        dims[o] = d
    return dims


def _size(ctx, name) -> int | None:
    shape = ctx.shape(name)
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return int(np.prod(shape, dtype=np.int64))
