"""The ratio-independent half of a prune: calibration statistics and the score of every
component. A sweep computes them once and every ratio reuses them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..allocation.costs import component_costs
from ..calibration import (CalibSource, as_sources, capture_stats, dequantized_inputs, gram_inputs,
                           match_batchnorm_statistics, mix, patch_inputs, source_batches)
from ..errors import UserError
from ..groups import reads_linearly
from ..rules import rule_for
from ..importance import (ScoringContext, consumed_inputs, group_output_energy, normalize,
                          score)
from ..runtime import node_macs
from .analyze import Analyzed
from .options import Strategy
from .sensitivity import adaptive_weights


@dataclass
class GroupScores:
    """One score per component (indexed by root atom), the ranking a global allocation uses
    (scores made comparable across groups), notes for the report, the per-group ratio
    multipliers of adaptive allocation (None otherwise) and the per-group rounding offsets
    of a latency target's search (None: the nearest multiple of round_to)."""

    scores: np.ndarray
    ranking: np.ndarray
    notes: list[str]
    weights: dict[int, float] | None = None
    offsets: dict[int, float] | None = None


@dataclass(frozen=True)
class Scoring:
    """The calibration statistics and scores of one analysed model under one strategy,
    calibration, input shapes and seed (see :func:`score_model`)."""

    analyzed: Analyzed
    strategy: Strategy
    calib: object
    input_shapes: object
    seed: int
    stats: object
    scored: GroupScores
    warnings: tuple[str, ...] = ()

    def fits(self, analyzed: Analyzed, strategy: Strategy, calib, input_shapes,
             seed: int) -> bool:
        """Was it computed for exactly these?"""
        same_calib = (calib is None or calib is self.calib
                      or (isinstance(calib, str) and calib == self.calib))
        return (self.analyzed is analyzed and self.strategy == strategy and same_calib
                and self.input_shapes == input_shapes and self.seed == seed)


def score_model(a: Analyzed, strategy: Strategy | None = None, calib=None, input_shapes=None,
                seed: int = 0, progress=None, executor=None) -> Scoring:
    """Capture the calibration statistics the strategy reads and score every group: the
    ratio-independent half of a prune, for reuse through ``prune(..., scoring=...)``.
    ``executor`` (``onnxprune.parallel``): where one-per-component or one-per-group
    measurements run (distortion, adaptive); the scores do not depend on it."""
    strategy = strategy or Strategy()
    if strategy.needs == "synthetic" and calib is None:
        calib = "synthetic"
    stats = (calibration_stats(a, calib, input_shapes, strategy.needs_gram, seed, progress)
             if strategy.needs else None)
    return Scoring(a, strategy, calib, input_shapes, seed, stats,
                   group_scores(a, strategy, stats, input_shapes, seed, progress, executor),
                   data_free_warnings(a, calib, stats))


def data_free_warnings(a: Analyzed, calib, stats) -> tuple[str, ...]:
    """Synthetic statistics without a BatchNormalization to match are those of N(0, 1)
    noise, and nothing else would say so: most exports fold BN into the convs."""
    synthetic = any(s.data == "synthetic" for s in as_sources(calib)) if calib else False
    if not synthetic or stats is None or stats.matched_norms:
        return ()
    biased = sum(1 for n in a.graph.nodes if reads_linearly(n)
                 and _own_bias(rule_for(n).linear_view(n, a.graph), n))
    folded = (f"none in the model, and {biased} linear layers carry biases of their own, so it "
              f"was probably folded into them" if biased else "none in the model")
    return (f"synthetic calibration found no BatchNormalization to match ({folded}): its "
            f"statistics are those of N(0, 1) noise, which can score and re-fit worse than "
            f"l2; give real samples with --calib (a few dozen unlabeled ones are enough), or "
            f"--calib inverted (model inversion, no data)",)


