"""How much a residual block changes its input: 1 − cos(x, x + f(x)) per sample, averaged
over the calibration batches (ShortGPT's block influence). A block whose output points where
its input pointed does little; it is the first to go when pruning depth."""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import ModelGraph
from ..graph.residual import ResidualBlock
from ..runtime import session
from ..runtime.run import exposing


def block_influence(model: onnx.ModelProto, blocks: list[ResidualBlock], batches,
                    graph: ModelGraph | None = None) -> np.ndarray:
    """One score per block: the mean over samples of 1 − cos(x, y), each sample's tensors
    flattened (0 for a block that leaves its input as it is)."""
    names = list(dict.fromkeys([b.skip for b in blocks] + [b.branch for b in blocks]))
    graph = graph or ModelGraph(model, infer_shapes=False)     # the one blocks came from
    biases = [graph.const(b.bias) if b.bias else None for b in blocks]  # a fused norm's
    sess = session(exposing(model, names))
    total, count = np.zeros(len(blocks)), 0
    for feeds in batches:
        values = dict(zip(names, sess.run(names, feeds)))
        for k, block in enumerate(blocks):
            x = values[block.skip].astype(np.float64)
            y = x + values[block.branch].astype(np.float64)     # what the block passes on
            if biases[k] is not None:
                y = y + biases[k].astype(np.float64)
            x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
            norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
            cos = np.where(norms > 0, (x * y).sum(axis=1) / np.maximum(norms, 1e-30), 1.0)
            total[k] += float((1.0 - cos).sum())
        count += len(next(iter(values.values())))
    return total / max(count, 1)
