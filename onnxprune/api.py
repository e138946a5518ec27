"""The Python API: ``inspect`` a model's channel groups, ``prune`` it with a verified result.

Both take a path or a ModelProto and never modify it.
"""

from __future__ import annotations

import fnmatch
import functools
import os
from dataclasses import asdict, dataclass

import numpy as np
import onnx

from .allocation import ALLOCATIONS, Plan, allocate
from .allocation.costs import component_costs
from .allocation.latency import LatencyPredictor
from .errors import UserError, VerificationError
from .graph import ModelGraph
from .groups import Analysis, Group, analyze, find_groups
from .calibration import (CalibSource, as_sources, capture_stats, load_calibration,
                          match_batchnorm_statistics, mix)
from .compensation import DAMPING, METHODS, compensate, obs_inputs, obs_patches
from .importance import (CRITERIA, NORMALIZATIONS, REDUCTIONS, ScoringContext, consumed_inputs,
                         normalize, score)
from .importance.sensitivity import adaptive_weights, dead_channels, group_sensitivity
from .io import load_model
from .io.weights import discard_written
from .rewrite import apply_plan
from .rewrite.bodies import has_bodies, rewrite_bodies
from .rewrite.apply import project
from .verify import compare_outputs, count_cost, make_inputs
from .verify.checks import input_problem
from .verify.cost import RECURRENT, Cost, count_params, node_macs

DEFAULT_ROUND_TO = 16  # measured: benchmarks/bench_round_to.py, RESULTS.md
RANKINGS = ("score", "score-per-mac")


@dataclass(frozen=True)
class Strategy:
    """How channels are chosen: the criterion, how member scores combine into a group score
    (``reduction``), how groups are made comparable (``normalization``, for global
    allocation), how the ratio is spread over groups (``allocation``), and the most a single
    group may lose under global allocation (``max_ratio``); ``rank_by="score-per-mac"`` makes
    the global ranking weigh each component's normalized score against the MACs it costs."""

    criterion: str = "l2"
    reduction: str = "sum"
    normalization: str = "mean"    # measured at equal MACs: benchmarks/RESULTS.md (issue 4)
    allocation: str = "uniform"
    max_ratio: float = 0.9
    seed: int = 0
    compensate: str | None = None   # none, bias, obs; default: obs for obspa, else none
    damping: float = DAMPING        # λ of the OBS update, relative to mean(diag H)
    rank_by: str = "score"          # global ranking: "score", or "score-per-mac" (cost-aware)

    @property
    def compensation(self) -> str:
        if self.compensate is not None:
            return self.compensate
        return "obs" if self.criterion in ("obs", "obspa") else "none"

    @property
    def needs_gram(self) -> bool:
        """Does it read Gram matrices (OBS scoring or OBS compensation)?"""
        return self.compensation == "obs" or self.criterion in ("obs", "obspa")

    @property
    def needs(self) -> str | None:
        """What data the strategy reads: "calibration", "synthetic" or None."""
        need = CRITERIA[self.criterion].needs if self.criterion in CRITERIA else "weights"
        if need == "weights" and self.compensation != "none":
            return "synthetic" if self.criterion == "obspa" else "calibration"
        if need == "weights" and self.allocation == "adaptive":
            return "synthetic"     # sensitivity is measured; with no data, on synthetic inputs
        return None if need == "weights" else need

    def check(self, has_calibration: bool = False) -> None:
        for name, value, allowed in (("criterion", self.criterion, tuple(CRITERIA)),
                                     ("group reduction", self.reduction, REDUCTIONS),
                                     ("normalization", self.normalization, NORMALIZATIONS),
                                     ("allocation", self.allocation, ALLOCATIONS),
                                     ("compensation", self.compensation, METHODS),
                                     ("ranking", self.rank_by, RANKINGS)):
            if value not in allowed:
                raise UserError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.needs == "calibration" and not has_calibration:
            what = (f"criterion {self.criterion!r}" if CRITERIA[self.criterion].needs ==
                    "calibration" else f"--compensate {self.compensation}")
            raise UserError(f"{what} needs calibration data (--calib data.npz, or --calib "
                            f"random)")
        if not self.damping > 0.0:
            raise UserError(f"--obs-damping must be positive, got {self.damping}")
        if self.rank_by != "score" and self.allocation != "global":
            raise UserError(f"--rank-by {self.rank_by} ranks groups against each other: it "
                            f"needs --allocation global")
        if not 0.0 < self.max_ratio < 1.0:
            raise UserError(f"max-ratio must be in (0, 1), got {self.max_ratio}")


