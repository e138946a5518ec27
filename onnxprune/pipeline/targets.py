"""Targets: the ratio that keeps at most a fraction of the dense model's MACs, params or
latency, found by bisection on the plan's own cost model; for latency, the pruned model is then
timed and the search corrected while the measurement misses the target."""

from __future__ import annotations

from dataclasses import dataclass

from ..allocation.latency import LatencyPredictor
from ..errors import UserError
from ..runtime import count_params
from .analyze import Analyzed
from .build import Built, build
from .plan import MacCounter, make_plan, planned_params
from .scoring import GroupScores

MAX_TARGET_RATIO = 0.95
BISECTIONS = 14
LATENCY_CORRECTIONS = 3     # re-searches when the timed model misses a latency target
LATENCY_SLACK = 0.05        # ... or beats it by more than this share of the target


@dataclass
class TargetSearch:
    """What a target search needs besides the ratio: the model, how the plan is made, and
    how a plan's cost is read (MACs counter, or latency predictor)."""

    a: Analyzed
    round_to: int
    by_kind: dict
    strategy: object
    scored: GroupScores
    macs: MacCounter | None = None
    predictor: LatencyPredictor | None = None
    seed: int = 0
    priced: object = None       # a PlanLatency: a plan's predicted latency (latency targets)
    latency: object = None      # the same, when the allocation is latency-aware
    table_reaches: bool = True  # False: the table saw no plan that meets the target

    @property
    def timed_here(self) -> bool:
        """A latency target this machine times (not one predicted for another device)."""
        return self.predictor is not None and self.predictor.device is None

    def __post_init__(self):
        self.dense_params = count_params(self.a.model)

    def kept(self, kind: str, ratio: float) -> float:
        """The fraction of the dense model's ``kind`` the plan at ``ratio`` keeps."""
        removed = make_plan(self.a, ratio, self.round_to, self.by_kind, self.strategy,
                            self.scored, self.latency).removed
        if kind == "latency":
            return self.priced.fraction_of(removed)
        if kind == "macs":
            return self.macs.planned(removed) / self.macs.total()
        return planned_params(self.a, removed, self.dense_params) / self.dense_params


def ratio_for_target(search: TargetSearch, kind: str, fraction: float,
                     timed_start: bool = True) -> tuple[float, float]:
    """The smallest ratio (for every group without a ratio of its own) whose plan keeps at
    most ``fraction`` of the dense model's MACs, params or latency; returns (ratio, planned
    fraction). Found by bisection on the plan's own cost model, which the report checks
    against the pruned model. A latency target the table cannot reach is an error only
    where it cannot be timed here (or ``timed_start`` is off): else the timed search starts
    without the table (``_start_without_the_table``)."""
    can_time = timed_start and kind == "latency" and search.timed_here
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--target-{kind} must be in (0, 1], got {fraction}")
    if kind == "macs" and not search.macs.known:
        raise UserError("the MACs of this model are unknown (give --input-shape, or use "
                        "--target-params)")
    if kind == "latency" and search.latency is not None:
        return _latency_budget(search, fraction, can_time)
    lo, hi = 0.0, MAX_TARGET_RATIO
    if search.scored.weights:     # adaptive: the ratio scales per-group multipliers, some < 1
        hi = MAX_TARGET_RATIO / min(min(search.scored.weights.values()), 1.0)
    best = search.kept(kind, hi)
    if best > fraction and can_time:
        return _start_without_the_table(search, fraction)
    if best > fraction:
        raise UserError(f"cannot reach --target-{kind} {fraction:g}: even at ratio {hi:.2f} the "
                        f"plan keeps {best:.1%} (frozen and excluded groups stay whole)")
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        value = search.kept(kind, mid)
        if value <= fraction:
            hi, best = mid, value
        else:
            lo = mid
    return hi, best


def _latency_budget(search: TargetSearch, fraction: float, can_time: bool
                    ) -> tuple[float, float]:
    """Latency-aware allocation reads the ratio as the share of the predicted latency to
    remove, and its greedy takes the same moves whatever the budget, stopping at the first
    that meets it. So the plan at ratio ``1 − fraction`` is the one a bisection would end
    on: one greedy run instead of one per bisection step (there, most of the search's
    time)."""
    ratio = 1.0 - fraction
    kept = search.kept("latency", ratio)
    if kept > fraction and can_time:     # the greedy's plan at 1 − fraction: timing decides
        search.table_reaches = False
        return ratio, kept
    if kept > fraction:
        raise UserError(f"cannot reach --target-latency {fraction:g}: the plan keeps "
                        f"{kept:.1%} of the predicted latency (frozen and excluded groups stay "
                        f"whole, and no group loses more than --max-ratio)")
    return ratio, kept


