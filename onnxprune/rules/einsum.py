"""Einsum of an activation with a constant weight, as ``torch.einsum`` exports it
(``"btd,dhk->bthk"``: a projection straight to heads; ``"bhd,hdk->bhk"``: per-head weights).

The equation is read letter by letter. A letter the weight shares with the activation but not
the output is *contracted*: channels tracked there are consumed by the weight (sliced along
that letter). A letter of the weight alone that reaches the output *creates* channels (one
atom per output position of those letters; a grid when there are several, kept rectangular
as a Reshape's is: whole rows where later ops made rows units, else the same positions in
every row). A letter in both
operands and the output is *shared* (per-head weights): channels tracked there pass to the
output and the weight is sliced along it; with contracted letters beside it, each shared
position (a head) is one unit. A letter of the activation alone that reaches the output
passes its channels through. Channels summed away without the weight, repeated letters
(diagonals), einsums of two activations and of more than two operands are barriers.
"""

from __future__ import annotations

import string

import numpy as np

from ..graph import ChannelMap
from .base import Rule, register
from .reshape import rectangular


def equation(node) -> str:
    value = node.attr("equation", "")
    return value.decode() if isinstance(value, bytes) else str(value)


def parse(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """(one letter string per operand, output letters), ellipses spelled out as capital
    letters aligned from the right; None when the equation cannot be read."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    used = set(eq) - set(".,->")
    spare = [c for c in string.ascii_uppercase if c not in used]
    widths = [rank - len(t.replace("...", "")) if "..." in t else 0
              for t, rank in zip(terms, ranks)]
    if any(w < 0 for w in widths) or max(widths, default=0) > len(spare):
        return None
    ellipsis = spare[:max(widths, default=0)]
    terms = [t.replace("...", "".join(ellipsis[len(ellipsis) - w:])) for t, w in
             zip(terms, widths)]
    if not arrow:     # implicit output: letters seen once, in alphabetical order
        counts = {c: sum(t.count(c) for t in terms) for c in set("".join(terms))}
        out = "".join(ellipsis) + "".join(sorted(c for c, n in counts.items()
                                                 if n == 1 and c not in ellipsis))
    else:
        out = out.replace("...", "".join(ellipsis))
    if any(len(t) != rank for t, rank in zip(terms, ranks)) or not all(
            t.isalpha() for t in terms + [out] if t):
        return None
    return terms, out


@register("Einsum")
class EinsumRule(Rule):
    fully_connected = True

    def propagate(self, node, ctx):
        names = list(node.proto.input)
        maps = [ctx.map(n) for n in names]
        consts = [ctx.const(n) for n in names]
        if len(names) != 2 or sum(c is not None for c in consts) != 1:
            if all(m is None for m in maps):
                return            # nothing tracked reaches it, and it makes no channels
            if len(names) != 2:
                return ctx.barrier(node, "only two-operand einsums are understood")
            return ctx.barrier(node, "an einsum of two activations (no constant weight)")
        w_index = 0 if consts[0] is not None else 1
        x_index = 1 - w_index
        x, weight = maps[x_index], consts[w_index]
        ranks = [ctx.rank(n) for n in names]
        parsed = parse(equation(node), ranks) if None not in ranks else None
        if parsed is None:
            return ctx.barrier(node, "the equation cannot be read")
        terms, out = parsed
        xs, ws = terms[x_index], terms[w_index]
        if any(len(set(t)) != len(t) for t in (xs, ws, out)):
            return ctx.barrier(node, "a letter repeats within a term (a diagonal)")
        kinds = {c: ("contracted" if c in ws and c not in out else
                     "shared" if c in ws else "passed" if c in out else "summed") for c in xs}
        tracked = [xs[a] for a in x.axes] if x is not None else []
        found = {kinds[c] for c in tracked}
        if "summed" in found:
            return ctx.barrier(node, "channels are summed away without the weight")
        if {"contracted", "passed"} <= found:
            return ctx.barrier(node, "channels are both contracted and passed through")
        if found <= {"contracted"}:
            y = self._made(node, ctx, x, tracked, xs, ws, out, weight, w_index)
        elif "contracted" in found:
            y = self._per_head(node, ctx, x, tracked, kinds, ws, out, w_index)
        else:
            y = self._passed(node, ctx, x, tracked, kinds, ws, out, w_index)
        if y is None:
            return
        ctx.set_map(node.proto.output[0], y)
        ctx.note(node)

    def _made(self, node, ctx, x, tracked, xs, ws, out, weight, w_index):
        """Tracked channels (if any) consumed; the weight's own output letters make new ones."""
        if tracked:
            ctx.param(node, w_index, {ws.index(c): k for k, c in enumerate(tracked)},
                      x.labels, consume=True)
        made = [c for c in out if c in ws and c not in xs]
        if not made:
            return ctx.barrier(node, "the weight makes no output channels")
        axes = tuple(out.index(c) for c in made)      # in output order
        y = ctx.new_map(node, len(out), axes,
                        tuple(int(weight.shape[ws.index(c)]) for c in made))
        ctx.param(node, w_index, {ws.index(c): k for k, c in enumerate(made)}, y.labels)
        if len(made) > 1:         # a grid (heads × head_dim) must stay one
            ctx.defer_shaping(lambda: rectangular(ctx, y.labels))
        return y

    def _per_head(self, node, ctx, x, tracked, kinds, ws, out, w_index):
        """Shared letters (heads) with contracted ones (each head's features): every head is
        one unit; the weight is consumed along all of them, the heads pass to the output."""
        heads = [k for k, c in enumerate(tracked) if kinds[c] == "shared"]
        inner = [k for k in range(len(tracked)) if k not in heads]
        grid = np.transpose(x.labels, heads + inner)
        grid = grid.reshape(grid.shape[:len(heads)] + (-1,))
        for k in range(1, grid.shape[-1]):
            ctx.space.unify(grid[..., 0], grid[..., k])
        ctx.mark_heads(grid)
        ctx.param(node, w_index, {ws.index(c): k for k, c in enumerate(tracked)}, x.labels,
                  consume=True)
        letters = [tracked[k] for k in heads]
        order = list(np.argsort([out.index(c) for c in letters]))
        return ChannelMap(len(out), tuple(sorted(out.index(c) for c in letters)),
                          np.transpose(grid[..., 0], order))

    def _passed(self, node, ctx, x, tracked, kinds, ws, out, w_index):
        """Channels passed through (shared ones slice the weight with them)."""
        order = np.argsort([out.index(c) for c in tracked])
        labels = np.transpose(x.labels, order)
        letters = [tracked[k] for k in order]
        shared = [c for c in letters if kinds[c] == "shared"]
        if shared and len(shared) < len(letters):
            return ctx.barrier(node, "channels pass both with and beside the weight")
        if shared:
            ctx.param(node, w_index, {ws.index(c): k for k, c in enumerate(shared)}, labels)
        return ChannelMap(len(out), tuple(out.index(c) for c in letters), labels)

    def macs(self, node, shape):
        """One multiply-accumulate per combination of every letter's index."""
        dims = [shape(n) for n in node.proto.input]
        if any(d is None or not all(isinstance(v, int) for v in d) for d in dims):
            return None
        parsed = parse(equation(node), [len(d) for d in dims])
        if parsed is None:
            return None
        size = {}
        for term, d in zip(parsed[0], dims):
            for c, v in zip(term, d):
                size[c] = max(size.get(c, 1), v)
        return int(np.prod(list(size.values()), dtype=np.int64))