@dataclass
class Analyzed:
    """A loaded model with its channel analysis: the input to every later stage."""

    model: onnx.ModelProto
    graph: ModelGraph
    analysis: Analysis
    groups: list[Group]
    roots: np.ndarray


def analyze_model(model, exclude: tuple[str, ...] = ()) -> Analyzed:
    model = load_model(model)
    graph = ModelGraph(model)
    analysis = analyze(graph)
    _protect(analysis, exclude)
    groups, roots = find_groups(analysis)
    return Analyzed(model, graph, analysis, groups, roots)


@dataclass(frozen=True)
class Scoring:
    """The calibration statistics and scores of one analysed model under one strategy and
    calibration. None of it depends on the ratio, so a sweep computes it once and every ratio
    reuses it (see :func:`score_model`)."""

    analyzed: Analyzed
    strategy: Strategy
    calib: object
    input_shapes: object
    stats: object
    scored: tuple


def score_model(a: Analyzed, strategy: Strategy | None = None, calib=None,
                input_shapes=None) -> Scoring:
    """Capture the calibration statistics the strategy reads and score every group: the
    ratio-independent half of :func:`prune`, for reuse through its ``scoring`` argument."""
    strategy = strategy or Strategy()
    strategy.check(calib is not None)
    if strategy.needs == "synthetic" and calib is None:
        calib = "synthetic"
    stats = (calibration_stats(a, calib, input_shapes, strategy.needs_gram)
             if strategy.needs else None)
    return Scoring(a, strategy, calib, input_shapes, stats,
                   _scores(a, strategy, stats, input_shapes))


def _protect(analysis: Analysis, patterns: tuple[str, ...]) -> None:
    """--exclude: freeze every channel an excluded node reads or writes."""
    for pattern in patterns:
        hits = [n for n in analysis.graph.nodes
                if fnmatch.fnmatchcase(n.proto.name, pattern) or n.label == pattern]
        if not hits:
            raise UserError(f"--exclude {pattern!r} matches no node name")
        for node in hits:
            for name in list(node.proto.input) + list(node.proto.output):
                analysis.freeze(analysis.map(name), f"excluded by the user ({node.label})")


def inspect(model, exclude: tuple[str, ...] = (), input_shapes=None) -> dict:
    """Channel groups (members, size, prunable or why not), barriers, params and MACs. A model
    that fails the checker is refused: its groups would describe a model nothing can run."""
    a = analyze_model(model, exclude)
    problem = input_problem(a.model, runtime=False)
    if problem:
        raise UserError(problem)
    cost = count_cost(a.model, input_shapes)
    return {
        "opset": a.graph.opset,
        "nodes": len(a.graph.nodes),
        "params": cost.params,
        "macs": cost.macs,
        "groups": [_group_entry(g) for g in a.groups if g.members],
        "barriers": _barriers(a),
    }


def _blame_a_broken_input(function):
    """When pruning fails for a reason other than the user's options, look at the input
    model: if it is itself broken (fails the checker, cannot load on ONNX Runtime), that is the
    error to report, as the user's, rather than a failed rewrite or an internal error."""
    @functools.wraps(function)
    def wrapper(model, *args, **kwargs):
        try:
            return function(model, *args, **kwargs)
        except UserError:
            raise
        except Exception:
            problem = _input_problem(model)
            if problem:
                raise UserError(problem) from None
            raise
    return wrapper


def _input_problem(model) -> str | None:
    try:
        return input_problem(model.model if isinstance(model, Analyzed) else load_model(model))
    except UserError as exc:
        return str(exc)


