"""``com.microsoft:MatMulNBits``: Y = A · Bᵀ with B [N, K] quantized in blocks of
``block_size`` along K (4-bit in onnxruntime-genai's int4 models), stored packed as
[N, K / block_size, block_size · bits / 8] bytes with one scale (and optionally a zero point)
per (row, block).

* Output channels (rows of B) are new atoms: a row goes with its bytes, its scales, its zero
  points and its bias entry, so the model stays 4-bit.
* Input channels go by whole blocks: the K channels are tied in runs of ``block_size`` (one
  unit per block), and a removed block takes its bytes and scales with it. Nothing is
  re-quantized, so the pruned op computes exactly what the original computes on the kept
  blocks. In the masked original a removed block's scales are 0, which makes its weights 0
  whatever its stored nibbles.
* Packed sub-byte zero points cannot lose a block (two blocks share a byte): then the input
  channels stay (the rows still prune). ``g_idx`` (act-order) is a barrier.
"""

from __future__ import annotations

import numpy as np

from .base import Rule, elements, known, register

MS = "com.microsoft:"
WEIGHT, SCALES, ZEROS, G_IDX, BIAS = 1, 2, 3, 4, 5


@register(MS + "MatMulNBits")
class MatMulNBitsRule(Rule):
    fully_connected = True

    def propagate(self, node, ctx):
        weight = ctx.const(node.input(WEIGHT))
        scales = ctx.const(node.input(SCALES))
        reason = _unsupported(node, ctx, weight, scales)
        if reason:
            return ctx.barrier(node, reason)
        n, k, block = int(node.attr("N")), int(node.attr("K")), int(node.attr("block_size"))
        blocks = weight.shape[1]
        x = ctx.map(node.input(0))
        rank = ctx.rank(node.input(0))
        y = ctx.new_map(node, rank, (rank - 1,), (n,))
        ctx.param(node, WEIGHT, {0: 0}, y.labels)
        self._per_row_and_block(node, ctx, SCALES, scales, y.labels, n, blocks, rows=True)
        zeros = ctx.const(node.input(ZEROS)) if node.input(ZEROS) else None
        if zeros is not None:
            ctx.param(node, ZEROS, {0: 0}, np.repeat(y.labels, zeros.size // n)
                      if zeros.ndim == 1 else y.labels, score=False)
        if node.input(BIAS):
            ctx.param(node, BIAS, {0: 0}, y.labels, score=False)
        if x is not None:
            grid = x.labels.reshape(blocks, block)       # K = blocks · block_size
            ctx.space.unify_along(grid, 1)               # a block of inputs goes whole
            per_block = grid[:, 0]
            if zeros is not None and zeros.size != n * blocks:
                ctx.freeze(x, f"{node.label}: packed zero points (two blocks per byte) "
                              "cannot lose a block")
            else:
                ctx.param(node, WEIGHT, {1: 0}, per_block, score=False)
                self._per_row_and_block(node, ctx, SCALES, scales, per_block, n, blocks,
                                        rows=False, consume=True)
                if zeros is not None:
                    self._per_row_and_block(node, ctx, ZEROS, zeros, per_block, n, blocks,
                                            rows=False)
        ctx.set_map(node.proto.output[0], y)
        ctx.note(node, n=y.labels, blocks=x.labels.reshape(blocks, block)[:, 0]
                 if x is not None else None, k=k, block=block)

    @staticmethod
    def _per_row_and_block(node, ctx, index, value, labels, n, blocks, rows: bool,
                           consume=False):
        """Declare a per-(row, block) constant, [N, blocks] or flat [N · blocks], along the
        rows (``rows``: ``labels`` of size N) or the blocks (``labels`` of size ``blocks``)."""
        if value.ndim == 2:
            ctx.param(node, index, {0 if rows else 1: 0}, labels, consume=consume,
                      score=False)
        else:
            spread = np.repeat(labels, blocks) if rows else np.tile(labels, n)
            ctx.param(node, index, {0: 0}, spread, consume=consume, score=False)

    def rewrite(self, node, ctx):
        note = ctx.note_of(node)
        node.set_attr("N", int((~ctx.removed_atom[note["n"]]).sum()))
        if note["blocks"] is not None:
            node.set_attr("K", int((~ctx.removed_atom[note["blocks"]]).sum()) * note["block"])

    def macs(self, node, shape):
        """Every output element is a dot product over K = blocks · block_size inputs (the
        packed weight's shape says how many blocks, also in a plan)."""
        y, w = shape(node.proto.output[0]), shape(node.input(WEIGHT))
        if not (known(y) and known(w)) or len(w) != 3:
            return None
        return elements(y) * w[1] * int(node.attr("block_size"))

    def param_value(self, node, input_index, graph):
        """The weight as [N, blocks, block_size] floats (unpacked and scaled)."""
        if input_index != WEIGHT:
            return graph.const(node.input(input_index))
        return dequantized_blocks(node, graph)


def dequantized_blocks(node, graph) -> np.ndarray | None:
    """B as floats [N, blocks, block_size]: 4- or 8-bit values, minus the zero point (given
    unpacked, or the middle of the range), times the block's scale."""
    weight, scales = graph.const(node.input(WEIGHT)), graph.const(node.input(SCALES))
    bits, n = int(node.attr("bits", 4)), int(node.attr("N"))
    if weight is None or scales is None or bits not in (4, 8):
        return None
    blocks = weight.shape[1]
    values = weight.astype(np.int16)
    if bits == 4:
        values = np.stack([values & 0x0F, values >> 4], axis=-1).reshape(n, blocks, -1)
    zeros = graph.const(node.input(ZEROS)) if node.input(ZEROS) else None
    if zeros is not None and zeros.size == n * blocks:
        zero = zeros.reshape(n, blocks, 1).astype(np.float64)
    else:
        zero = 2.0 ** (bits - 1)        # packed zero points: the default is close enough
    return (values - zero) * scales.reshape(n, blocks, 1).astype(np.float64)


def _unsupported(node, ctx, weight, scales) -> str | None:
    if any(not node.has_attr(a) for a in ("N", "K", "block_size")):
        return "N, K or block_size is missing"
    if node.input(G_IDX):
        return "g_idx (act-order block indices) is given"
    if weight is None or scales is None or weight.ndim != 3:
        return "the weight or its scales are not constants [N, blocks, bytes]"
    n, k, block = int(node.attr("N")), int(node.attr("K")), int(node.attr("block_size"))
    if weight.shape[0] != n or weight.shape[1] * block != k or scales.size != n * weight.shape[1]:
        return "the weight is not [N, K / block_size, ...] with one scale per block"
    x = ctx.map(node.input(0))
    rank = ctx.rank(node.input(0))
    if rank is None or rank < 2:
        return "input rank unknown"
    if x is not None and (x.axes != (rank - 1,) or x.labels.size != k):
        return "input is tracked on a non-contracted axis"
    if node.input(BIAS) and ctx.const(node.input(BIAS)) is None:
        return "bias is not a constant"
    if any(ctx.map(node.input(i)) is not None for i in range(1, len(node.proto.input))):
        return "a weight input carries tracked channels"
    return None
