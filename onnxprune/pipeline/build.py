"""Building a candidate at one ratio: the plan, the compensated original, the pruned model
(control-flow bodies pruned on their own), and the masked original it must equal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from ..allocation import Plan
from ..importance import CRITERIA
from ..rewrite import apply_plan
from ..rewrite.bodies import has_bodies, rewrite_bodies
from ..runtime import count_params
from .analyze import Analyzed, analyze_model
from .options import Strategy
from .plan import make_plan
from .refit import compensated
from .scoring import GroupScores, group_scores


@dataclass
class Built:
    """One candidate: the plan, its removed-atom mask and notes, the compensated original
    both models derive from, the pruned model, what happened inside control-flow bodies and
    the params that went there (which the main graph's plan does not cover)."""

    ratio: float
    plan: Plan
    removed: np.ndarray
    notes: list[str]
    base: onnx.ModelProto
    pruned: onnx.ModelProto
    bodies: list[dict]
    body_params_removed: int


def build(a: Analyzed, ratio: float, round_to: int, by_kind, strategy: Strategy, stats,
          scored: GroupScores, seed: int = 0, progress=None, latency=None) -> Built:
    """Plan, compensate and prune at one ratio (``latency``: see ``make_plan``)."""
    planned = make_plan(a, ratio, round_to, by_kind, strategy, scored, latency)
    base, more = compensated(a, planned.removed, stats, strategy, progress)
    pruned, bodies, params_inside = rewrite(
        base, a, planned.removed, "prune",
        body_rewriter(ratio, round_to, by_kind, strategy, seed))
    return Built(ratio, planned.plan, planned.removed, planned.notes + more, base, pruned,
                 bodies, params_inside)


def masked_of(built: Built, a: Analyzed, round_to: int, by_kind, strategy: Strategy,
              seed: int = 0) -> onnx.ModelProto:
    """The masked original the candidate must equal."""
    bodies = body_rewriter(built.ratio, round_to, by_kind, strategy, seed)
    return rewrite(built.base, a, built.removed, "mask", bodies)[0]


def rewrite(base: onnx.ModelProto, a: Analyzed, removed, mode: str, bodies
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


def body_rewriter(ratio, round_to, by_kind, strategy: Strategy, seed: int = 0):
    """How a branch or loop body is pruned: as a model of its own, at the same ratios,
    uniformly, by the criterion when it reads weights only (else by L2: calibration does not
    reach inside a body), without compensation; bodies nested in it likewise."""
    data_free = (strategy.criterion in CRITERIA
                 and CRITERIA[strategy.criterion].needs == "weights")
    inner = Strategy(strategy.criterion if data_free else "l2",
                     reduction=strategy.reduction, compensate="none")

    def rewrite_body(model: onnx.ModelProto, mode: str):
        a = analyze_model(model)
        planned = make_plan(a, ratio, round_to, by_kind, inner,
                            group_scores(a, inner, seed=seed))
        removed_channels = sum(len(p.removed) * g.width for g in a.groups
                               for p in [planned.plan.groups.get(g.id)] if p is not None)
        out, nested, _ = rewrite(a.model, a, planned.removed, mode, rewrite_body)
        changed = bool(planned.removed.any()) or any(n["pruned"] for n in nested)
        summary = {"pruned": changed, "criterion": inner.criterion,
                   "groups": sum(1 for g in a.groups if g.prunable and g.size > 1),
                   "channels_removed": removed_channels}
        if nested:
            summary["bodies"] = nested
        return (out if changed else None), summary
    return rewrite_body


def masked_original(model, ratio: float = 0.5, round_to: int = 16,
                    exclude: tuple[str, ...] = (), by_kind: dict[str, float] | None = None,
                    strategy: Strategy | None = None, stats=None, seed: int = 0
                    ) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(pruned, masked original) without verification: the pair the tests compare."""
    a = model if isinstance(model, Analyzed) else analyze_model(model, exclude)
    strategy = strategy or Strategy()
    built = build(a, ratio, round_to, by_kind, strategy, stats,
                  group_scores(a, strategy, stats, seed=seed), seed)
    return built.pruned, masked_of(built, a, round_to, by_kind, strategy, seed)