@_blame_a_broken_input
def prune(model, ratio: float = 0.5, round_to: int = DEFAULT_ROUND_TO,
          exclude: tuple[str, ...] = (), input_shapes=None, verify: bool = True,
          tolerance: float = 1e-4, seed: int = 0, heads: float | None = None,
          mlp: float | None = None, hidden: float | None = None,
          strategy: Strategy | None = None, calib=None, target_macs: float | None = None,
          target_params: float | None = None, steps: int = 1,
          target_latency: float | None = None, latency_threads: int = 1,
          scoring: Scoring | None = None) -> tuple[onnx.ModelProto, dict]:
    """Prune ``ratio`` of the channels of every prunable group; return (model, report).

    ``model`` is a path, a ModelProto, or an :class:`Analyzed` model (its analysis is reused;
    ``exclude`` must then have been given to :func:`analyze_model`).

    ``heads`` and ``mlp`` override ``ratio`` for attention-head groups and for neurons between
    Linear layers. ``hidden`` prunes the hidden size (channels that a LayerNorm or RMSNorm
    reads across); it is never pruned without it, because the norms then average over fewer
    channels and the model computes a different function (the report says so). ``strategy``
    picks the criterion and allocation (default: group L2, uniform); ``calib`` is calibration
    data for the criteria that need it: an ``.npz`` path, ``"random"``, or a list of feed
    dicts. ``target_macs`` / ``target_params`` (fractions of the dense model to keep) replace
    ``ratio`` by the smallest one that reaches them. With ``verify`` (the default) the result
    must pass the full checker, run on ONNX Runtime and match the masked original within
    ``tolerance``; otherwise VerificationError is raised and nothing is returned.

    ``target_latency`` keeps at most that fraction of the dense model's latency on ONNX Runtime
    CPU with ``latency_threads`` threads: the ratio is searched on a per-layer latency table
    (see ``allocation.latency``), the pruned model is timed, and the search is corrected (at
    most ``LATENCY_CORRECTIONS`` times) when the measurement misses the target.

    ``steps`` > 1 prunes iteratively (see :func:`prune_in_steps`).

    ``scoring`` (from :func:`score_model` on the same :class:`Analyzed` model, strategy,
    calibration and input shapes) skips the capture and scoring: pruning one model at many
    ratios then pays for them once.
    """
    by_kind = {k: v for k, v in (("heads", heads), ("mlp", mlp), ("hidden", hidden))
               if v is not None}
    for name, value in [("ratio", ratio)] + list(by_kind.items()):
        if not 0.0 <= value < 1.0:
            raise UserError(f"{name} must be in [0, 1), got {value}")
    if round_to < 1:
        raise UserError(f"round-to must be a positive integer, got {round_to}")
    targets = {k: v for k, v in (("macs", target_macs), ("params", target_params),
                                 ("latency", target_latency)) if v is not None}
    if len(targets) > 1:
        raise UserError("give one of --target-macs, --target-params, --target-latency")
    strategy = strategy or Strategy()
    strategy.check(calib is not None)
    if steps != 1 and target_latency is not None:
        raise UserError("--target-latency prunes in one step (it times the result); drop --steps")
    if steps != 1 and scoring is not None:
        raise UserError("steps re-score the model after each step; drop scoring")
    if steps != 1:
        return prune_in_steps(model, steps, ratio, round_to, exclude, input_shapes, verify,
                              tolerance, seed, by_kind, strategy, calib, target_macs,
                              target_params)
    a = model if isinstance(model, Analyzed) else analyze_model(model, exclude)
    if scoring is None:
        scoring = score_model(a, strategy, calib, input_shapes)  # once: a search re-allocates
    elif (scoring.analyzed is not a or scoring.strategy != strategy
          or scoring.input_shapes != input_shapes
          or not (calib is None or calib is scoring.calib or
                  (isinstance(calib, str) and calib == scoring.calib))):
        raise UserError("scoring was computed for another model, strategy, calibration or "
                        "input shape; call score_model again")
    calib, stats, scored, target = scoring.calib, scoring.stats, scoring.scored, None
    predictor = None
    if targets:
        kind, fraction = next(iter(targets.items()))
        if kind == "latency":
            predictor = LatencyPredictor(a.model, input_shapes, latency_threads)
        ratio, planned = ratio_for_target(a, kind, fraction, round_to, by_kind, strategy,
                                          stats, input_shapes, scored, predictor)
        target = {"kind": kind, "fraction": fraction, "ratio": ratio, "planned": planned}
    plan, removed, notes, base, pruned, inside = _build(
        a, ratio, round_to, by_kind, strategy, stats, scored)
    if predictor is not None:
        plan, removed, notes, base, pruned, inside, ratio = _meet_latency(
            a, fraction, round_to, by_kind, strategy, stats, input_shapes, scored, predictor,
            target, (plan, removed, notes, base, pruned, inside, ratio))
    bodies = _body_rewriter(ratio, round_to, by_kind, strategy)
    report = _report(a, plan, pruned, removed, ratio, round_to, input_shapes)
    report["bodies"] = inside["bodies"]
    report["params"]["planned_after"] -= inside["params_removed"]   # pruned on their own
    report["strategy"] = {**asdict(strategy), "compensate": strategy.compensation,
                          "calibration": _describe(calib, stats), "notes": notes}
    report["ratios_by_kind"] = by_kind
    report["target"] = target
    report["changes_function"] = any(
        g["removed"] for g in report["groups"] if g["kind"] == "hidden")
    if verify:
        masked = _rewrite(base, a, removed, "mask", bodies)[0]
        feeds = make_inputs(a.model, input_shapes, seed)
        result = compare_outputs(pruned, masked, feeds, tolerance)
        discard_written(masked, keep=[pruned, a.model])   # its weight files, if any
        report["check"] = {"checker": result.checker, "runs": result.runs,
                           "same_io": result.same_io, "max_rel_error": result.max_rel_error,
                           "tolerance": tolerance, "ok": result.ok,
                           "inputs": {k: list(v.shape) for k, v in feeds.items()}}
        if not result.ok:
            raise VerificationError(
                "the pruned model failed verification (checker={}, runs={}, same_io={}, "
                "max_rel_error={}); nothing was written".format(
                    result.checker, result.runs, result.same_io, result.max_rel_error))
    return pruned, report