def _start_without_the_table(search: TargetSearch, fraction: float) -> tuple[float, float]:
    """Where the per-layer table says no ratio reaches a latency target that this machine
    can time, the timed search decides, starting from the ratio that keeps ``fraction`` of
    the MACs (of the params where MACs are unknown). On a model of microsecond layers the
    table is mostly noise: for the digits CNN at --target-latency 0.8, one fresh table
    predicted that even ratio 0.95 kept 87 % of the latency, and refused; another, timed a
    minute later on the same machine, predicted 22 % for the ratio it chose, which timed at
    77 % and met the target."""
    search.table_reaches = False
    kind = "macs" if search.macs is not None and search.macs.known else "params"
    try:
        ratio = ratio_for_target(search, kind, fraction)[0]
    except UserError:
        ratio = MAX_TARGET_RATIO
    return ratio, search.kept("latency", ratio)


@dataclass
class Timed:
    """A candidate built for a latency target, with its measured and predicted fractions."""

    built: Built
    measured: float
    planned: float

    @property
    def ratio(self) -> float:
        return self.built.ratio


def meet_latency(search: TargetSearch, fraction: float, stats, first: Built,
                 planned: float) -> tuple[Timed, list[Timed]]:
    """Time the pruned model; while it misses the target (or beats it by more than
    ``LATENCY_SLACK``), pick the next ratio from the timings themselves and build again.

    The dense model is a timed point too (ratio 0, all of the latency), so there is always a
    side that missed: between the largest ratio that missed and the smallest that met the
    target the timings are interpolated; with no ratio that met it yet, the line through the
    two largest timed ratios is followed on (a secant step). Each aims at the middle of the
    accepted window. Only when the timings disagree (noise: a larger ratio timed slower) does
    the table search get aimed at the measured error instead. Returns the slowest candidate
    that meets the target (else the last one) and every candidate timed."""
    predictor, built = search.predictor, first
    timed: list[Timed] = []
    for attempt in range(LATENCY_CORRECTIONS + 1):
        timed.append(Timed(built, predictor.measure(built.pruned) / predictor.dense, planned))
        measured = timed[-1].measured
        if fraction * (1 - LATENCY_SLACK) <= measured <= fraction or \
                attempt == LATENCY_CORRECTIONS:
            break
        ratio = _next_ratio(timed, fraction)
        if ratio is None:
            try:
                ratio = ratio_for_target(
                    search, "latency", min(1.0, fraction * timed[-1].planned / measured),
                    timed_start=False)[0]
            except UserError:
                break   # nothing smaller to aim at: the report says the target was missed
        if any(abs(ratio - t.ratio) < 1e-6 for t in timed):
            break       # the search came back to a ratio already timed
        built = build(search.a, ratio, search.round_to, search.by_kind, search.strategy, stats,
                      search.scored, search.seed, latency=search.latency)
        planned = search.priced.fraction_of(built.removed)
    met = [t for t in timed if t.measured <= fraction]
    return (max(met, key=lambda t: t.measured) if met else timed[-1]), timed


def _next_ratio(timed: list[Timed], fraction: float) -> float | None:
    """The ratio whose latency the timings so far put in the middle of the accepted window;
    None when they are out of order (a larger ratio timed slower)."""
    aim = fraction * (1 - LATENCY_SLACK / 2)
    points = sorted([(0.0, 1.0)] + [(t.ratio, t.measured) for t in timed])
    if any(b[1] >= a[1] for a, b in zip(points, points[1:])):
        return None
    met = [p for p in points if p[1] <= fraction]
    if met:
        (r1, m1) = met[0]
        (r0, m0) = max(p for p in points if p[0] < r1)
    else:
        (r0, m0), (r1, m1) = points[-2:]
    ratio = r0 + (m0 - aim) * (r1 - r0) / (m0 - m1)
    if met:
        return min(max(ratio, r0 + 0.1 * (r1 - r0)), r1 - 0.1 * (r1 - r0))
    return min(ratio, MAX_TARGET_RATIO)
