"""Fused transformer ops of ONNX Runtime's ``com.microsoft`` domain, as written by
``onnxruntime.transformers.optimizer``.

* ``Attention`` projects the hidden stream to Q, K and V with one packed weight and runs
  multi-head attention inside the op. Its heads are channels the op *creates*: one unit per
  head, spanning the head's Q, K and V columns of the weight and bias and its slice of the
  output. The output projection that follows (a plain MatMul) then prunes its input rows.
* ``MultiHeadAttention`` receives Q, K and V already projected: the heads are the channels of
  those three inputs, head h of each tied into one unit; the output carries V's labels.
* ``BiasGelu`` / ``FastGelu`` (activation plus a per-channel bias) and ``Gelu`` /
  ``QuickGelu`` pass channels through.
* Every other fused op that ORT's optimizer writes is a barrier that says why: most normalize
  over the hidden size, which therefore cannot shrink through them.

Rules of this module are registered under ``"com.microsoft:<OpType>"`` (see ``base.rule_for``).
"""

from __future__ import annotations

import numpy as np

from ..graph import ChannelMap
from .base import LinearView, Rule, elements, known, register

MS = "com.microsoft:"


def _used(node, index: int) -> bool:
    return index < len(node.proto.output) and bool(node.proto.output[index])


def _given(node, index: int) -> bool:
    return bool(node.input(index))


def _kept_heads(node, ctx) -> int:
    heads = ctx.note_of(node)["heads"]
    return int((~ctx.removed_atom[heads]).sum())


def _head_bias(node, ctx, index: int, num_heads: int) -> str | None:
    """Why an additive attention bias [B|1, N|1, S, T] cannot follow pruned heads, or None:
    fine when broadcast over the heads or a constant with one entry per head (sliced)."""
    name = node.input(index)
    if not name:
        return None
    if ctx.map(name) is not None:
        return "the attention bias carries tracked channels"
    value = ctx.const(name)
    shape = value.shape if value is not None else ctx.shape(name)
    if shape is None or len(shape) != 4:
        return "the attention bias has an unknown shape"
    if shape[1] == 1 or (value is not None and shape[1] == num_heads):
        return None
    return "the attention bias is computed per head (its head axis would need slicing)"


def _slice_head_bias(node, ctx, index: int, heads: np.ndarray) -> None:
    value = ctx.const(node.input(index))
    if value is not None and value.shape[1] != 1:
        ctx.param(node, index, {1: 0}, heads, score=False)


class _Barrier(Rule):
    """A fused op the tool does not prune through: every channel reaching it is frozen."""

    reasons: dict[str, str] = {}
    opaque = True

    def propagate(self, node, ctx):
        ctx.barrier(node, f"{node.op} {self.reasons[node.op]}")


_HIDDEN = "(hidden-size pruning not supported on fused ops)"
_BARRIERS = {
    "EmbedLayerNormalization": ("adds embedding tables and normalizes over the hidden size "
                                f"{_HIDDEN}"),
    "PackedAttention": ("works on packed (padding-free) tokens (pruning its heads is not "
                        "supported)"),
    "PackedMultiHeadAttention": ("works on packed (padding-free) tokens (pruning its heads is "
                                 "not supported)"),
    "DecoderMaskedMultiHeadAttention": ("keeps a KV cache across steps (pruning its heads is not "
                                        "supported)"),
    "DecoderMaskedSelfAttention": ("keeps a KV cache across steps (pruning its heads is not "
                                   "supported)"),
    "DecoderAttention": "keeps a KV cache across steps (pruning its heads is not supported)",
    "SparseAttention": "uses a block-sparse layout per head (pruning its heads is not supported)",
    "RotaryEmbedding": "rotates pairs of channels within each head (not supported)",
    "RelativePositionBias": "computes a bias per attention head (not supported)",
    "GatedRelativePositionBias": "computes a bias per attention head (not supported)",
    "BiasAdd": "adds a skip input across the hidden size (not supported)",
    "BiasSplitGelu": "splits the channels in halves that gate each other (not supported)",
    "GroupNorm": "normalizes groups of channels in NHWC layout (not supported)",
    "SkipGroupNorm": "normalizes groups of channels in NHWC layout (not supported)",
    "NhwcConv": "is a convolution in NHWC layout (not supported)",
    "FusedMatMul": "transposes and scales its operands inside the op (not supported)",
    "FusedConv": "fuses a convolution with its activation (not supported)",
    "QAttention": "holds quantized weights (not supported)",
    "QOrderedAttention": "holds quantized weights (not supported)",
    "LongformerAttention": "uses a sliding window with global tokens (not supported)",
}
_Barrier.reasons = _BARRIERS
register(*(MS + op for op in _BARRIERS))(_Barrier)