def _build(a: Analyzed, ratio, round_to, by_kind, strategy: Strategy, stats, scored):
    """(plan, removed atoms, notes, compensated original, pruned model, what was pruned
    inside control-flow bodies) at one ratio."""
    plan, removed, notes = _plan(a, ratio, round_to, by_kind, strategy, stats, scored)
    base, more = compensate(a.model, a.analysis, removed, stats, strategy.compensation,
                            strategy.damping)
    pruned, bodies, params_inside = _rewrite(
        base, a, removed, "prune", _body_rewriter(ratio, round_to, by_kind, strategy))
    inside = {"bodies": bodies, "params_removed": params_inside}
    return plan, removed, notes + more, base, pruned, inside


def _rewrite(base: onnx.ModelProto, a: Analyzed, removed, mode: str, bodies
             ) -> tuple[onnx.ModelProto, list[dict], int]:
    """The pruned model or the masked original (``mode``), the bodies of its If, Loop and
    Scan nodes rewritten too (see ``rewrite.bodies``), with what happened inside them and the
    params that went there (which the main graph's plan does not cover)."""
    out = apply_plan(base, a.analysis, removed, mode)
    if not has_bodies(out):
        return out, [], 0
    before = count_params(out)
    summaries = rewrite_bodies(out, bodies, mode)
    return out, summaries, before - count_params(out)


def _body_rewriter(ratio, round_to, by_kind, strategy: Strategy):
    """How a branch or loop body is pruned: as a model of its own, at the same ratios,
    uniformly, by the criterion when it reads weights only (else by L2: calibration does not
    reach inside a body), without compensation; bodies nested in it likewise."""
    data_free = (strategy.criterion in CRITERIA
                 and CRITERIA[strategy.criterion].needs == "weights")
    inner = Strategy(criterion=strategy.criterion if data_free else "l2",
                     reduction=strategy.reduction, seed=strategy.seed, compensate="none")

    def rewrite(model: onnx.ModelProto, mode: str):
        a = analyze_model(model)
        plan, removed, _ = _plan(a, ratio, round_to, by_kind, inner)
        removed_channels = sum(len(p.removed) * g.width for g in a.groups
                               for p in [plan.groups.get(g.id)] if p is not None)
        out, nested, _ = _rewrite(a.model, a, removed, mode, rewrite)
        changed = bool(removed.any()) or any(n["pruned"] for n in nested)
        summary = {"pruned": changed, "criterion": inner.criterion,
                   "groups": sum(1 for g in a.groups if g.prunable and g.size > 1),
                   "channels_removed": removed_channels}
        if nested:
            summary["bodies"] = nested
        return (out if changed else None), summary
    return rewrite


def _meet_latency(a: Analyzed, fraction, round_to, by_kind, strategy, stats, input_shapes,
                  scored, predictor, target: dict, built: tuple) -> tuple:
    """Time the pruned model; while it misses the target (or beats it by more than
    ``LATENCY_SLACK``), search again and build: between a timed ratio that missed and one that
    met the target, by interpolating the timings; on one side only, by aiming the table search
    at the measured error. Returns the slowest build that meets the target, else the last one;
    ``target`` records the timing."""
    timed = []      # (ratio, measured fraction, planned fraction, build)
    for attempt in range(LATENCY_CORRECTIONS + 1):
        measured = predictor.measure(built[4]) / predictor.dense
        timed.append((built[6], measured, target["planned"], built))
        if fraction * (1 - LATENCY_SLACK) <= measured <= fraction or \
                attempt == LATENCY_CORRECTIONS:
            break
        ratio, planned = _next_latency_ratio(timed, fraction), None
        if ratio is None:
            try:
                ratio, planned = ratio_for_target(
                    a, "latency", min(1.0, fraction * target["planned"] / measured), round_to,
                    by_kind, strategy, stats, input_shapes, scored, predictor)
            except UserError:
                break   # nothing smaller to aim at: the report says the target was missed
        if any(abs(ratio - r) < 1e-6 for r, *_ in timed):
            break       # the search came back to a ratio already timed
        built = _build(a, ratio, round_to, by_kind, strategy, stats, scored) + (ratio,)
        if planned is None:     # interpolated: what the table says of this build
            planned = predictor.fraction(_sliced_dims(a, built[1]))
        target["planned"] = planned
    met = [t for t in timed if t[1] <= fraction]
    ratio, measured, planned, built = max(met, key=lambda t: t[1]) if met else timed[-1]
    target.update(ratio=ratio, planned=planned, measured=measured, met=measured <= fraction,
                  corrections=len(timed) - 1, dense_seconds=predictor.dense,
                  pruned_seconds=measured * predictor.dense, threads=predictor.threads)
    return built


