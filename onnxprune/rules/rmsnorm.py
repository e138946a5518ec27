"""RMS normalization as ONNX Runtime fuses it: ``SimplifiedLayerNormalization`` (y = x /
√(mean(x²) + ε) · γ over the last axis; onnxruntime-genai's builder writes it in ONNX's own
domain) and ``com.microsoft:SkipSimplifiedLayerNormalization`` (the same of
``input + skip (+ bias)``, whose fourth output is that sum: the residual stream).

Channels on other axes pass through. Channels on the normalized axis are the hidden size: γ
(and the bias) are sliced, the norm then averages over the kept channels, so the pruned model
computes another function and the group is opt-in (``hidden``, like LayerNormalization's).
In the masked original the op is rebuilt from standard ops that read the kept channels only.
The skip variant ties ``input`` and ``skip`` (a residual Add).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..graph import ChannelMap
from .base import Rule, register
from .hidden import keep_vector

MS = "com.microsoft:"


def _hidden_axis(x: ChannelMap) -> bool | None:
    """True when the channels are on the last axis alone, False when not on it, None when
    they are on it and elsewhere (a barrier)."""
    if x.rank - 1 not in x.axes:
        return False
    return True if x.axes == (x.rank - 1,) else None


class FusedNorm(Rule):
    """A fused last-axis norm: ``gamma`` (γ, which the BN-scale criterion reads) and the other
    per-channel inputs in ``per_channel`` are sliced with the hidden size; ``extra_outputs``
    (statistics) must be unused; ``normalized`` writes the masked original's op."""

    gamma, per_channel, extra_outputs = 1, (1,), (1, 2)
    scale_input = gamma
    epsilon_default = 1e-5      # ONNX Runtime's schema defaults: 1e-5, 1e-12 for Skip*

    def inputs(self, node, ctx) -> list[ChannelMap] | str:
        raise NotImplementedError

    def propagate(self, node, ctx):
        maps = self.inputs(node, ctx)
        if isinstance(maps, str):
            return ctx.barrier(node, maps)
        if not maps:
            return
        x = maps[0]
        for other in maps[1:]:
            if other.axes != x.axes or other.labels.shape != x.labels.shape:
                return ctx.barrier(node, "input and skip are tracked differently")
            ctx.space.unify(x.labels, other.labels)
        hidden = _hidden_axis(x)
        if hidden is None:
            return ctx.barrier(node, "normalizes over the tracked channels and other axes")
        if hidden:
            if int(node.attr("axis", -1)) not in (-1, x.rank - 1):
                return ctx.barrier(node, "normalizes over more than the last axis")
            if any(i < len(node.proto.output) and _read(ctx, node.proto.output[i])
                   for i in self.extra_outputs):
                return ctx.barrier(node, "its mean or inverse std-dev output is used")
            for i in self.per_channel:
                if not node.input(i):
                    continue
                value = ctx.const(node.input(i))
                if value is None or value.shape != (x.labels.size,):
                    return ctx.barrier(node, "scale or bias is not a constant per channel")
                ctx.param(node, i, {0: 0}, x.labels, score=(i == self.gamma))
            ctx.mark_hidden(x.labels)
        for name in self.outputs(node):
            ctx.set_map(name, x)
        dtype = ctx.graph.dtypes.get(node.input(0))
        ctx.note(node, hidden=hidden, dtype=helper.tensor_dtype_to_np_dtype(dtype)
                 if dtype else np.float32)

    def outputs(self, node) -> list[str]:
        return [node.proto.output[0]]

    def mask_rewrite(self, node, ctx):
        note = ctx.note_of(node)
        keep = keep_vector(ctx, node) if note["hidden"] else None
        if keep is None:
            return
        x = self.masked_sum(node, ctx)
        epsilon = float(node.attr("epsilon", self.epsilon_default))
        self.normalized(node, ctx, x, keep, note["dtype"], epsilon, node.proto.output[0])
        ctx.drop_node(node)

    def masked_sum(self, node, ctx) -> str:
        return node.input(0)

    def normalized(self, node, ctx, x: str, keep, dtype, epsilon: float, output: str) -> None:
        rms_over_kept(node, ctx, x, keep, dtype, epsilon, node.input(self.gamma), output)


def _read(ctx, name: str) -> bool:
    """Does anything read this output (a node or the graph's outputs)?"""
    return bool(name) and (bool(ctx.graph.consumers.get(name))
                           or name in ctx.graph.graph_outputs)


def rms_over_kept(node, ctx, x: str, keep: np.ndarray, dtype, epsilon: float, gamma: str,
                  output: str) -> None:
    """Write ``output`` = x·m / √(Σ (x·m)² / k + ε) · γ, m the kept-channel mask and k their
    count: what the pruned op computes, in standard ops, for the masked original."""
    hint = node.label
    mask = ctx.add_const(keep.astype(dtype), f"{hint}_kept_mask")
    mean = ctx.add_const((keep / keep.sum()).astype(dtype).reshape(-1, 1), f"{hint}_kept_mean")
    eps = ctx.add_const(np.array(epsilon, dtype=dtype), f"{hint}_epsilon")

    def op(kind, *inputs, out=""):
        return ctx.add_node(node, kind, list(inputs), f"{hint}_{kind.lower()}", output=out)

    kept = op("Mul", x, mask)
    root = op("Sqrt", op("Add", op("MatMul", op("Mul", kept, kept), mean), eps))
    op("Mul", op("Div", kept, root), gamma, out=output)


@register("SimplifiedLayerNormalization", MS + "SimplifiedLayerNormalization")
class SimplifiedLayerNormRule(FusedNorm):
    """SimplifiedLayerNormalization(X, scale) → (Y, inv_std_var)."""

    extra_outputs = (1,)

    def inputs(self, node, ctx):
        x = ctx.map(node.input(0))
        if ctx.map(node.input(1)) is not None:
            return "the scale carries tracked channels"
        return [x] if x is not None else []


@register(MS + "SkipSimplifiedLayerNormalization")
class SkipSimplifiedLayerNormRule(FusedNorm):
    """SkipSimplifiedLayerNormalization(input, skip, gamma, bias) → (output, mean, inv_std_var,
    input + skip + bias)."""

    gamma, per_channel, extra_outputs = 2, (2, 3), (1, 2)
    sum_bias = 3                # the bias added into the residual sum
    scale_input = gamma
    epsilon_default = 1e-12

    def inputs(self, node, ctx):
        if any(ctx.map(node.input(i)) is not None for i in self.per_channel if node.input(i)):
            return "a scale, shift or bias carries tracked channels"
        maps = [ctx.map(node.input(i)) for i in (0, 1)]
        if all(m is None for m in maps):
            return []
        for i, m in enumerate(maps):
            if m is None:     # like an Add with one side the tool does not follow
                maker = ctx.graph.producer.get(node.input(i))
                made = f" (made by {maker.label}, {maker.op})" if maker is not None else ""
                return f"{('input', 'skip')[i]} is not tracked{made}"
        return maps

    def outputs(self, node):
        out = node.proto.output
        return [out[0]] + ([out[3]] if len(out) > 3 and out[3] else [])

    def masked_sum(self, node, ctx):
        total = ctx.add_node(node, "Add", [node.input(0), node.input(1)],
                             f"{node.label}_sum")
        if node.input(self.sum_bias):
            total = ctx.add_node(node, "Add", [total, node.input(self.sum_bias)],
                                 f"{node.label}_biased")
        out = node.proto.output
        if len(out) > 3 and out[3]:
            ctx.add_node(node, "Identity", [total], f"{node.label}_residual", output=out[3])
        return total
