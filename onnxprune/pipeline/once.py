"""One prune: analyse, score (once: a target search re-allocates many times), plan at a
ratio or search the ratio for a target, compensate, rewrite, and prove the result against the
masked original."""

from __future__ import annotations

import dataclasses

import onnx

from ..allocation.latency import LatencyPredictor
from ..allocation.rounding import spread_offset
from ..calibration import (GENERATED, as_sources, load_calibration, load_check_data,
                           source_batches)
from ..errors import UserError, VerificationError
from ..graph import ModelGraph
from ..io.weights import WeightStore, discard_written
from ..progress import task
from ..rewrite import changed_io
from ..rules import rule_for
from ..runtime import count_cost, count_params, make_inputs
from ..verify import compare_outputs, input_problem, unknown_ops
from .analyze import Analyzed, analyze_model
from .build import Built, build, masked_of
from .diagnose import dense_failure, first_divergence
from .fidelity import fidelity_to_dense
from .latency_cost import PlanLatency
from .options import PruneOptions
from .plan import MacCounter, planned_params
from .recover import kept_channels
from .report import (CHECKED_FROM_FILES, CHECKED_IN_MEMORY, CheckSection, CostSection,
                     PruneReport, TargetSection, barriers, group_entry, why_nothing_pruned)
from .scoring import GroupScores, Scoring, check_scoring, describe, score_model
from .targets import TargetSearch, meet_latency, ratio_for_target


def prune_step(model, options: PruneOptions, scoring: Scoring | None = None,
               progress=None, dense: onnx.ModelProto | None = None
               ) -> tuple[onnx.ModelProto, PruneReport]:
    """One step of :func:`prune` (options already checked), with the report as a record.
    ``dense``: the model fidelity is measured against, when ``model`` is already a reduced
    copy of it (depth pruning ran first); ``model`` itself by default."""
    if isinstance(model, Analyzed):
        a = model
    else:
        with task(progress, "reading and analysing the graph (shapes, channel groups)"):
            a = analyze_model(model, options.exclude, options.allow_cache_change)
    if options.allow_cache_change and not any(n.get("io") for n in a.analysis.notes.values()):
        raise UserError("--allow-cache-change: the model has no KV cache whose heads pruning "
                        "could resize (GroupQueryAttention's past/present, or a past input "
                        "joined to the new keys and values by Concat)")
    # Read first: a check file or calibration data that does not fit fails before any work.
    checked_on = check_feeds(a.model, options) if options.verify else None
    strategy, shapes = options.strategy, options.input_shapes
    if scoring is None:
        with task(progress, f"scoring the channels ({strategy.criterion})"):
            scoring = score_model(a, strategy, options.calib, shapes, options.seed, progress,
                                  options.executor)
    else:
        check_scoring(scoring, a, strategy, options.calib, shapes, options.seed)
    search = TargetSearch(a, options.round_to, options.by_kind, strategy, scoring.scored,
                          MacCounter(a, shapes), seed=options.seed)
    ratio, target = options.ratio, None
    if options.target is not None:
        kind, fraction = options.target
        if kind == "latency":
            search.predictor = LatencyPredictor(a.model, shapes, options.latency_threads,
                                                progress, options.latency_table,
                                                device=options.latency_device)
            search.priced = PlanLatency(a, search.predictor)
            if strategy.allocation == "latency":
                search.latency = search.priced
            else:
                search.scored = spread_rounding(a, search.scored)
        with task(progress, f"searching the ratio for --target-{kind}"):
            ratio, planned = ratio_for_target(search, kind, fraction)
        target = TargetSection(kind, fraction, ratio, planned)
        if kind == "latency":
            target.table_reaches = search.table_reaches
            target.spread_rounding = search.scored.offsets is not None
    with task(progress, "planning, compensating and rewriting"):
        built = build(a, ratio, options.round_to, options.by_kind, strategy, scoring.stats,
                      search.scored, options.seed, progress, search.latency)
    if search.predictor is not None and search.predictor.device is not None:
        target.device, target.met = search.predictor.device, target.planned <= target.fraction
    elif search.predictor is not None:
        with task(progress, "timing the pruned model against the target"):
            built = _timed_to_target(search, target, scoring.stats, built)
    if search.predictor is not None:
        target.table_reused, target.table_timed = search.predictor.save()
        target.table_stale = search.predictor.stale
    report = _report(a, built, options, search.macs, scoring, target)
    report.warnings.extend(scoring.warnings)
    report.kept_channels = kept_channels(a, built.removed)
    report.nothing_pruned = why_nothing_pruned(
        report.groups, report.barriers, options.round_to,
        [n.op for n in a.graph.nodes if getattr(rule_for(n), "opaque", True)])
    if options.verify:
        report.check = _verify(a, built, options, checked_on, progress)
    if options.verify and options.fidelity:
        with task(progress, "comparing the pruned model with the dense one"):
            report.fidelity = measure_fidelity(a.model if dense is None else dense,
                                               built.pruned, options, scoring,
                                               changed_io(a.analysis, built.removed),
                                               report.macs.before)
        if report.fidelity is not None and report.fidelity.warning:
            report.warnings.append(report.fidelity.warning)
    return built.pruned, report