def _next_latency_ratio(timed, fraction) -> float | None:
    """Between the largest timed ratio that missed and the smallest that met the target, the
    ratio where the line through their timings crosses it (kept off the ends); None unless
    both sides were timed."""
    missed = [t for t in timed if t[1] > fraction]
    met = [t for t in timed if t[1] <= fraction]
    if not missed or not met:
        return None
    (r0, m0, *_), (r1, m1, *_) = max(missed, key=lambda t: t[0]), min(met, key=lambda t: t[0])
    if r1 <= r0 or m0 <= m1:
        return None     # timing noise put them out of order: fall back on the table
    cross = r0 + (m0 - fraction) * (r1 - r0) / (m0 - m1)
    return min(max(cross, r0 + 0.1 * (r1 - r0)), r1 - 0.1 * (r1 - r0))


def prune_in_steps(model, steps: int, ratio: float, round_to: int, exclude, input_shapes,
                   verify: bool, tolerance: float, seed: int, by_kind: dict,
                   strategy: Strategy, calib, target_macs=None, target_params=None):
    """Prune in ``steps`` smaller steps, each re-scoring (and re-calibrating, re-compensating)
    the model the previous step left. Each step keeps the same share of what is left, so that
    together they remove ``ratio`` (or reach the target); each step is verified on its own
    against its own masked input, so the chain is verified. The report is the last step's, with
    the dense model's params and MACs as "before" and every step summarized in ``steps``."""
    if not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be a positive integer, got {steps}")
    if isinstance(model, Analyzed):     # each step analyses its own input again
        raise UserError("pruning in steps needs a path or a ModelProto (with exclude=...), "
                        "not an analysed model")
    current = load_model(model)
    dense = count_cost(current, input_shapes)
    kind, fraction = (("macs", target_macs) if target_macs is not None else
                      ("params", target_params) if target_params is not None else (None, None))
    if kind == "macs" and dense.macs is None:
        raise UserError("the MACs of this model are unknown (give --input-shape, or use "
                        "--target-params)")

    def share(r: float) -> float:       # per-step ratio: (1 − r)^(1/steps) of what is left
        return 1.0 - (1.0 - r) ** (1.0 / steps)

    summary, report = [], None
    for k in range(1, steps + 1):
        targets = {}
        if kind is not None:
            now = count_cost(current, input_shapes)
            have = now.macs if kind == "macs" else now.params
            want = (fraction ** (k / steps)) * (dense.macs if kind == "macs" else dense.params)
            targets = {f"target_{kind}": min(1.0, want / have)}
        current, report = prune(current, share(ratio), round_to, exclude, input_shapes, verify,
                                tolerance, seed, strategy=strategy, calib=calib,
                                **{name: share(v) for name, v in by_kind.items()}, **targets)
        summary.append({"step": k, "ratio": report["ratio"], "params": report["params"]["after"],
                        "macs": report["macs"]["after"],
                        "check_ok": (report.get("check") or {}).get("ok")})
    report["steps"] = summary
    report["ratio"] = ratio
    report["params"]["before"], report["macs"]["before"] = dense.params, dense.macs
    if kind is not None:
        after = report["macs" if kind == "macs" else "params"]["after"]
        report["target"] = {"kind": kind, "fraction": fraction, "ratio": None,
                            "planned": after / (dense.macs if kind == "macs" else dense.params)}
    return current, report