@register(MS + "Gelu", MS + "QuickGelu", MS + "FastGelu", MS + "BiasGelu")
class BiasActivationRule(Rule):
    """act(X + bias) with an optional 1-D bias along X's last axis (required for BiasGelu):
    element-wise, so channels on the last axis pass through and the bias is sliced with them."""

    def propagate(self, node, ctx):
        x = ctx.map(node.input(0))
        bias = node.input(1) if node.op in ("FastGelu", "BiasGelu") else ""
        if bias and ctx.map(bias) is not None:
            return ctx.barrier(node, "the bias carries tracked channels")
        if x is None:
            return
        if bias:
            if x.axes != (x.rank - 1,):
                return ctx.barrier(node, "channels are not on the last (bias) axis")
            value = ctx.const(bias)
            if value is None or value.ndim != 1 or value.shape[0] != x.labels.size:
                return ctx.barrier(node, "the bias is not a constant per channel")
            ctx.param(node, 1, {0: 0}, x.labels)
        ctx.set_map(node.proto.output[0], x)
        ctx.note(node)


@register(MS + "Attention")
class AttentionRule(Rule):
    """Self-attention with a packed QKV weight [in, q + k + v] and bias [q + k + v].

    Head h owns columns [h·dq, (h+1)·dq) of the Q and K blocks and [h·dv, (h+1)·dv) of the V
    block, and the same slice of the output [B, S, v]. The head's output positions get fresh
    atoms, tied into one unit; the Q and K columns are labelled with the head's atom, so the
    weight and bias are sliced head by head. ``num_heads`` and ``qkv_hidden_sizes`` shrink.
    Tracked input channels are read by the weight's rows, as in a MatMul.
    """

    def propagate(self, node, ctx):
        reason = self._unsupported(node, ctx)
        if reason:
            return ctx.barrier(node, reason)
        num_heads = int(node.attr("num_heads"))
        weight = ctx.const(node.input(1))
        sizes = node.attr("qkv_hidden_sizes")
        q, k, v = (int(s) for s in sizes) if sizes else (weight.shape[1] // 3,) * 3
        if q != k or q + k + v != weight.shape[1] or q % num_heads or v % num_heads:
            return ctx.barrier(node, "the Q/K/V sizes do not split into num_heads heads")
        if _given(node, 2):
            bias = ctx.const(node.input(2))
            if bias is None or bias.shape != (weight.shape[1],):
                return ctx.barrier(node, "the QKV bias is not a constant [q + k + v]")
        reason = _head_bias(node, ctx, 5, num_heads)
        if reason:
            return ctx.barrier(node, reason)

        dq, dv = q // num_heads, v // num_heads
        out = ctx.new_map(node, 3, (2,), (num_heads * dv,))
        grid = out.labels.reshape(num_heads, dv)
        ctx.space.unify_along(grid, 1)                 # a head goes as a unit
        ctx.mark_heads(grid)
        heads = grid[:, 0]
        qk = np.repeat(heads, dq)
        columns = np.concatenate([qk, qk, out.labels])
        ctx.param(node, 1, {1: 0}, columns)
        x = ctx.map(node.input(0))
        if x is not None:
            ctx.param(node, 1, {0: 0}, x.labels, consume=True)
        if _given(node, 2):
            ctx.param(node, 2, {0: 0}, columns)
        _slice_head_bias(node, ctx, 5, heads)
        ctx.set_map(node.proto.output[0], out)
        ctx.note(node, heads=heads, dq=dq, dv=dv)

    @staticmethod
    def _unsupported(node, ctx) -> str | None:
        if _given(node, 4) or _given(node, 6) or _used(node, 1):
            return "a past/present key-value cache is used (pruning its heads is not supported)"
        if int(node.attr("do_rotary", 0)) or int(node.attr("rotary_embedding_dim", 0)):
            return "rotary embedding inside the op (pruning its heads is not supported)"
        if int(node.attr("past_present_share_buffer", 0)):
            return "past_present_share_buffer is set (a key-value cache is not supported)"
        if not node.has_attr("num_heads"):
            return "num_heads is missing"
        if any(ctx.map(node.input(i)) is not None for i in (1, 2, 3)):
            return "the weight, bias or mask carries tracked channels"
        x = ctx.map(node.input(0))
        if x is not None and (x.rank != 3 or x.axes != (2,)):
            return "the input is tracked on an axis other than the hidden one"
        weight = ctx.const(node.input(1))
        if weight is None or weight.ndim != 2:
            return "the packed QKV weight is not a constant matrix"
        if x is not None and x.labels.size != weight.shape[0]:
            return "the input's channels do not match the weight's rows"
        return None

    def macs(self, node, shape):
        """The packed projection, B·S·in·(q + k + v), and attention itself: scores over T keys
        (the sequence, plus a past where one is given) and their weighted sum of values,
        B·S·T·(q + v). Read from shapes alone, so a plan's narrower weight counts too."""
        x, w, y = shape(node.input(0)), shape(node.input(1)), shape(node.proto.output[0])
        if not (known(x) and known(w) and known(y)) or len(x) != 3 or len(y) != 3:
            return None
        v = y[2]
        q = (w[1] - v) // 2
        keys = x[1]
        past = shape(node.input(4)) if _given(node, 4) else None
        if past is not None:
            if not known(past) or len(past) != 5:
                return None
            keys += past[3]
        return elements(x) * w[1] + x[0] * x[1] * keys * (q + v)

    def linear_view(self, node, graph):
        """The packed QKV weight [in, q + k + v] reads the hidden channels as a MatMul does."""
        weight = graph.const(node.input(1))
        if weight is None or weight.ndim != 2:
            return None
        bias = None
        if _given(node, 2):
            value = graph.const(node.input(2))
            if value is not None and value.shape == (weight.shape[1],):
                bias = (node.index, 2, 1.0)
        return LinearView(weight.T[:, :, None], lambda w: w[:, :, 0].T,
                          bias=bias)

    def rewrite(self, node, ctx):
        kept = _kept_heads(node, ctx)
        note = ctx.note_of(node)
        node.set_attr("num_heads", kept)
        if node.has_attr("qkv_hidden_sizes"):
            node.set_attr("qkv_hidden_sizes", [kept * note["dq"], kept * note["dq"],
                                               kept * note["dv"]])


@register(MS + "MultiHeadAttention")
class MultiHeadAttentionRule(Rule):
    """Attention over separately projected Q [B, S, N·dq], K [B, L, N·dq], V [B, L, N·dv].

    Each input must carry its channels on the last axis (they come from MatMul projections).
    All positions of head h in Q, K and V are tied into one unit; the output [B, S, N·dv]
    carries V's labels. A constant packed bias [q + k + v] is sliced with them.
    """

    def propagate(self, node, ctx):
        reason = self._unsupported(node, ctx)
        if reason:
            return ctx.barrier(node, reason)
        num_heads = int(node.attr("num_heads"))
        q, k, v = maps = [ctx.map(node.input(i)) for i in range(3)]
        grids = [m.labels.reshape(num_heads, -1) for m in maps]
        for grid in grids:
            ctx.space.unify_along(grid, 1)             # a head goes as a unit ...
            ctx.mark_heads(grid)
        heads = grids[0][:, 0]
        ctx.space.unify(heads, grids[1][:, 0])         # ... with its K and V
        ctx.space.unify(heads, grids[2][:, 0])
        if _given(node, 3):
            ctx.param(node, 3, {0: 0}, np.concatenate([q.labels, k.labels, v.labels]))
        _slice_head_bias(node, ctx, 5, heads)
        ctx.set_map(node.proto.output[0], ChannelMap(3, (2,), v.labels))
        ctx.note(node, heads=heads)

    @staticmethod
    def _unsupported(node, ctx) -> str | None:
        if not node.has_attr("num_heads"):
            return "num_heads is missing"
        num_heads = int(node.attr("num_heads"))
        if not (_given(node, 1) and _given(node, 2)):
            return ("packed QKV or packed KV inputs are not supported (query, key and value "
                    "must be separate inputs)")
        if any(_given(node, i) for i in (6, 7, 8, 9)) or any(_used(node, i) for i in (1, 2)):
            return "a past/present key-value cache is used (pruning its heads is not supported)"
        if _used(node, 3):
            return "the attention scores output is used"
        maps = [ctx.map(node.input(i)) for i in range(3)]
        if any(m is None for m in maps):
            return ("query, key and value must all carry per-head channels "
                    "(from MatMul projections)")
        if any(m.rank != 3 or m.axes != (2,) for m in maps):
            return ("only 3-D query/key/value [B, S, N·d] tracked on the last axis are "
                    "supported (not the per-head 4-D/5-D forms)")
        q, k, _ = maps
        if q.labels.size != k.labels.size or any(m.labels.size % num_heads for m in maps):
            return "the Q/K/V sizes do not split into num_heads heads"
        if any(ctx.map(node.input(i)) is not None for i in (3, 4)):
            return "the bias or key padding mask carries tracked channels"
        if _given(node, 3):
            bias = ctx.const(node.input(3))
            if bias is None or bias.shape != (sum(m.labels.size for m in maps),):
                return "the bias is not a constant [q + k + v]"
        return _head_bias(node, ctx, 5, num_heads)

    def macs(self, node, shape):
        """Scores of every query against L keys and the weighted sum of values: B·S·L·(q + v)
        for 3-D query/key/value (L from a 4-D [B, N, L, d] key too)."""
        q, k, y = shape(node.input(0)), shape(node.input(1)), shape(node.proto.output[0])
        if not (known(q) and known(k) and known(y)) or len(q) != 3 or len(y) != 3:
            return None
        keys = {3: 1, 4: 2}.get(len(k))
        if keys is None:
            return None
        return q[0] * q[1] * k[keys] * (q[2] + y[2])

    def rewrite(self, node, ctx):
        node.set_attr("num_heads", _kept_heads(node, ctx))