def spread_rounding(a: Analyzed, scored: GroupScores) -> GroupScores:
    """``scored`` with each group's rounding offset spread (``spread_offset``). A uniform
    ratio rounds every group to a multiple of ``round_to``, so groups of one size lose their
    step at the same ratio: with ``--round-to 16``, RegNetY-400MF's plan jumped from 80 % to
    34 % of the MACs between ratios 0.25 and 0.3, and its 70 % latency target timed at 44 %.
    Spread, they lose it one after another, and the timed search can land near the
    target."""
    offsets = {g.id: spread_offset(k) for k, g in enumerate(a.groups)}
    return dataclasses.replace(scored, offsets=offsets)


def measure_fidelity(dense, pruned, options: PruneOptions, scoring: Scoring | None = None,
                     io: dict | None = None, macs_per_sample: int | None = None):
    """The pruned model against the dense one on the first inputs both take: fresh samples of
    a generated calibration source (the ones calibration saw were fitted to, so they would
    flatter a re-fit), the calibration inputs given, else 32 seeded random samples, else the
    check inputs (which the check ran on). Random samples stack along axis 0, which a model
    with a fixed first dim (a sequence-first recurrent net, say) does not take."""
    for make in _fidelity_inputs(dense, options, scoring):
        try:
            batches, what = make()
            return fidelity_to_dense(dense, pruned, batches, what, io, macs_per_sample)
        except Exception:  # noqa: BLE001 - inputs this model cannot take: try the next ones
            continue
    return None


FRESH_SEED = 1_000_003      # added to the seed: fidelity inputs calibration did not see


def _fidelity_inputs(dense, options: PruneOptions, scoring: Scoring | None):
    stats = scoring.stats if scoring is not None else None
    calib = options.calib if options.calib is not None else (
        scoring.calib if scoring is not None else None)
    if calib is not None:
        sources = as_sources(calib)
        if all(isinstance(s.data, str) and s.data in GENERATED for s in sources):
            yield lambda: (source_batches(sources[0], dense, options.input_shapes,
                                          options.seed + FRESH_SEED),
                           f"fresh {sources[0].data} inputs (not those calibration used)")
        elif stats is not None and getattr(stats, "batches", None):
            yield lambda: (stats.batches, describe(calib, stats)["source"] +
                           " (the calibration inputs themselves)")
        else:       # data no statistic was captured from
            yield lambda: ([f for s in sources if not (isinstance(s.data, str) and
                                                       s.data in GENERATED)
                            for f in source_batches(s, dense, options.input_shapes)],
                           "the --calib inputs")
    yield lambda: (load_calibration("random", dense, options.input_shapes, seed=options.seed),
                   "random inputs (no calibration data given)")
    yield lambda: ([check_feeds(dense, options)[0]], "the check inputs")


CHECK_SAMPLES = 8      # calibration samples the check runs on, when calibration data is given


def check_feeds(model: onnx.ModelProto, options: PruneOptions) -> tuple[dict, str]:
    """The inputs of the check, and how an error names them: ``--check-data`` when given,
    else the first samples of the first calibration data given (real values where the
    model needs them), else seeded random inputs of the model's (or ``input_shapes``')
    sizes."""
    if options.check_data is not None:
        return load_check_data(options.check_data, model), f"--check-data {options.check_data}"
    given = [s for s in as_sources(options.calib) if not (
        isinstance(s.data, str) and s.data in GENERATED)] if options.calib is not None else []
    if given:
        source = given[0]
        if isinstance(source.data, str):
            feeds = load_calibration(source.data, model, options.input_shapes,
                                     batch_size=CHECK_SAMPLES, samples=CHECK_SAMPLES,
                                     preprocess=source.preprocess)[0]
        else:
            feeds = source.data[0]
        return feeds, f"the first --calib samples ({source.describe()})"
    feeds = make_inputs(model, options.input_shapes, options.seed)
    shapes = ", ".join(f"{n} {list(v.shape)}" for n, v in feeds.items())
    return feeds, f"the generated check inputs ({shapes})"


