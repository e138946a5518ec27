"""Per-group ratios (uniform, or from one global ranking) with hardware-friendly rounding.

Each prunable group keeps ``round(size · (1 − ratio))`` components, rounded to a multiple of
``round_to`` channels (a component may span several channels, e.g. one column of a grouped
conv; a group too small for the multiple gets the largest halving of it that fits), and at
least one. The lowest-scoring components go. A final pass makes sure no tensor
loses all of its channels (a Split output fed by one group could otherwise be emptied).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..groups import Analysis, Group
from .latency_aware import latency_allocation
from .rounding import component_step, least_kept

# Kinds pruned only when asked for by name: removing hidden-size channels changes the
# statistics of every normalization that reads them, so the model computes something else.
OPT_IN_KINDS = {"hidden": 0.0}


@dataclass
class GroupPlan:
    group: int
    kept: list[int]
    removed: list[int]


@dataclass
class Plan:
    removed_roots: set[int] = field(default_factory=set)
    groups: dict[int, GroupPlan] = field(default_factory=dict)

    def removed_atoms(self, roots: np.ndarray) -> np.ndarray:
        """Boolean per atom: is its component removed?"""
        if not self.removed_roots:
            return np.zeros(len(roots), dtype=bool)
        return np.isin(roots, np.fromiter(self.removed_roots, dtype=np.int64))


def kept_count(size: int, width: int, ratio: float, round_to: int,
               offset: float | None = None) -> int:
    """Components to keep so that kept channels are a multiple of ``round_to`` where possible:
    the nearest multiple, or with ``offset`` (in [0, 1)) ``floor(steps + offset)`` steps, so
    that groups given different offsets lose their steps at different ratios."""
    target = size * (1.0 - ratio)
    step = component_step(size, width, round_to)
    steps = target / step
    keep = (int(round(steps)) if offset is None else int(np.floor(steps + offset))) * step
    return int(min(size, max(least_kept(size, width, round_to), keep, 1)))


ALLOCATIONS = ("uniform", "global", "adaptive", "latency")


def allocate(analysis: Analysis, groups: list[Group], roots: np.ndarray, scores: np.ndarray,
             ratio: float, round_to: int = 1, by_kind: dict[str, float] | None = None,
             allocation: str = "uniform", max_ratio: float = 0.9,
             ranking: np.ndarray | None = None,
             weights: dict[int, float] | None = None, latency=None,
             relax_to: float | None = None, offsets: dict[int, float] | None = None) -> Plan:
    """``by_kind`` overrides ``ratio`` for groups of a kind ("heads", "mlp", "channels");
    "hidden" groups are pruned only at their own ratio in ``by_kind``.

    ``uniform``: every group loses its kind's ratio. ``global``: all components of a kind are
    ranked together by ``ranking`` (scores normalized per group, see
    ``importance.normalize``) and the lowest go until the kind's ratio of its channels is
    reached, no group losing more than ``max_ratio``; each group's share is then rounded to
    ``round_to`` like a uniform ratio. ``adaptive``: each group's ratio is its kind's ratio
    times ``weights[group]`` (from measured sensitivity: below 1 where pruning hurts more),
    capped at ``max_ratio``. ``latency``: ``ratio`` is the share of the predicted latency to
    remove, spent where it loses the least ``ranking`` per second saved (``latency_aware``;
    ``latency`` prices a removal; where ``max_ratio`` leaves the target out of reach, groups
    may go on to ``relax_to``). Within a group the lowest ``scores`` go. ``offsets``: each
    group's rounding offset (``kept_count``; a latency target's search spreads them), else
    the nearest multiple.
    """
    if allocation not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {allocation!r} (one of {ALLOCATIONS})")
    by_kind = {**OPT_IN_KINDS, **(by_kind or {})}
    ratios = {g.id: (by_kind.get(g.kind, ratio) if g.prunable else 0.0) for g in groups}
    if allocation == "global":
        ratios = _global_ratios(groups, ratios, scores if ranking is None else ranking,
                                max_ratio)
    elif allocation == "latency":
        if latency is None:
            raise ValueError("latency allocation needs a latency model")
        taken = latency_allocation(groups, scores if ranking is None else ranking, ratio,
                                   round_to, ratios, max_ratio, latency, relax_to)
        ratios = {g.id: taken.get(g.id, 0) / g.size for g in groups}
    elif allocation == "adaptive":
        if weights is None:
            raise ValueError("adaptive allocation needs per-group weights")
        ratios = {gid: min(max_ratio, r * weights.get(gid, 1.0)) if r > 0 else 0.0
                  for gid, r in ratios.items()}
    plan = Plan()
    for group in groups:
        comps = group.components
        group_ratio = ratios[group.id]
        if group_ratio <= 0:
            keep = len(comps)
        elif allocation == "latency":     # the greedy's own steps, already rounded
            keep = len(comps) - int(round(group_ratio * len(comps)))
        else:
            keep = kept_count(len(comps), group.width, group_ratio, round_to,
                              None if offsets is None else offsets.get(group.id))
        order = np.argsort(-scores[comps], kind="stable")
        kept = np.sort(order[:keep])
        removed = np.sort(order[keep:])
        plan.groups[group.id] = GroupPlan(group.id, kept.tolist(), removed.tolist())
        plan.removed_roots.update(comps[removed].tolist())
    _keep_every_tensor_alive(analysis, roots, scores, plan, groups)
    return plan


def _global_ratios(groups, ratios, ranking, max_ratio) -> dict[int, float]:
    """Per-group ratios from one ranking per kind (groups that take part share a budget)."""
    out = {g.id: 0.0 for g in groups}
    kinds = {g.kind for g in groups if ratios[g.id] > 0 and g.size > 1}
    for kind in kinds:
        members = [g for g in groups if g.kind == kind and ratios[g.id] > 0 and g.size > 1]
        target = ratios[members[0].id]
        budget = target * sum(g.size * g.width for g in members)
        entries = sorted((float(ranking[r]), g.id, g.width)
                         for g in members for r in g.components.tolist())
        cap = {g.id: min(int(np.floor(max_ratio * g.size)), g.size - 1) for g in members}
        taken = dict.fromkeys(cap, 0)
        removed = 0.0
        for _, gid, width in entries:
            if removed >= budget:
                break
            if taken[gid] < cap[gid]:
                taken[gid] += 1
                removed += width
        for g in members:
            out[g.id] = taken[g.id] / g.size
    return out


def _keep_every_tensor_alive(analysis, roots, scores, plan, groups) -> None:
    """Restore the best component of any tensor whose channels would all be removed."""
    position = {int(r): (g.id, k) for g in groups for k, r in enumerate(g.components.tolist())}
    for cmap in analysis.maps.values():
        tensor_roots = np.unique(roots[cmap.labels])
        if all(int(r) in plan.removed_roots for r in tensor_roots):
            best = int(tensor_roots[np.argmax(scores[tensor_roots])])
            plan.removed_roots.discard(best)
            gid, k = position[best]
            entry = plan.groups[gid]
            entry.removed.remove(k)
            entry.kept = sorted(entry.kept + [k])
