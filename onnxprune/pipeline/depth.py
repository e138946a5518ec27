"""Depth pruning: remove whole residual blocks (``--blocks``), those that change the
residual stream least on the calibration inputs (generated ones when none are given), and
check the result against its own oracle: the original with those blocks' branches zeroed.
Width pruning then runs on the shallower model (see ``prune``)."""

from __future__ import annotations

import numpy as np
import onnx

from ..calibration import as_sources, source_batches
from ..errors import UserError, VerificationError
from ..graph import ModelGraph
from ..graph.residual import residual_blocks
from ..importance.depth import block_influence
from ..progress import task
from ..runtime.feeds import batch_axes
from ..rewrite.depth import drop_blocks
from ..verify import compare_outputs
from .options import PruneOptions


def block_count(blocks: float, candidates: int) -> int:
    """``--blocks``: a number of blocks (1 or more) or a fraction of the candidates."""
    count = int(blocks) if blocks >= 1 else int(round(blocks * candidates))
    if blocks >= 1 and blocks != int(blocks):
        raise UserError(f"--blocks is a whole number of blocks or a fraction below 1, "
                        f"got {blocks:g}")
    if candidates == 0:
        raise UserError("--blocks: the model has no residual block that can go whole (an Add "
                        "of a tensor and a branch computed from it, of one shape)")
    if not 0 < count < candidates:
        raise UserError(f"--blocks {blocks:g} asks for {count} of the {candidates} residual "
                        f"blocks; give 1 to {candidates - 1}")
    return count


def _one_by_one(model: onnx.ModelProto, batches: list[dict]) -> list[dict]:
    """The same samples, one per batch (each input split on its batch axis)."""
    axes = batch_axes(model)
    out = []
    for feeds in batches:
        stacked = [n for n in feeds if axes.get(n) is not None]
        count = feeds[stacked[0]].shape[axes[stacked[0]]] if stacked else 1
        out += [{n: v if axes.get(n) is None else np.take(v, [i], axis=axes[n])
                 for n, v in feeds.items()} for i in range(count)]
    return out


def prune_depth(model: onnx.ModelProto, options: PruneOptions, check_feeds, progress=None
                ) -> tuple[onnx.ModelProto, dict]:
    """The model (loaded: ``io.load_model``) without its ``options.blocks`` least influential
    residual blocks, and the report's ``depth`` section. VerificationError when the result
    differs from the original with those branches zeroed."""
    graph = ModelGraph(model)
    blocks = residual_blocks(graph)
    count = block_count(options.blocks, len(blocks))
    calib = options.calib if options.calib is not None else "random"
    with task(progress, "scoring residual blocks"):
        batches = [f for s in as_sources(calib)
                   for f in source_batches(s, model, options.input_shapes, options.seed)]
        try:
            scores = block_influence(model, blocks, batches, graph)
        except Exception:  # noqa: BLE001 - models that take one sample at a time (a cache)
            scores = block_influence(model, blocks, _one_by_one(model, batches), graph)
    order = np.argsort(scores, kind="stable")[:count]
    chosen = [blocks[i] for i in sorted(order)]
    pruned, masked = drop_blocks(model, chosen, "prune"), drop_blocks(model, chosen, "mask")
    feeds, _ = check_feeds(model, options)
    with task(progress, "checking the shallower model against the zeroed branches"):
        result = compare_outputs(pruned, masked, feeds, options.tolerance)
    if not result.ok:
        raise VerificationError(
            f"the model without {count} residual blocks failed verification "
            f"(checker={result.checker}, runs={result.runs}, same_io={result.same_io}, "
            f"max rel error={result.max_rel_error})")
    return pruned, {
        "candidates": len(blocks),
        "removed": [{"block": blocks[i].label, "influence": float(scores[i])}
                    for i in sorted(order)],
        "scored_on": "the --calib inputs" if options.calib is not None else "random inputs",
        "check": {"checker": result.checker, "runs": result.runs, "same_io": result.same_io,
                  "max_rel_error": result.max_rel_error, "ok": result.ok},
    }