def _timed_to_target(search: TargetSearch, target: TargetSection, stats, built: Built) -> Built:
    best, timed = meet_latency(search, target.fraction, stats, built, target.planned)
    predictor = search.predictor
    target.ratio, target.planned, target.measured = best.ratio, best.planned, best.measured
    target.met = best.measured <= target.fraction
    target.corrections = len(timed) - 1
    target.dense_seconds, target.threads = predictor.dense, predictor.threads
    target.pruned_seconds = best.measured * predictor.dense
    return best.built


def _report(a: Analyzed, built: Built, options: PruneOptions, macs: MacCounter,
            scoring: Scoring, target: TargetSection | None) -> PruneReport:
    after = count_cost(built.pruned, options.input_shapes)
    dense_params = count_params(a.model)
    if built.base is a.model:
        planned = planned_params(a, built.removed, dense_params)
    else:       # compensated: the rewrite starts from the re-fitted copy
        planned = planned_params(a, built.removed, count_params(built.base),
                                 ModelGraph(built.base, infer_shapes=False))
    groups = [group_entry(g, built.plan) for g in a.groups if g.members]
    strategy = options.strategy
    return PruneReport(
        ratio=built.ratio, round_to=options.round_to,
        params=CostSection(dense_params, after.params,
                           planned - built.body_params_removed),  # bodies prune on their own
        macs=CostSection(macs.total(), after.macs, macs.planned(built.removed)),
        groups=groups, barriers=barriers(a), bodies=built.bodies,
        strategy={**dataclasses.asdict(strategy), "seed": options.seed,
                  "compensate": strategy.compensation, "allocation": strategy.allocates,
                  "normalization": strategy.normalize_by, "max_ratio": strategy.group_cap,
                  "max_ratio_relaxes_to": strategy.cap_relaxes_to,
                  "calibration": describe(scoring.calib, scoring.stats),
                  "notes": built.notes},
        ratios_by_kind=options.by_kind, target=target,
        changes_function=any(g["removed"] for g in groups if g["kind"] == "hidden"))


def _verify(a: Analyzed, built: Built, options: PruneOptions, checked_on: tuple[dict, str],
            progress) -> CheckSection:
    """Check the pruned model against the masked original on ``checked_on`` (feeds, and how
    errors name them); VerificationError when it fails, UserError when the inputs are at fault
    (the input model is broken, or the dense model itself cannot run on them)."""
    feeds, what = checked_on
    io = changed_io(a.analysis, built.removed)
    with task(progress, "checking the pruned model against the masked original", 3) as step:
        masked = masked_of(built, a, options.round_to, options.by_kind, options.strategy,
                           options.seed)
        try:
            try:
                result = compare_outputs(built.pruned, masked, feeds, options.tolerance, step,
                                         io)
            except Exception:  # noqa: BLE001 - the masked original did not run: whose fault?
                result = None
            if result is None or not result.runs:     # a broken input first, then bad inputs
                problem = input_problem(a.model) or dense_failure(a, feeds, what)
                if problem is not None:
                    raise UserError(problem)
            if result is None:
                raise VerificationError("the masked original failed to run on the check "
                                        "inputs, which the dense model runs on; nothing was "
                                        "written")
            where = None
            if result.runs and not result.ok and result.max_rel_error is not None:
                where = first_divergence(a, built.pruned, masked, feeds, built.removed,
                                         options.tolerance, io)
        finally:
            discard_written(masked, keep=[built.pruned, a.model])   # its weight files, if any
    check = CheckSection(result.checker, result.runs, result.same_io, result.max_rel_error,
                         options.tolerance, result.ok,
                         {k: list(v.shape) for k, v in feeds.items()},
                         unknown_ops(built.pruned), _how_checked(built.pruned))
    if not result.ok:
        raise VerificationError(_failure(result, where))
    return check


def _how_checked(pruned: onnx.ModelProto) -> str:
    """How the check ran the two models: from files when the weights stay there (a model
    too large to hold twice: the masked original reads its big weights from the input's own
    files, through ``Where`` nodes, and writes only the small ones)."""
    return CHECKED_FROM_FILES if WeightStore.of(pruned) is not None else CHECKED_IN_MEMORY


def _failure(result, where) -> str:
    """One line: what failed, the output with the largest error, and where it starts."""
    text = (f"the pruned model failed verification (checker={result.checker}, "
            f"runs={result.runs}, same_io={result.same_io}, "
            f"max_rel_error={result.max_rel_error}")
    if result.output_errors:
        name, error = max(result.output_errors.items(), key=lambda kv: kv[1])
        text += f"; worst output {name!r}: {error:.2e} against tolerance {result.tolerance:.0e}"
    if where is not None:
        text += f"; it starts at {where[0]}, which writes {where[1]!r} ({where[2]:.2e})"
    return text + "); nothing was written"