def masked_original(model, ratio: float = 0.5, round_to: int = DEFAULT_ROUND_TO,
                    exclude: tuple[str, ...] = (), by_kind: dict[str, float] | None = None,
                    strategy: Strategy | None = None, stats=None
                    ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(pruned, masked original) without verification: the pair tests compare."""
    a = model if isinstance(model, Analyzed) else analyze_model(model, exclude)
    strategy = strategy or Strategy()
    removed = plan_for(a, ratio, round_to, by_kind, strategy, stats)[1]
    base = compensate(a.model, a.analysis, removed, stats, strategy.compensation,
                      strategy.damping)[0]
    bodies = _body_rewriter(ratio, round_to, by_kind, strategy)
    return (_rewrite(base, a, removed, "prune", bodies)[0],
            _rewrite(base, a, removed, "mask", bodies)[0])


def plan_for(a: Analyzed, ratio: float, round_to: int,
             by_kind: dict[str, float] | None = None,
             strategy: Strategy | None = None, stats=None) -> tuple[Plan, np.ndarray]:
    """The plan and the removed-atom mask (one ratio per group kind)."""
    plan, removed, _ = _plan(a, ratio, round_to, by_kind, strategy or Strategy(), stats)
    return plan, removed


def calibration_stats(a: Analyzed, calib, input_shapes=None, gram: bool = True):
    """Per-channel statistics of the tensors linear layers read, with the Gram matrices OBS
    needs. ``calib``: an .npz path, an image folder, a list of feed dicts, "random" (random
    inputs), "synthetic" (random inputs whose activations are matched to every
    BatchNormalization's running statistics; see ``calibration.synthetic``), or one or more
    :class:`CalibSource` (several are fused by their weights, see ``calibration.sources``)."""
    sources = as_sources(calib)
    parts = [_source_stats(a, s, input_shapes, gram) for s in sources]
    if len(parts) == 1:
        return parts[0]
    return mix(parts, [s.weight for s in sources])


def _source_stats(a: Analyzed, source: CalibSource, input_shapes, gram: bool):
    probe, matched = None, 0
    if source.data == "synthetic":
        probe, matched = match_batchnorm_statistics(a.model)
    batches = _batches(a, source, input_shapes)
    stats = capture_stats(a.model, consumed_inputs(a.analysis), batches,
                          obs_inputs(a.analysis) if gram else set(),
                          obs_patches(a.analysis) if gram else None, probe)
    stats.matched_norms, stats.batches = matched, batches
    return stats


@_blame_a_broken_input
def sensitivity(model, calib: str | list = "synthetic", ratios=(0.25, 0.5, 0.75),
                strategy: Strategy | None = None, input_shapes=None, exclude=(),
                progress=None) -> dict:
    """Per-group output distortion when the group alone is pruned at each ratio, and the
    dead-channel rate where linear layers read (see ``importance.sensitivity``)."""
    for r in ratios:
        if not 0.0 < r < 1.0:
            raise UserError(f"ratios must be in (0, 1), got {r}")
    strategy = strategy or Strategy()
    strategy.check(True)
    a = model if isinstance(model, Analyzed) else analyze_model(model, exclude)
    stats = calibration_stats(a, calib, input_shapes, strategy.needs_gram)
    return {"criterion": strategy.criterion, "compensation": strategy.compensation,
            "ratios": list(ratios),
            "calibration": _describe(calib, stats),
            "groups": group_sensitivity(a, stats, stats.batches, list(ratios), strategy,
                                        progress),
            "dead_channels": dead_channels(a, stats)}


def _describe(calib, stats) -> dict | None:
    if stats is None:
        return None
    sources = as_sources(calib)
    names = []
    for source in sources:
        if source.data == "synthetic":
            name = (f"synthetic: random inputs, activations matched to the running statistics "
                    f"of {stats.matched_norms} BatchNormalization layers")
        elif source.data == "random":
            name = "random inputs"
        else:
            name = source.describe()
        if source.preprocess:
            name += f" (preprocess: {source.preprocess})"
        names.append(name if len(sources) == 1 else f"{name} (weight {source.weight:g})")
    return {"source": "; ".join(names), "samples": stats.samples}


def _plan(a: Analyzed, ratio, round_to, by_kind, strategy: Strategy, stats=None,
          scored=None):
    """(plan, removed atoms, notes); ``scored`` reuses ``_scores``' result."""
    scores, ranking, notes, weights = scored or _scores(a, strategy, stats)
    plan = allocate(a.analysis, a.groups, a.roots, scores, ratio, round_to, by_kind,
                    strategy.allocation, strategy.max_ratio, ranking, weights)
    return plan, plan.removed_atoms(a.roots), list(notes)


def _scores(a: Analyzed, strategy: Strategy, stats=None, input_shapes=None):
    ctx = ScoringContext(a.analysis, a.roots, a.groups, strategy.reduction, strategy.seed,
                         stats, input_shapes=input_shapes)
    scores = score(strategy.criterion, ctx)
    ranking = normalize(scores, [g for g in a.groups if g.prunable], strategy.normalization)
    if strategy.rank_by == "score-per-mac":
        costs, unit = component_costs(a.analysis, a.roots, node_macs(a.model, input_shapes))
        ranking = ranking / np.maximum(costs, 1e-12)
        ctx.notes.append(f"global ranking: normalized score per {unit[:-1]} a component costs")
    weights = None
    if strategy.allocation == "adaptive":
        weights = adaptive_weights(a, stats, stats.batches, strategy)
        ctx.notes.append("adaptive ratio multipliers per group: " + ", ".join(
            f"{g}: {w:.2f}" for g, w in sorted(weights.items())))
    return scores, ranking, ctx.notes, weights


def _batches(a: Analyzed, source: CalibSource, input_shapes):
    """The calibration feeds themselves (what sensitivity runs the model on)."""
    if isinstance(source.data, str):
        return load_calibration("random" if source.data == "synthetic" else source.data,
                                a.model, input_shapes, preprocess=source.preprocess)
    return source.data


MAX_TARGET_RATIO = 0.95
LATENCY_CORRECTIONS = 3     # re-searches when the timed model misses a latency target
LATENCY_SLACK = 0.05        # ... or beats it by more than this share of the target


def ratio_for_target(a: Analyzed, kind: str, fraction: float, round_to: int, by_kind,
                     strategy: Strategy, stats=None, input_shapes=None,
                     scored=None, predictor=None) -> tuple[float, float]:
    """The smallest ratio (for every group without a ratio of its own) whose plan keeps at
    most ``fraction`` of the dense model's MACs, params or latency (``predictor``, a
    :class:`LatencyPredictor`); returns (ratio, planned fraction). Found by bisection on the
    plan's own cost model, which the report checks against the pruned model."""
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--target-{kind} must be in (0, 1], got {fraction}")
    if kind == "latency":
        def kept(ratio: float) -> float:
            _, removed, _ = _plan(a, ratio, round_to, by_kind, strategy, stats, scored)
            return predictor.fraction(_sliced_dims(a, removed))

        return _bisect(kept, kind, fraction, scored)
    per_node = node_macs(a.model, input_shapes) if kind == "macs" else None
    if kind == "macs" and (per_node is None or None in per_node):
        raise UserError("the MACs of this model are unknown (give --input-shape, or use "
                        "--target-params)")
    dense = int(sum(per_node)) if kind == "macs" else count_params(a.model)
    scored = scored or _scores(a, strategy, stats, input_shapes)

    def kept(ratio: float) -> float:
        _, removed, _ = _plan(a, ratio, round_to, by_kind, strategy, stats, scored)
        shapes = _sliced_shapes(a, removed)
        value = (_planned_macs(a, removed, _sizes(shapes), per_node) if kind == "macs"
                 else _planned_params(a, shapes, dense))
        return value / dense

    return _bisect(kept, kind, fraction, scored)


def _bisect(kept, kind: str, fraction: float, scored) -> tuple[float, float]:
    """The smallest ratio with ``kept(ratio) <= fraction`` (kept falls as the ratio grows)."""
    lo, hi = 0.0, MAX_TARGET_RATIO
    if scored[3]:     # adaptive: the ratio scales per-group multipliers, some below 1
        hi = MAX_TARGET_RATIO / min(min(scored[3].values()), 1.0)
    best = kept(hi)
    if best > fraction:
        raise UserError(f"cannot reach --target-{kind} {fraction:g}: even at ratio {hi:.2f} the "
                        f"plan keeps {best:.1%} (frozen and excluded groups stay whole)")
    for _ in range(14):
        mid = (lo + hi) / 2
        value = kept(mid)
        if value <= fraction:
            hi, best = mid, value
        else:
            lo = mid
    return hi, best


def _group_entry(g: Group, plan: Plan | None = None) -> dict:
    entry = {"id": g.id, "kind": g.kind, "channels": g.size * g.width, "units": g.size,
             "width": g.width,
             "prunable": g.prunable and g.size > 1, "sources": g.sources, "members": g.members}
    if not g.prunable:
        entry["reason"] = g.reason
    elif g.size <= 1:
        entry["reason"] = "a single channel (at least one is kept)"
    if plan is not None:
        entry["kept"] = plan.groups[g.id].kept
        entry["removed"] = plan.groups[g.id].removed
    return entry


def _barriers(a: Analyzed) -> list[dict]:
    return [{"node": a.graph.nodes[i].label, "op": a.graph.nodes[i].op, "reason": r}
            for i, r in sorted(a.analysis.barriers.items())]


def _report(a: Analyzed, plan: Plan, pruned, removed, ratio, round_to, input_shapes) -> dict:
    per_node = node_macs(a.model, input_shapes)
    before = Cost(count_params(a.model),
                  None if per_node is None or None in per_node else int(sum(per_node)))
    after = count_cost(pruned, input_shapes)
    shapes = _sliced_shapes(a, removed)
    return {
        "ratio": ratio, "round_to": round_to,
        "params": {"before": before.params, "after": after.params,
                   "planned_after": _planned_params(a, shapes, before.params)},
        "macs": {"before": before.macs, "after": after.macs,
                 "planned_after": _planned_macs(a, removed, _sizes(shapes), per_node)},
        "groups": [_group_entry(g, plan) for g in a.groups if g.members],
        "barriers": _barriers(a),
    }


def _sizes(shapes) -> dict[tuple[int, int], tuple[int, int]]:
    """(node, input) → (elements before, elements after), from ``_sliced_shapes``."""
    return {key: (int(np.prod(old, dtype=np.int64)), int(np.prod(new, dtype=np.int64)))
            for key, (old, new) in shapes.items()}


def _sliced_dims(a: Analyzed, removed) -> dict[tuple[int, int], list[int]]:
    """(node, input) → dims after slicing, for every sliced constant."""
    return {key: new for key, (_, new) in _sliced_shapes(a, removed).items()}


def _sliced_shapes(a: Analyzed, removed) -> dict[tuple[int, int], tuple[list, list]]:
    """(node, input) → (dims before, dims after) for every sliced constant."""
    keep_axes: dict[tuple[int, int], dict[int, np.ndarray]] = {}
    for use in a.analysis.params:
        vectors = project(~removed[use.labels])
        axes = keep_axes.setdefault((use.node, use.input_index), {})
        for p, l in use.axes.items():
            axes[p] = axes.get(p, vectors[l]) & vectors[l]
    shapes = {}
    for (node, idx), axes in keep_axes.items():
        value = a.graph.const(a.graph.nodes[node].input(idx))
        dims = list(value.shape)
        for p, vec in axes.items():
            dims[p] = int(vec.sum())
        shapes[(node, idx)] = (list(value.shape), dims)
    return shapes


def _planned_params(a: Analyzed, shapes, before: int) -> int:
    """``before`` less what the sliced constants lose (``shapes``: ``_sliced_shapes``); a
    weight stored quantized also loses per-axis scales and zero points along the cut axis."""
    seen, total = set(), before
    for (node, idx), (old, new) in shapes.items():
        name = a.graph.nodes[node].input(idx)
        if name in seen:
            continue
        seen.add(name)
        total -= int(np.prod(old, dtype=np.int64)) - int(np.prod(new, dtype=np.int64))
        source = a.graph.quantized_source(name)
        for k in (1, 2) if source is not None else ():
            per_axis = a.graph.const(source.input(k)) if source.input(k) else None
            if per_axis is not None and per_axis.size > 1:
                axis = int(source.attr("axis", 1)) % len(old)
                total -= per_axis.size - per_axis.size * new[axis] // old[axis]
    return total


def _planned_macs(a: Analyzed, removed, sizes, per_node) -> int | None:
    """A Conv/Gemm/MatMul costs (output positions × weight elements): scale by the weight;
    a MatMul of two activations scales with the share of its output that stays; a recurrent
    op by its W and R together."""
    if per_node is None or any(m is None for m in per_node):
        return None
    total = 0.0
    for index, macs in enumerate(per_node):
        node = a.graph.nodes[index]
        if node.op in RECURRENT and macs:   # steps × batch × (|W| + |R|)
            old, new = zip(*(sizes.get((index, k), (a.graph.const(node.input(k)).size,) * 2)
                             for k in (1, 2)))
            total += macs * sum(new) / sum(old)
            continue
        if (index, 1) in sizes:
            old, new = sizes[(index, 1)]
            total += macs * new / old
            continue
        # A MatMul of two activations (attention) shrinks with the heads it keeps.
        out = a.analysis.map(a.graph.nodes[index].proto.output[0]) if macs else None
        total += macs * (float(np.mean(~removed[out.labels])) if out is not None else 1.0)
    return int(round(total))


def default_output_path(path: str | os.PathLike) -> str:
    root, ext = os.path.splitext(str(path))
    return f"{root}.pruned{ext or '.onnx'}"
