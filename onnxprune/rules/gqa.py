"""``com.microsoft:GroupQueryAttention``, as onnxruntime-genai's model builder writes it for
Llama-style decoders: one packed QKV projection, rotary inside the op, and a key/value cache
(``past_key_values.N.*`` in, ``present.N.*`` out) of ``kv_num_heads`` heads.

The packed input [B, S, (N + 2·K)·H] holds N query heads, then K key and K value heads of
H dims each; query head i reads key/value head i // (N / K). A head's H dims go together
(rotary turns pairs of them). Two ways to prune:

* By default the cache keeps its heads: the key/value heads are frozen, and query heads go,
  the same positions in every group, so each group keeps as many (N / K stays whole).
* ``allow_cache_change`` (the CLI's ``--allow-cache-change``): a key/value head goes together
  with the query heads that read it, and the cache inputs and outputs lose that head (their
  axis 1). The rule records them (``io`` in its note); the rewrite resizes those graph inputs
  and outputs, and the check feeds and compares them sliced to the kept heads.

The output [B, S, N·H] carries the query heads' labels: the projection after it loses the
rows of the removed heads.
"""

from __future__ import annotations

from ..graph import ChannelMap
from .base import Rule, known, register

MS = "com.microsoft:"
PAST_KEY, PAST_VALUE, TOTAL_LENGTH = 3, 4, 6
PRESENT_KEY, PRESENT_VALUE = 1, 2


@register(MS + "GroupQueryAttention")
class GroupQueryAttentionRule(Rule):
    def propagate(self, node, ctx):
        x = ctx.map(node.input(0))
        if x is None:
            return
        reason = self._unsupported(node, ctx, x)
        if reason:
            return ctx.barrier(node, reason)
        heads, kv = int(node.attr("num_heads")), int(node.attr("kv_num_heads"))
        size = x.labels.size // (heads + 2 * kv)
        q = x.labels[:heads * size].reshape(kv, heads // kv, size)
        k = x.labels[heads * size:(heads + kv) * size].reshape(kv, size)
        v = x.labels[(heads + kv) * size:].reshape(kv, size)
        ctx.space.unify_along(q, 2)                  # a head's dims go together
        ctx.space.unify_along(k, 1)
        ctx.space.unify_along(v, 1)
        ctx.mark_heads(x.labels)
        io = {}
        if ctx.allow_cache_change:
            ctx.space.unify_along(q, 1)              # a key/value group goes whole ...
            ctx.space.unify(q[:, 0, 0], k[:, 0])     # ... with its key and value heads
            ctx.space.unify(q[:, 0, 0], v[:, 0])
            for index, labels in ((PAST_KEY, k), (PAST_VALUE, v)):
                if node.input(index):
                    io[node.input(index)] = ((1,), labels[:, 0])
            for index, labels in ((PRESENT_KEY, k), (PRESENT_VALUE, v)):
                if index < len(node.proto.output) and node.proto.output[index]:
                    io[node.proto.output[index]] = ((1,), labels[:, 0])
        else:
            ctx.space.unify_along(q, 0)              # the same query heads in every group
            reason = f"{node.label}: key/value heads are the KV cache's (--allow-cache-change)"
            ctx.space.freeze(k, reason)
            ctx.space.freeze(v, reason)
        ctx.set_map(node.proto.output[0], ChannelMap(3, (2,), q.ravel()))
        ctx.note(node, heads=q[:, :, 0].ravel(), kv=k[:, 0], io=io)

    @staticmethod
    def _unsupported(node, ctx, x) -> str | None:
        if not (node.has_attr("num_heads") and node.has_attr("kv_num_heads")):
            return "num_heads or kv_num_heads is missing"
        heads, kv = int(node.attr("num_heads")), int(node.attr("kv_num_heads"))
        if node.input(1) or node.input(2):
            return "separate key and value inputs (only the packed QKV form is supported)"
        if x.rank != 3 or x.axes != (2,) or kv < 1 or heads % kv:
            return "the packed QKV input is not [B, S, (N + 2K)·H] tracked on its last axis"
        if x.labels.size % (heads + 2 * kv):
            return "the packed QKV width does not split into num_heads + 2·kv_num_heads heads"
        extra = [i for i in range(9, len(node.proto.input)) if node.input(i)]
        if extra:
            return f"input {extra[0]} (attention bias, head sink or position ids) is given"
        if any(ctx.map(node.input(i)) is not None for i in range(3, 9)):
            return "a cache, length or rotary input carries tracked channels"
        return None

    def rewrite(self, node, ctx):
        note = ctx.note_of(node)
        node.set_attr("num_heads", int((~ctx.removed_atom[note["heads"]]).sum()))
        node.set_attr("kv_num_heads", int((~ctx.removed_atom[note["kv"]]).sum()))

    def macs(self, node, shape):
        """Scores of every query head against the T cached positions and the weighted sum of
        values: B·S·T·2·N·H (T from the present key); 0 where T is not known."""
        y = shape(node.proto.output[0])
        present = shape(node.proto.output[PRESENT_KEY]) if len(node.proto.output) > 1 else None
        if not (known(y) and known(present)) or len(y) != 3 or len(present) != 4:
            return 0
        return y[0] * y[1] * present[2] * 2 * y[2]

    def dim_sizes(self, node, graph) -> dict[str, int | str]:
        """Sizes the cache inputs' named dims must have for the op to run: the head size (the
        packed width over N + 2K), and a mask as long as the past plus the new tokens."""
        sizes: dict[str, int | str] = {}
        heads, kv = int(node.attr("num_heads", 0)), int(node.attr("kv_num_heads", 0))
        packed = graph.shape(node.input(0))
        past = graph.shape(node.input(PAST_KEY)) if node.input(PAST_KEY) else None
        if not packed or not past or len(past) != 4 or not heads + 2 * kv:
            return sizes
        if isinstance(packed[-1], int) and isinstance(past[3], str):
            sizes[past[3]] = packed[-1] // (heads + 2 * kv)
        total = _mask_length_name(graph, node.input(TOTAL_LENGTH))
        new = packed[1] if len(packed) == 3 else None
        if total and isinstance(past[2], str) and isinstance(new, str) and total not in (
                past[2], new):
            sizes[total] = f"{past[2]} + {new}"
        return sizes


def _mask_length_name(graph, name: str) -> str | None:
    """The named dim a total-length input is read from (Cast ← Gather(Shape(mask), k)), as
    the genai builder computes it, or None."""
    node = graph.producer.get(name)
    while node is not None and node.op == "Cast":
        node = graph.producer.get(node.input(0))
    if node is None or node.op != "Gather":
        return None
    index, shape_of = graph.const(node.input(1)), graph.producer.get(node.input(0))
    if index is None or index.size != 1 or shape_of is None or shape_of.op != "Shape":
        return None
    dims = graph.shape(shape_of.input(0))
    position = int(index.ravel()[0])
    return dims[position] if dims and -len(dims) <= position < len(dims) and isinstance(
        dims[position], str) else None