def group_scores(a: Analyzed, strategy: Strategy, stats=None, input_shapes=None,
                 seed: int = 0, progress=None, executor=None) -> GroupScores:
    """Score every component by the strategy's criterion, and what allocation reads of it."""
    ctx = ScoringContext(a.analysis, a.roots, a.groups, strategy.reduction, seed, stats,
                         input_shapes=input_shapes, progress=progress, executor=executor)
    scores = score(strategy.criterion, ctx)
    prunable = [g for g in a.groups if g.prunable]
    energy = None
    if strategy.normalize_by == "energy":
        energy = group_output_energy(ctx)
        unread = [g.id for g in prunable if g.size > 1 and g.id not in energy]
        if unread:
            ctx.notes.append(f"energy normalization: {len(unread)} group(s) read by no layer "
                             f"with calibration statistics keep their raw scores (e.g. group "
                             f"{unread[0]})")
    ranking = normalize(scores, prunable, strategy.normalize_by, energy)
    if strategy.rank_by == "score-per-mac":
        costs, unit = component_costs(a.analysis, a.roots, node_macs(a.model, input_shapes))
        ranking = ranking / np.maximum(costs, 1e-12)
        ctx.notes.append(f"global ranking: normalized score per {unit[:-1]} a component costs")
    weights = None
    if strategy.allocation == "adaptive":
        weights = adaptive_weights(a, stats, stats.batches, strategy, progress, seed,
                                   executor)
        ctx.notes.append("adaptive ratio multipliers per group: " + ", ".join(
            f"{g}: {w:.2f}" for g, w in sorted(weights.items())))
    return GroupScores(scores, ranking, ctx.notes, weights)


def _own_bias(view, node) -> bool:
    """Does the linear layer carry a bias of its own (as its rule describes it)?"""
    return view is not None and view.bias is not None and view.bias[0] == node.index


def calibration_stats(a: Analyzed, calib, input_shapes=None, gram: bool = True, seed: int = 0,
                      progress=None):
    """Per-channel statistics of the tensors linear layers read, with the Gram matrices OBS
    needs. ``calib``: an .npz path, an image folder, a list of feed dicts, "random" (random
    inputs), "synthetic" (random inputs whose activations are matched to every
    BatchNormalization's running statistics; see ``calibration.synthetic``), or one or more
    :class:`CalibSource` (several are fused by their weights, see ``calibration.sources``).
    ``seed`` draws the random and synthetic inputs."""
    sources = as_sources(calib)
    parts = [_source_stats(a, s, input_shapes, gram, seed, progress) for s in sources]
    if len(parts) == 1:
        return parts[0]
    return mix(parts, [s.weight for s in sources])


def _source_stats(a: Analyzed, source: CalibSource, input_shapes, gram: bool, seed: int,
                  progress):
    probe, matched = None, 0
    if source.data == "synthetic":
        probe, matched = match_batchnorm_statistics(a.model)
    batches = calibration_batches(a, source, input_shapes, seed, progress)
    stats = capture_stats(a.model, consumed_inputs(a.analysis), batches,
                          gram_inputs(a.analysis) if gram else set(),
                          patch_inputs(a.analysis) if gram else None, probe, progress,
                          dequantized_inputs(a.analysis))
    stats.matched_norms, stats.batches = matched, batches
    return stats


def calibration_batches(a: Analyzed, source: CalibSource, input_shapes, seed: int = 0,
                        progress=None):
    """The calibration feeds themselves (what sensitivity runs the model on)."""
    return source_batches(source, a.model, input_shapes, seed, progress=progress)


def describe(calib, stats) -> dict | None:
    """The calibration as the report names it: its source(s) and sample count."""
    if stats is None:
        return None
    sources = as_sources(calib)
    names = []
    for source in sources:
        if source.data == "synthetic" and stats.matched_norms:
            name = (f"synthetic: random inputs, activations matched to the running statistics "
                    f"of {stats.matched_norms} BatchNormalization layers")
        elif source.data == "synthetic":
            name = "synthetic: N(0, 1) random inputs (no BatchNormalization to match)"
        elif source.data == "random":
            name = "random inputs"
        elif source.data == "natural":
            name = "natural: procedural dead-leaves images (no data)"
        elif source.data == "inverted":
            name = ("inverted: dead-leaves images optimized through the model towards its "
                    "classes and BatchNorm statistics (no data)")
        else:
            name = source.describe()
        if source.preprocess:
            name += f" (preprocess: {source.preprocess})"
        names.append(name if len(sources) == 1 else f"{name} (weight {source.weight:g})")
    return {"source": "; ".join(names), "samples": stats.samples}


def check_scoring(scoring: Scoring, a: Analyzed, strategy: Strategy, calib, input_shapes,
                  seed: int) -> None:
    if not scoring.fits(a, strategy, calib, input_shapes, seed):
        raise UserError("scoring was computed for another model, strategy, calibration, input "
                        "shape or seed; call score_model again")

